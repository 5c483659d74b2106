"""Streaming latency: both pipelines on Prism beside the hand-written loops, at stepped steady input rates.

On a throw-away local stack started here (free ports), each side streams from its own topics into its own
database, DynamoDB table and Redis prefix while this process produces at a steady rate, one step after
another (default orders 50,100,200,400,800/s and keep-alives 250..4000/s, ``--seconds`` each with probes, then
the same rate until the step's probes are observed), and measures:

- orders: an order produced to ``ordem-ativo`` -> its client's daily volume item visible in DynamoDB (the
  item ``GET /clients/{token}/volume`` reads). ``--probes-per-second`` of the orders are probes, each from a
  client of its own, so its volume item appearing means that order was counted; the item is polled with
  BatchGetItem every ``--poll-seconds``.
- presence: keep-alive silence -> offline in the Redis hot state as the API's status logic reads it
  (``RestaurantStateStore.statuses``, the code of ``GET /restaurants/status``) with a short
  ``--keepalive-timeout-seconds``. The restaurants ping every ``--interval-seconds``; ``--probes-per-second``
  of them fall silent after a ping, and the latency is "offline observed, with that last ping in Redis,
  minus (last ping + timeout)". Beside it: last ping -> visible in Redis. An offline status seen before
  last ping + timeout (an older ping in Redis: the side lags more than timeout - interval) counts as early.

A step is sustained when every probe was observed, p99 <= ``--threshold-seconds``, no early offline, the
producer kept >= 90% of the rate and the backlog does not grow (median latency of the step's second half
<= 2x the first half's + 0.5 s); stepping stops at the first step that is not. The hand-written loops are
``orders_pipeline.hand_loop`` (confluent-kafka consumer, same parsing, pricing data, idempotent Postgres
upsert and DynamoDB volume writes, one batch per transaction) and ``presence_pipeline.hand_loop`` (updates
Redis last-keepalive with the same store), streaming until stopped.

Each step also prints the side's CPU over it (% of one core: the pipeline's process tree, its Prism included, or
the hand loop's process): what the latency costs. ``--beam-args`` passes options to the pipelines, e.g.
``--caught_up_delay_seconds=0`` (a partition that caught up is read again at once).

    .venv/bin/python benchmarks/streaming_latency.py                       # ~6 minutes on 2 cores
    .venv/bin/python benchmarks/streaming_latency.py --order-steps 50,100 --keepalive-steps 250 --seconds 8
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zoneinfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orders_pipeline  # noqa: E402  (benchmarks/, beside this script: the hand-written loops)
import presence_pipeline  # noqa: E402
from harness import cpu_of, priced_stack, process_tree  # noqa: E402

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, load_settings, settings_environment  # noqa: E402
from orderflow.model import pricing  # noqa: E402

TICK = 0.02  # the producer's tick (s)


# --------------------------------------------------------------------------------------------------
# The sides: a streaming pipeline (DetachedProcess) or a hand loop in a child process of this script.
# --------------------------------------------------------------------------------------------------
class HandLoop:
    """``streaming_latency.py --role hand-KIND`` detached (own process group), stopped with SIGTERM."""

    def __init__(self, kind: str, root: pathlib.Path):
        self.name, self.log_path = f"hand-{kind}", root / f"hand-{kind}.log"
        self._process: subprocess.Popen | None = None

    def start(self, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen([sys.executable, __file__, "--role", self.name, *args], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, env={**os.environ, **env})

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.running():
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()


class Pipeline:
    """One of orderflow's pipelines streaming on Prism (``orderflow_dev.local.processes.DetachedProcess``)."""

    def __init__(self, kind: str, root: pathlib.Path):
        from orderflow_dev.local.processes import DetachedProcess

        self._process = DetachedProcess(kind, root)
        self.name, self.log_path = kind, self._process.log_path

    def start(self, args: list[str], env: dict[str, str]) -> None:
        self._process.start(args, env=env)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def running(self) -> bool:
        from orderflow_dev.local.processes import RUNNING

        return self._process.status() == RUNNING

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)

    def stop(self) -> None:
        self._process.stop(timeout=30)


def hand_child(kind: str, args) -> None:
    """The hand loop of ``kind`` until SIGTERM (settings from the environment)."""
    settings = load_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "orders":
        from orderflow.model.alarms import DEFAULT_RULES_JSON

        today = pricing.today(settings)
        orders_pipeline.hand_loop(settings, 10_000, DEFAULT_RULES_JSON, days=[today - dt.timedelta(days=1), today],
                                  stop=stop, batches_per_transaction=1, consume_timeout=args.hand_consume_timeout)
    else:
        now_ms = int(time.time() * 1000)
        presence_pipeline.hand_loop(settings, now_ms, now_ms + 3_600_000, 5000, settings.presence_redis_prefix,
                                    stop=stop, consume_timeout=args.hand_consume_timeout)
    print("hand loop stopped", flush=True)


# --------------------------------------------------------------------------------------------------
# Load and observation.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Probe:
    sent: float                      # wall clock (s) the probe's record was produced
    key: object                      # what the prober reads
    due: float = 0.0                 # presence: last ping + timeout
    latency: float | None = None     # the measured latency (s)
    visible: float | None = None     # presence: last ping -> visible in Redis (s)
    early: bool = False              # presence: offline seen before last ping + timeout


class Prober(threading.Thread):
    """Polls the sink for the pending probes every ``poll`` s (``check(probes) -> None`` sets their latency)."""

    def __init__(self, check, poll: float):
        super().__init__(daemon=True)
        self.check, self.poll = check, poll
        self.pending: list[Probe] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def add(self, probe: Probe) -> None:
        with self.lock:
            self.pending.append(probe)

    def run(self) -> None:
        try:
            while not self.done.is_set():
                with self.lock:
                    self.pending = [p for p in self.pending if p.latency is None]
                    pending = list(self.pending)  # a copy: add() appends to self.pending meanwhile
                if pending:
                    self.check(pending)
                time.sleep(self.poll)
        except BaseException as exc:  # noqa: BLE001 - reported by the step
            self.error = exc

    def idle(self) -> bool:
        with self.lock:
            return all(p.latency is not None for p in self.pending)


def volume_check(settings: Settings):
    from orderflow.clients import aws_client

    client = aws_client(settings, "dynamodb")
    table = settings.client_volume_table

    def check(probes: list[Probe]) -> None:
        for start in range(0, len(probes), 100):
            part = {p.key: p for p in probes[start:start + 100]}
            answer = client.batch_get_item(RequestItems={table: {
                "Keys": [{"client_token": {"S": token}, "day": {"S": day}} for token, day in part],
                "ProjectionExpression": "client_token, #d", "ExpressionAttributeNames": {"#d": "day"}}})
            seen = time.time()
            for item in answer["Responses"].get(table, []):
                part[(item["client_token"]["S"], item["day"]["S"])].latency = seen - part[
                    (item["client_token"]["S"], item["day"]["S"])].sent
    return check


def status_check(settings: Settings):
    from orderflow.io.restaurant_state import RestaurantStateStore

    store = RestaurantStateStore.from_settings(settings)  # the API's store: same rules, same prefix

    def check(probes: list[Probe]) -> None:
        statuses = store.statuses([p.key[0] for p in probes])
        seen = time.time()
        for probe in probes:
            status = statuses[probe.key[0]]
            last = status["last_keepalive"]
            last_ms = int(dt.datetime.fromisoformat(last).timestamp() * 1000) if last else None
            if last_ms == probe.key[1] and probe.visible is None:
                probe.visible = seen - probe.sent
            if status["status"] == "offline":
                if last_ms == probe.key[1]:
                    probe.latency = seen - probe.due
                elif last_ms is not None and seen < probe.due:  # an older ping: the last one still on its way
                    probe.early = True
    return check


class OrderLoad:
    """Orders from 300 clients (random assets, the four input formats); probes from clients of their own."""

    def __init__(self, settings: Settings, producer, tag: str):
        from orderflow.model.sample_assets import SAMPLE_ASSETS
        from orderflow_dev.generate.orders import FORMATS, encode_order

        self.settings, self.producer, self.tag = settings, producer, tag
        self.encode, self.formats, self.assets = encode_order, FORMATS, list(SAMPLE_ASSETS)
        self.rng = random.Random(2026)
        self.n = 0

    def emit(self, now: float, probe: bool) -> Probe | None:
        self.n += 1
        now_ms = int(now * 1000)
        client = f"probe-{self.tag}-{self.n}" if probe else f"client-{self.rng.randrange(300):03d}"
        value = self.encode(self.rng.choice(self.formats), f"lat-{self.tag}-{self.n}", client,
                            self.rng.choice(self.assets), self.rng.randint(1, 50) * 100, now_ms)
        self.producer.produce(self.settings.topics.orders, value, client.encode(), timestamp=now_ms)
        return Probe(now, (client, str(pricing.today(self.settings)))) if probe else None

    def resize(self, rate: float) -> None:
        pass


class KeepaliveLoad:
    """Restaurants pinging every ``interval`` s in turn (rate x interval of them); a probe is the restaurant
    whose turn it is: it pings, falls silent and is replaced by a new one (the rate stays steady)."""

    def __init__(self, settings: Settings, producer, tag: str, interval: float, gap: float):
        from orderflow_dev.generate.keepalive import KeepaliveEncoder

        self.settings, self.producer, self.tag, self.interval, self.gap = settings, producer, tag, interval, gap
        self.encoder = KeepaliveEncoder()
        self.restaurants: list[str] = []
        self.turn = self.n = 0

    def resize(self, rate: float) -> None:
        wanted = max(1, int(rate * self.interval))
        while len(self.restaurants) < wanted:
            self.n += 1
            self.restaurants.append(f"rest-{self.tag}-{self.n}")
        del self.restaurants[wanted:]  # fewer restaurants: the others fall silent
        self.turn %= len(self.restaurants)

    def emit(self, now: float, probe: bool) -> Probe | None:
        now_ms = int(now * 1000)
        restaurant = self.restaurants[self.turn]
        self.producer.produce(self.settings.topics.keepalive, self.encoder.encode(restaurant, now_ms),
                              restaurant.encode(), timestamp=now_ms)
        if probe:
            self.n += 1
            self.restaurants[self.turn] = f"rest-{self.tag}-{self.n}"
        self.turn = (self.turn + 1) % len(self.restaurants)
        return Probe(now_ms / 1000, (restaurant, now_ms), due=now_ms / 1000 + self.gap) if probe else None


def fmt(seconds: float | None) -> str:
    return f"{seconds:6.2f}s" if seconds is not None else "      -"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def run_step(load, prober: Prober, producer, side, rate: float, seconds: float, probes_per_second: float,
             threshold: float, settle: float) -> dict:
    """Produces at ``rate`` for ``seconds`` with probes, then at the same rate without probes until every probe
    was observed (``threshold + settle`` s at most): the input stays steady between steps."""
    load.resize(rate)
    probes: list[Probe] = []
    # CPU seconds of each process of the side's tree (a pipeline: its Python process and its Prism)
    cpu_before = cpu_of(process_tree(side.pid) if side.pid else ())
    started = last = time.time()
    credit = probe_credit = 0.0
    produced = 0
    achieved = deadline = None
    while True:
        now = time.time()
        if achieved is None and now - started >= seconds:
            achieved, deadline = produced / (now - started), now + threshold + settle
        if achieved is not None and (now >= deadline or all(p.latency is not None for p in probes)):
            break
        if prober.error:
            raise prober.error
        if not side.running():
            raise RuntimeError(f"{side.name} died; log {side.log_path}:\n{side.log_tail()}")
        credit += (now - last) * rate
        probe_credit += (now - last) * probes_per_second if achieved is None else 0.0
        last = now
        while credit >= 1:
            credit -= 1
            is_probe = probe_credit >= 1
            if is_probe:
                probe_credit -= 1
            probe = load.emit(now, is_probe)
            produced += 1
            if probe:
                probes.append(probe)
                prober.add(probe)
        producer.poll(0)
        time.sleep(max(0.0, TICK - (time.time() - now)))
    cpu_after, wall = cpu_of(cpu_before), time.time() - started
    seen = [p.latency for p in probes if p.latency is not None]
    half = len(probes) // 2
    first = [p.latency for p in probes[:half] if p.latency is not None]
    second = [p.latency for p in probes[half:] if p.latency is not None]
    growing = bool(first and second and statistics.median(second) > 2 * statistics.median(first) + 0.5)
    result = {"rate": rate, "achieved": achieved, "probes": len(probes), "missed": len(probes) - len(seen),
              "p50": percentile(seen, 0.5) if seen else None, "p99": percentile(seen, 0.99) if seen else None,
              "early": sum(p.early for p in probes), "growing": growing,
              "cpu": 100 * sum(cpu_after.get(pid, start) - start for pid, start in cpu_before.items()) / wall}
    visible = [p.visible for p in probes if p.visible is not None]
    if visible:
        result["visible_p50"], result["visible_p99"] = percentile(visible, 0.5), percentile(visible, 0.99)
    result["sustained"] = (not result["missed"] and result["p99"] is not None and result["p99"] <= threshold
                           and not result["early"] and not growing and achieved >= 0.9 * rate)
    return result


# --------------------------------------------------------------------------------------------------
# One side: isolated sinks, the process, warm-up, the steps.
# --------------------------------------------------------------------------------------------------
def measure(kind: str, role: str, base: Settings, admin_dsn: str, workdir: pathlib.Path, args) -> list[dict]:
    from confluent_kafka import Producer

    tag = f"{role}-{uuid.uuid4().hex[:6]}"
    if kind == "orders":
        settings = orders_pipeline.isolated(base, admin_dsn, f"lat_{role}")
        settings = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, orders=f"orders-{tag}"))
        bootstrap.create_topics(settings.kafka_bootstrap, [settings.topics.orders], settings.topic_partitions)
        pipeline_args: list[str] = []
    else:
        settings = presence_pipeline.isolated(base, admin_dsn, f"lat_{role}")
        local = dt.datetime.now(dt.timezone.utc).astimezone(zoneinfo.ZoneInfo(settings.presence_timezone))
        opens = local - dt.timedelta(hours=1)  # open for the next 23 h 59 min: no closing during the run
        settings = dataclasses.replace(
            settings, topics=dataclasses.replace(settings.topics, keepalive=f"keepalive-{tag}",
                                                 availability=f"availability-{tag}"),
            presence_redis_prefix=f"{tag}:restaurant:", keepalive_timeout_seconds=args.keepalive_timeout_seconds,
            opening_hours=f"{opens:%H:%M}-{opens - dt.timedelta(minutes=1):%H:%M}")
        bootstrap.create_topics(settings.kafka_bootstrap, [settings.topics.keepalive, settings.topics.availability],
                                settings.topic_partitions)
        pipeline_args = []
    side = Pipeline(kind, workdir) if role == "beam" else HandLoop(kind, workdir)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True})
    if kind == "orders":
        load, check = OrderLoad(settings, producer, tag), volume_check(settings)
    else:
        load = KeepaliveLoad(settings, producer, tag, args.interval_seconds, args.keepalive_timeout_seconds)
        check = status_check(settings)
    prober = Prober(check, args.poll_seconds)
    prober.start()
    started = time.time()
    side.start(pipeline_args + (["--hand-consume-timeout", str(args.hand_consume_timeout)] if role == "hand"
                                else args.beam_args.split()),
               settings_environment(settings))
    results = []
    try:
        # Warm-up: one probe through, however long the start takes (Prism, the SDK worker, the first bundle).
        load.resize(1)
        warm = load.emit(time.time(), True)
        producer.flush(30)
        prober.add(warm)
        while warm.latency is None:
            if not side.running() or time.time() - started > args.start_timeout:
                raise RuntimeError(f"{side.name}: no first result within {args.start_timeout} s; log "
                                   f"{side.log_path}:\n{side.log_tail()}")
            time.sleep(0.2)
        print(f"{kind:>8} {role:>4}: started, first result after {time.time() - started:.1f} s", flush=True)
        steps = args.order_steps if kind == "orders" else args.keepalive_steps
        settle = 2.0 if kind == "orders" else args.keepalive_timeout_seconds + 2.0
        for rate in steps:
            step = run_step(load, prober, producer, side, rate, args.seconds, args.probes_per_second,
                            args.threshold_seconds, settle)
            results.append(step)
            extra = (f"  ping->Redis p50 {step['visible_p50']:.2f} p99 {step['visible_p99']:.2f}"
                     if "visible_p50" in step else "")
            print(f"{kind:>8} {role:>4}: {rate:7,.0f}/s (produced {step['achieved']:7,.0f}/s)  p50 {fmt(step['p50'])}"
                  f"  p99 {fmt(step['p99'])}  probes {step['probes']} missed {step['missed']} early {step['early']}"
                  f"  growing {step['growing']}{extra}  cpu {step['cpu']:.0f}%"
                  f"  -> {'sustained' if step['sustained'] else 'NOT sustained'}",
                  flush=True)
            if not step["sustained"]:
                break
    finally:
        prober.done.set()
        side.stop()
        producer.flush(10)
    return results


def rates(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order-steps", type=rates, default=rates("50,100,200,400,800"),
                        help="orders/s of the steps (default 50,100,200,400,800)")
    parser.add_argument("--keepalive-steps", type=rates, default=rates("250,500,1000,2000,4000"),
                        help="keep-alives/s of the steps (default 250,500,1000,2000,4000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a step (default 10 s)")
    parser.add_argument("--probes-per-second", type=float, default=10.0, help="measured records per second")
    parser.add_argument("--threshold-seconds", type=float, default=5.0,
                        help="p99 bound of a sustained step (default 5 s)")
    parser.add_argument("--keepalive-timeout-seconds", type=float, default=5.0,
                        help="the presence gap, pipeline and status logic (default 5 s; production 120 s)")
    parser.add_argument("--interval-seconds", type=float, default=2.0,
                        help="keep-alive period of a restaurant (default 2 s, below the timeout)")
    parser.add_argument("--poll-seconds", type=float, default=0.05, help="probe polling period (default 50 ms)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="a side's start to first result")
    parser.add_argument("--hand-consume-timeout", type=float, default=0.05,
                        help="the hand loops' consume() wait for a batch (default 50 ms)")
    parser.add_argument("--beam-args", default="", help="extra options for the pipelines, e.g. "
                        "'--caught_up_delay_seconds=0'")
    parser.add_argument("--only", choices=["orders", "presence"], help="one pipeline only")
    parser.add_argument("--sides", default="beam,hand", help="beam,hand (default both)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        hand_child(args.role.removeprefix("hand-"), args)
        return 0

    with priced_stack("bench-latency-", ROOT, days_back=(1, 0)) as (base, admin_dsn, workdir):
        results: dict[tuple[str, str], list[dict]] = {}
        for kind in ("orders", "presence"):
            if args.only and kind != args.only:
                continue
            for role in ("beam", "hand"):
                if role in args.sides.split(","):
                    results[kind, role] = measure(kind, role, base, admin_dsn, workdir, args)
        print_summary(results)
    return 0


def print_summary(results: dict[tuple[str, str], list[dict]]) -> None:
    def best(steps):  # the highest sustained step
        ok = [s for s in steps if s["sustained"]]
        return ok[-1] if ok else None

    unit = {"orders": "orders/s", "presence": "keep-alives/s"}
    what = {"orders": "produced -> volume in DynamoDB", "presence": "silence -> offline (minus last ping + gap)"}
    print(f"\n{'side':<19} {'latency':<42} {'rate':>14} {'p50':>7} {'p99':>7} {'max sustained':>20} {'ours/hand':>10}")
    for (kind, role), steps in results.items():
        top = best(steps)
        hand = best(results.get((kind, "hand"), [])) if role == "beam" else None
        # latencies side by side at one rate: the highest that both sides sustained
        common = None
        if (kind, "hand") in results and (kind, "beam") in results:
            rates = ({s["rate"] for s in results[kind, "beam"] if s["sustained"]}
                     & {s["rate"] for s in results[kind, "hand"] if s["sustained"]})
            common = max(rates) if rates else None
        at = next((s for s in steps if s["rate"] == common), top) if common is not None else top
        at = at or (steps[0] if steps else None)  # nothing sustained: the first step's latencies
        ratio = "-"
        if role == "beam" and hand:
            ratio = f"{top['rate'] / hand['rate']:.2f}x" if top else f"<{steps[0]['rate'] / hand['rate']:.2f}x"
        name = f"{kind} {'beam' if role == 'beam' else 'hand loop'}"
        print(f"{name:<19} {what[kind]:<42} {(at['rate'] if at else 0):>8,.0f}/s   {fmt(at and at['p50'])} "
              f"{fmt(at and at['p99'])} {(format(top['rate'], ',.0f') + ' ' + unit[kind]) if top else 'none':>20} {ratio:>10}")
    print("(p50/p99 at the highest rate both sides sustained, else at the side's highest sustained or first step; ours/hand = max sustained rate of the pipeline over "
          "the hand loop's; 'max sustained' is a lower bound when the last step was sustained)")


if __name__ == "__main__":
    sys.exit(main())
