"""The cost of idling: CPU of both pipelines streaming on Prism (their Prism included), with no traffic and at the
demo's feed rate, with the Kafka read's idle back-off and without it, beside the hand-written loops doing the same
in one run.

On a throw-away local stack started here (free ports), each side gets its own topics, database, DynamoDB
table and Redis prefix. A side is both of its streaming processes: orderflow's two pipelines
(``orderflow_dev.local.processes.DetachedProcess``, each with the Prism it starts) at their defaults (``beam``: an
idle partition is polled after 0.5 s, then twice as long each time, up to ``--idle_poll_max_seconds``), the same
with the back-off off (``beam-old``: ``--idle_poll_max_seconds=0.5``, as before it), or ``streaming_latency.py``'s
two hand loops (a confluent-kafka consumer each, ``consume()`` waiting 50 ms). For each side:

1. start both, and the live feed (``python -m orderflow_dev.generate feed`` at its defaults, the demo's rate: ~20
   orders/s and 1,000 restaurants pinging every 30 s); wait until orders reach Postgres and keep-alives Redis;
2. ``--settle`` s, then the CPU of every process of the side (the pipelines' process trees: Prism and any SDK
   worker) over ``--seconds``, read from ``/proc/<pid>/stat``: the cost at the demo's rate;
3. stop the feed, ``--settle`` s more, and the same over ``--seconds`` with nothing arriving: the idle cost;
4. the price of idling cheaply: ``--probes`` times, after ``--probe-gap`` s more of silence, one order and one
   keep-alive, each timed from produced to visible where the API reads it (the client's daily volume in DynamoDB,
   the restaurant's last keep-alive in Redis).

CPU is % of one core (user + system). Run it alone on the machine; it prints the load average before and after.

    .venv/bin/python benchmarks/idle_cost.py                 # ~12 minutes
    .venv/bin/python benchmarks/idle_cost.py --seconds 20 --settle 10 --probes 2
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import pathlib
import subprocess
import sys
import time
import uuid
import zoneinfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orders_pipeline  # noqa: E402  (benchmarks/, beside this script)
import streaming_latency  # noqa: E402
from harness import cpu_of, priced_stack, process_tree  # noqa: E402

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, settings_environment  # noqa: E402
from orderflow.io.kafka_read import IDLE_POLL_MAX_INTERVAL  # noqa: E402


def cpu_over(roots: dict[str, int], seconds: float) -> dict[str, float]:
    """% of one core of each named process tree (by command: ``orders/python``, ``orders/prism``...) over
    ``seconds``; processes that start or end inside the window are left out."""
    trees = {name: process_tree(pid) for name, pid in roots.items()}
    before = {name: cpu_of(tree) for name, tree in trees.items()}
    time.sleep(seconds)
    usage: dict[str, float] = {}
    for name, starts in before.items():
        for pid, end in cpu_of(starts).items():
            key = f"{name}/{trees[name][pid]}"
            usage[key] = usage.get(key, 0.0) + 100 * (end - starts[pid]) / seconds
    return usage


def side_settings(base: Settings, admin_dsn: str, role: str) -> Settings:
    """Topics, database, DynamoDB table and Redis prefix of ``role``'s own; open all day, so nothing closes."""
    tag = f"idle-{role}-{uuid.uuid4().hex[:6]}"
    settings = orders_pipeline.isolated(base, admin_dsn, f"idle_{role}")
    local = dt.datetime.now(dt.timezone.utc).astimezone(zoneinfo.ZoneInfo(settings.presence_timezone))
    opens = local - dt.timedelta(hours=1)
    settings = dataclasses.replace(
        settings, topics=dataclasses.replace(settings.topics, orders=f"orders-{tag}", keepalive=f"keepalive-{tag}",
                                             availability=f"availability-{tag}"),
        presence_redis_prefix=f"{tag}:restaurant:", opening_hours=f"{opens:%H:%M}-{opens - dt.timedelta(minutes=1):%H:%M}")
    bootstrap.create_topics(settings.kafka_bootstrap, [settings.topics.orders, settings.topics.keepalive,
                                                       settings.topics.availability], settings.topic_partitions)
    return settings


def flowing(settings: Settings) -> bool:
    """Orders in Postgres and keep-alives in Redis: the side streams."""
    import psycopg

    from orderflow.clients import redis_client

    with psycopg.connect(settings.postgres_dsn) as conn:
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    client = redis_client(settings)
    keepalives = next(client.scan_iter(match=settings.presence_redis_prefix + "*", count=1000), None)
    return orders > 0 and keepalives is not None


def after_idle(settings: Settings, tag: str) -> tuple[float | None, float | None]:
    """One order and one keep-alive produced now, after a quiet spell: seconds until each is visible where the API
    reads it (None: not within 60 s)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    orders = streaming_latency.OrderLoad(settings, producer, tag)
    keepalives = streaming_latency.KeepaliveLoad(settings, producer, tag, interval=30.0, gap=120.0)
    keepalives.resize(1)
    now = time.time()
    probes = [(orders.emit(now, probe=True), streaming_latency.volume_check(settings)),
              (keepalives.emit(now, probe=True), streaming_latency.status_check(settings))]
    producer.flush(10)
    deadline = time.time() + 60
    while time.time() < deadline and not all(p.latency is not None or p.visible is not None for p, _ in probes):
        for probe, check in probes:
            if probe.latency is None and probe.visible is None:
                check([probe])
        time.sleep(0.05)
    order, keepalive = probes[0][0], probes[1][0]
    return order.latency, keepalive.visible


def measure(role: str, settings: Settings, workdir: pathlib.Path, args) -> dict:
    env = settings_environment(settings)
    if role.startswith("beam"):
        sides = [streaming_latency.Pipeline(kind, workdir) for kind in ("orders", "presence")]
        options = [f"--idle_poll_max_seconds={args.old_cap if role == 'beam-old' else args.idle_poll_max_seconds}"]
    else:
        sides = [streaming_latency.HandLoop(kind, workdir) for kind in ("orders", "presence")]
        options = ["--hand-consume-timeout", "0.05"]
    for side in sides:
        side.start(options, env)
    feed_log = open(workdir / f"feed-{role}.log", "ab")
    feed = subprocess.Popen([sys.executable, "-m", "orderflow_dev.generate", "feed"], env={**os.environ, **env},
                            stdout=feed_log, stderr=subprocess.STDOUT, cwd=ROOT)
    started = time.time()
    try:
        while not flowing(settings):
            dead = [s.name for s in sides if not s.running()]
            if dead or time.time() - started > args.start_timeout:
                raise RuntimeError(f"{role}: not streaming after {time.time() - started:.0f} s (stopped: {dead}): "
                                   + "\n".join(s.log_tail() for s in sides))
            time.sleep(1)
        print(f"{role:>5}: streaming {time.time() - started:.1f} s after the start", flush=True)
        roots = {s.name: s.pid for s in sides}
        time.sleep(args.settle)
        at_feed = cpu_over(roots, args.seconds)
        feed.terminate()
        feed.wait(30)
        time.sleep(args.settle)
        idle = cpu_over(roots, args.seconds)
        probes = []
        for n in range(args.probes):
            time.sleep(args.probe_gap)
            probes.append(after_idle(settings, f"{role}-{n}"))
        return {"feed": at_feed, "idle": idle, "probes": probes}
    finally:
        if feed.poll() is None:
            feed.kill()
        feed_log.close()
        for side in sides:
            side.stop()


def print_results(results: dict[str, dict], probe_gap: float) -> None:
    roles = list(results)
    print(f"\n{'phase':<6} {'side':<8} {'total':>7}  processes (% of one core)")
    for phase in ("idle", "feed"):
        for role in roles:
            usage = results[role][phase]
            detail = ", ".join(f"{name} {pct:.1f}" for name, pct in sorted(usage.items()) if pct >= 0.05)
            print(f"{phase:<6} {role:<8} {sum(usage.values()):6.1f}%  {detail}")
        if "beam" in results and "beam-old" in results:
            new, old = (sum(results[r][phase].values()) for r in ("beam", "beam-old"))
            print(f"{phase:<6} beam-old / beam: {old / new if new else float('inf'):.2f}x")
    print(f"\nafter {probe_gap:.0f} s of silence, produced -> visible (s): order (DynamoDB volume), "
          "keep-alive (Redis)")
    for role in roles:
        print(f"{role:<8} " + "; ".join(f"{streaming_latency.fmt(o)}, {streaming_latency.fmt(k)}"
                                        for o, k in results[role]["probes"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each measured window (default 60 s)")
    parser.add_argument("--settle", type=float, default=20.0, help="wait before each window (default 20 s)")
    parser.add_argument("--start-timeout", type=float, default=240.0)
    parser.add_argument("--idle_poll_max_seconds", type=float, default=IDLE_POLL_MAX_INTERVAL,
                        help="the back-off's cap of the beam side (default: the pipelines' default)")
    parser.add_argument("--old-cap", type=float, default=0.5,
                        help="the beam-old side's cap (default 0.5: the idle poll interval, no back-off)")
    parser.add_argument("--probes", type=int, default=3, help="records timed after a quiet spell, per side")
    parser.add_argument("--probe-gap", type=float, default=20.0, help="silence before each of them (s)")
    parser.add_argument("--sides", default="beam,beam-old,hand")
    args = parser.parse_args()

    with priced_stack("bench-idle-", ROOT) as (base, admin_dsn, workdir):
        roles = args.sides.split(",")
        results = {role: measure(role, side_settings(base, admin_dsn, role.replace("-", "_")), workdir, args)
                   for role in roles}
        print_results(results, args.probe_gap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
