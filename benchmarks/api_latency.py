"""Latency (p50/p99) and requests/s of the HTTP API under concurrent load from a second process.

Scenarios (``--only`` picks some), each the API beside its baseline in the same run, with the ratio:

- ``status1``: ``GET /restaurants/status`` with 100 ids (Redis hot state, one round trip), 1 in flight
  (issue 15 goal 4: p99 < 5 ms and >= 0.8x of the direct calls); then the same requests to a no-op ASGI app
  under uvicorn (``floor_app``): the HTTP floor, and the best ratio any app could reach with it;
- ``status``: the same at ``--concurrency`` in flight;
- ``volume``: ``GET /clients/{token}/volume`` (DynamoDB) at ``--concurrency`` in flight;
- ``ingest``: ``POST /orders`` with ``--ingest-batch`` JSON orders per request (one Kafka transaction each)
  at ``--ingest-concurrency`` in flight (goal 4: >= 5,000 orders/s with p99 < 50 ms at 8 in flight);
- ``keepalive``: ``POST /restaurants/{id}/keepalive`` (``{}``) at ``--keepalive-concurrency`` in flight (issue 26
  goal 6: >= 2,000/s from one API process at 64 in flight). Baseline: the keep-alive's Avro record and the
  API's own ``KafkaSink.produce_record`` (one record, no transaction, as the API writes it), no HTTP.

The API runs as ``python -m orderflow.api serve`` (one uvicorn process) on its own local stack on free
loopback ports; the load comes from another process (aiohttp). Baseline: the same load process calling the
same backends directly (``RestaurantStateStore.statuses`` / DynamoDB ``GetItem`` in as many threads as
requests in flight; for ingest, what ``POST /orders`` does without HTTP: ``parse_orders``, Avro encoding
and the API's own ``KafkaSink`` with the same number of transactional producers), so the ratio is what the
HTTP layer (auth, validation, JSON, uvicorn) costs.

    .venv/bin/python benchmarks/api_latency.py [--n 3000] [--concurrency 16] [--only status1,ingest]

``--profile DIR``: py-spy samples the API process (the thread holding the GIL, 200/s) during each scenario's
measured HTTP run; the raw stacks go to ``DIR/<scenario>.txt`` and the heaviest frames are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import harness  # noqa: E402

from orderflow import (
    bootstrap,  # noqa: E402
)
from orderflow.config import load_settings  # noqa: E402
from orderflow_dev.local import temporary_stack  # noqa: E402

DAY = "2026-03-02"


@dataclasses.dataclass
class Result:
    name: str
    latencies: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (f"{self.name:<58} {len(self.latencies):>6} {self.percentile(0.5):>8.2f} {self.percentile(0.99):>8.2f}"
                f" {self.rate:>9.0f}")


def _seed(settings, restaurants: int, n_clients: int) -> None:
    from orderflow.clients import aws_client
    from orderflow.io.restaurant_state import RestaurantStateStore
    from orderflow.model.presence import AvailabilityChange

    now_ms = int(time.time() * 1000)
    store = RestaurantStateStore(settings.redis_url)
    store.record_keepalives({f"r-{i:06d}": now_ms - random.randint(0, 300_000) for i in range(restaurants)})
    store.apply_changes([AvailabilityChange(f"e-{i}", f"r-{i:06d}", "SET_STATUS", "UNAVAILABLE", None,
                                            "CONNECTION_ISSUES", None, None, now_ms) for i in range(0, restaurants, 50)])
    store.close()
    dynamodb = aws_client(settings, "dynamodb")
    items = [{"PutRequest": {"Item": {"client_token": {"S": f"client-{i}"}, "day": {"S": DAY},
                                      "total": {"N": f"{random.randint(1, 10**9)}.{random.randint(0, 99):02d}"},
                                      "order_count": {"N": str(random.randint(1, 500))},
                                      "updated_at": {"S": "2026-03-02T13:00:00Z"}}}} for i in range(n_clients)]
    for start in range(0, len(items), 25):
        dynamodb.batch_write_item(RequestItems={settings.client_volume_table: items[start:start + 25]})


def _status_paths(n: int, restaurants: int) -> list[str]:
    rng = random.Random(7)
    return ["/restaurants/status?ids=" + ",".join(f"r-{rng.randrange(restaurants):06d}" for _ in range(100))
            for _ in range(n)]


def _volume_paths(n: int, clients: int) -> list[str]:
    rng = random.Random(11)
    return [f"/clients/client-{rng.randrange(clients)}/volume?day={DAY}" for _ in range(n)]


def _order_bodies(n: int, batch: int) -> list[bytes]:
    """``n`` JSON bodies of ``batch`` orders each (ids minted by the API: every run's orders are new)."""
    import orjson

    rng = random.Random(13)
    return [orjson.dumps([{"ativo": rng.choice(("PETR4", "VALE3", "ITUB4", "BBDC4")),
                           "quantidade": rng.randint(1, 1000), "token": f"client-{rng.randrange(500)}"}
                          for _ in range(batch)]) for _ in range(n)]


# -- the load process ---------------------------------------------------------------------------------------
async def _http_load(url: str, key: str, paths: list[str], concurrency: int) -> tuple[list[float], float]:
    import aiohttp

    latencies: list[float] = []
    queue = list(reversed(paths))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers={"X-API-Key": key}) as session:
        async def worker():
            while queue:
                path = queue.pop()
                started = time.perf_counter()
                if isinstance(path, tuple):  # (path, JSON body) to POST (benchmarks/mqtt_presence.py's keep-alives)
                    request = session.post(path[0], data=path[1], headers={"Content-Type": "application/json"})
                elif isinstance(path, bytes):  # an ingest body
                    request = session.post("/orders", data=path, headers={"Content-Type": "application/json"})
                else:
                    request = session.get(path)
                async with request as resp:
                    await resp.read()
                    if resp.status not in (200, 202):
                        raise RuntimeError(f"{str(path)[:60]}: HTTP {resp.status}")
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began


def _keepalive_requests(n: int, restaurants: int) -> list[tuple[str, bytes]]:
    rng = random.Random(17)
    return [(f"/restaurants/r-{rng.randrange(restaurants):06d}/keepalive", b"{}") for _ in range(n)]


def _direct_ingest(settings, bodies: list, concurrency: int, producers: int) -> tuple[list[float], float]:
    """What ``POST /orders`` (or ``POST /restaurants/{id}/keepalive``) does without HTTP and auth: parse,
    Avro-encode, one transaction per request (shared by the requests that wait: the sink's group commit)."""
    from orderflow.api.kafka_sink import KafkaSink
    from orderflow.clients import avro_codec
    from orderflow.model.orders import parse_orders
    from orderflow.model.presence import keepalive_kafka_record

    codecs = {"orders": avro_codec(settings, "orders"), "keepalive": avro_codec(settings, "keepalive")}
    sink = KafkaSink(settings.kafka_bootstrap, producers=producers)
    latencies: list[float] = []
    queue = list(reversed(bodies))

    async def worker():
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            if isinstance(body, tuple):  # a keep-alive: (path, body)
                restaurant = body[0].split("/")[2]
                records = [keepalive_kafka_record(codecs["keepalive"], restaurant, int(time.time() * 1000))]
                topic = settings.topics.keepalive
            else:
                orders = parse_orders(body, timestamp_ms=int(time.time() * 1000), minted_id_prefix="bench-direct")
                records = [(str(o["client_token"]).encode(), codecs["orders"].encode(o)) for o in orders]
                topic = settings.topics.orders
            if isinstance(body, tuple):  # as the API writes a keep-alive: one record, no transaction
                await sink.produce_record(topic, records[0])
            else:
                delivered = await sink.produce(topic, records)
                assert len(delivered) == len(records)
            latencies.append(time.perf_counter() - started)

    async def run():
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began

    try:
        return asyncio.run(run())
    finally:
        sink.close()


def _direct_load(settings, kind: str, paths: list[str], concurrency: int) -> tuple[list[float], float]:
    from orderflow.io.restaurant_state import RestaurantStateStore

    store = RestaurantStateStore(settings.redis_url)
    from botocore.config import Config

    from orderflow.clients import aws_client

    dynamodb = aws_client(settings, "dynamodb", config=Config(max_pool_connections=concurrency))

    def call(path: str) -> float:
        started = time.perf_counter()
        if kind == "status":
            result = store.statuses(path.split("ids=")[1].split(","))
            assert len(result) >= 1
        else:
            token = path.split("/")[2]
            dynamodb.get_item(TableName=settings.client_volume_table, ConsistentRead=True,
                              Key={"client_token": {"S": token}, "day": {"S": DAY}})
        return time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        began = time.perf_counter()
        latencies = list(pool.map(call, paths))
        return latencies, time.perf_counter() - began


def _load_process(job: dict, out) -> None:
    try:
        if job["mode"] == "http":
            out.send(asyncio.run(_http_load(job["url"], job["key"], job["paths"], job["concurrency"])))
        elif job["kind"] in ("ingest", "keepalive"):
            out.send(_direct_ingest(job["settings"], job["paths"], job["concurrency"], job["producers"]))
        else:
            out.send(_direct_load(job["settings"], job["kind"], job["paths"], job["concurrency"]))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        out.send(exc)


def run_load(job: dict) -> tuple[list[float], float]:
    """Runs ``job`` in a separate process (spawned), so load and server do not share an interpreter."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_load_process, args=(job, sender))
    process.start()
    result = receiver.recv()
    process.join(timeout=60)
    if isinstance(result, Exception):
        raise result
    return result


# -- --profile ----------------------------------------------------------------------------------------------
def start_profiler(pid: int, output: pathlib.Path) -> subprocess.Popen:
    """py-spy on the API process: samples of the thread holding the GIL, without pausing it."""
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
    proc = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--gil",
                             "--nonblocking", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return proc


def stop_profiler(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file and exits
    proc.wait(60)


def print_profile(path: pathlib.Path, top: int = 25) -> None:
    """The frames (function and file) present in the most samples: inclusive shares of the GIL's samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split("/")[-1].split(":")[0] + ")"
                  for f in stack.split(";") if " (" in f]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            leaf[frames[-1]] += n
    print(f"  profile {path}: {total:,} samples of the thread holding the GIL (200/s)")
    for frame, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f}% incl  {100 * leaf[frame] / total:5.1f}% self  {frame}")


def _transaction_counts(url: str) -> tuple[float, float]:
    """(transactions, requests in them) so far, from the API's /metrics (group commit's histogram)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("orderflow_api_kafka_transaction_requests_count", "orderflow_api_kafka_transaction_requests_sum"):
            values[name] = float(value)
    return (values.get("orderflow_api_kafka_transaction_requests_count", 0.0),
            values.get("orderflow_api_kafka_transaction_requests_sum", 0.0))


def _measure_http(label: str, url: str, pid: int, key: str, paths: list, concurrency: int,
                  profile: pathlib.Path | None) -> Result:
    """One scenario against one served API: a warm-up, then the measured run, with the API process's CPU and
    group commit's transactions over it; printed, and returned."""
    run_load({"mode": "http", "url": url, "key": key, "paths": paths[: max(50, len(paths) // 20)],
              "concurrency": concurrency})
    transactions_before, cpu_before = _transaction_counts(url), harness.cpu_seconds(pid)
    profiler = None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler = start_profiler(pid, profile)
    http = Result(label, *run_load({"mode": "http", "url": url, "key": key, "paths": paths,
                                    "concurrency": concurrency}))
    if profiler is not None:
        stop_profiler(profiler)
    api_cpu = harness.cpu_seconds(pid) - cpu_before
    transactions, grouped = (after - before for after, before in
                             zip(_transaction_counts(url), transactions_before, strict=True))
    print(http.row())
    print(f"{'  its process CPU (of one core), per request':<58} {100 * api_cpu / http.seconds:>25.0f}% "
          f"{1e6 * api_cpu / len(http.latencies):>7.0f} µs")
    if transactions:
        print(f"{'  Kafka transactions, requests per transaction':<58} {transactions:>25,.0f} "
              f"{grouped / transactions:>8.1f}")
    return http


def _serve_before(source: pathlib.Path, settings, port: int, log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """``python -m orderflow.api serve`` of another checkout (``--before``), with this venv, on the same stack."""
    from orderflow.config import settings_environment

    env = {**os.environ, **settings_environment(settings), "PYTHONPATH": str(source.resolve())}
    return _serve([sys.executable, "-m", "orderflow.api", "serve", "--host", "127.0.0.1", "--port", str(port)],
                  port, "/openapi.json", f"--before: the API of {source}", log, cwd=source, env=env)


def _serve(command: list[str], port: int, probe: str, what: str, log: pathlib.Path, **popen) -> tuple[subprocess.Popen, str]:
    """Starts ``command`` (a server on ``port``, its output into ``log``) and waits until ``probe`` answers."""
    import urllib.request

    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=1):
                return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"{what} did not come up; log: {log}")


async def floor_app(scope, receive, send):
    """An ASGI app that answers every request ``200 {}`` at once: served by ``_serve_floor``, it measures what
    uvicorn and the load generator's client cost by themselves (``status1``'s floor)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _serve_floor(port: int, log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """``floor_app`` under uvicorn with the API's HTTP/1.1 protocol (httptools; no access line)."""
    command = [sys.executable, "-m", "uvicorn", "api_latency:floor_app", "--app-dir",
               str(pathlib.Path(__file__).resolve().parent), "--http", "httptools",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return _serve(command, port, "/", "the no-op ASGI app", log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="requests per endpoint (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--restaurants", type=int, default=20_000, help="restaurants in the hot state")
    parser.add_argument("--clients", type=int, default=500, help="client volume items in DynamoDB")
    parser.add_argument("--ingest-batch", type=int, default=10, help="orders per POST /orders (default 10)")
    parser.add_argument("--ingest-concurrency", type=int, default=8, help="ingest requests in flight (default 8)")
    parser.add_argument("--keepalive-concurrency", type=int, default=64,
                        help="keep-alive requests in flight (default 64)")
    parser.add_argument("--only", default="status1,status,volume,ingest,keepalive",
                        help="comma-separated scenarios: status1, status, volume, ingest, keepalive (default all)")
    parser.add_argument("--profile", metavar="DIR", type=pathlib.Path,
                        help="py-spy the API process during each scenario's HTTP run (raw stacks into DIR)")
    parser.add_argument("--before", metavar="DIR", type=pathlib.Path,
                        help="also serve the API of another checkout (e.g. `git archive main | tar -x -C DIR`) on "
                             "the same stack and run each scenario against it first: before and after in one run")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - {"status1", "status", "volume", "ingest", "keepalive"}
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")

    from orderflow.api.auth import create_key
    from orderflow_dev.demo.api import start_detached, stop_detached
    from orderflow_dev.local.processes import DetachedProcess

    print("starting a local stack under .local/bench-api-* ...", flush=True)
    before_process = None
    with temporary_stack("bench-api-", ".local", timeout=90) as stack:
        try:
            settings = load_settings(stack.environment())
            bootstrap.bootstrap_all(settings)
            _seed(settings, args.restaurants, args.clients)
            key = create_key(settings.postgres_dsn, ["read", "ingest"], name="benchmark")[1]
            import port_for

            from orderflow.config import load_api_config

            url, _ = start_detached(settings, stack.root, port=port_for.select_random())
            api_pid = DetachedProcess("api", stack.root).pid
            before = None
            if args.before:
                before_process, before_url = _serve_before(args.before, settings, port_for.select_random(),
                                                            pathlib.Path(stack.root) / "logs" / "api-before.log")
                before = (before_url, before_process.pid)
            print(f"API on {url}; {args.restaurants} restaurants, {args.clients} clients; "
                  f"{args.n} requests per scenario, load from a second process\n")

            status_paths = _status_paths(args.n, args.restaurants)
            scenarios = {
                "status1": ("status", "GET /restaurants/status (100 ids), 1 in flight", status_paths, 1),
                "status": ("status", f"GET /restaurants/status (100 ids), {args.concurrency} in flight",
                           status_paths, args.concurrency),
                "volume": ("volume", f"GET /clients/{{token}}/volume, {args.concurrency} in flight",
                           _volume_paths(args.n, args.clients), args.concurrency),
                "ingest": ("ingest", f"POST /orders ({args.ingest_batch} orders), {args.ingest_concurrency} in flight",
                           _order_bodies(args.n, args.ingest_batch), args.ingest_concurrency),
                "keepalive": ("keepalive", f"POST /restaurants/{{id}}/keepalive, {args.keepalive_concurrency} in flight",
                              _keepalive_requests(args.n, args.restaurants), args.keepalive_concurrency),
            }
            baselines = {"status": "statuses(100 ids)", "volume": "DynamoDB GetItem",
                         "ingest": "parse, encode, KafkaSink.produce",
                         "keepalive": "keep-alive record, KafkaSink.produce_record"}
            producers = load_api_config().kafka_producers  # the server's, from the same environment
            print(f"{'':<58} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
            for name in only:
                kind, label, paths, concurrency = scenarios[name]
                served = [("API", url, api_pid)]
                if before is not None:
                    served.insert(0, ("before", *before))
                measured = {}
                for side, side_url, pid in served:
                    profile = args.profile / f"{name}-{side}.txt" if args.profile else None
                    measured[side] = _measure_http(f"{side:<6} {label}", side_url, pid, key, paths, concurrency,
                                                   profile)
                direct = Result(f"base direct {baselines[kind]}, {concurrency} in flight", *run_load(
                    {"mode": "direct", "settings": settings, "kind": kind, "paths": paths,
                     "concurrency": concurrency, "producers": producers}))
                print(direct.row())
                for side, http in measured.items():
                    print(f"{f'  ratio {side} / direct (req/s)':<58} {http.rate / direct.rate:>35.2f}")
                if name == "status1":
                    # The floor of any app: the same requests to an app that does nothing. The best ratio an API
                    # could reach is the direct call's time over that time plus the floor's.
                    floor_process, floor_url = _serve_floor(port_for.select_random(),
                                                            pathlib.Path(stack.root) / "logs" / "floor.log")
                    try:
                        floor = _measure_http(f"{'floor':<6} the same GETs to a no-op ASGI app under uvicorn",
                                              floor_url, floor_process.pid, key, paths, concurrency, None)
                    finally:
                        floor_process.terminate()
                        floor_process.wait(10)
                    best = (1 / direct.rate) / (1 / direct.rate + 1 / floor.rate)
                    print(f"{'  best ratio to direct any app could reach here':<58} {best:>35.2f}")
                    if kind == "ingest":
                        print(f"{f'  orders/s: {side}, direct':<58} {http.rate * args.ingest_batch:>26,.0f} "
                              f"{direct.rate * args.ingest_batch:>8,.0f}")
                if before is not None:
                    print(f"{'  ratio API / before (req/s)':<58} {measured['API'].rate / measured['before'].rate:>35.2f}")
                if args.profile:
                    for side in measured:
                        print_profile(args.profile / f"{name}-{side}.txt")
            return 0
        finally:
            stop_detached(stack.root)
            if before_process is not None:
                before_process.terminate()
                before_process.wait(10)


if __name__ == "__main__":
    sys.exit(main())
