"""Latency (p50/p99) and requests/s of the HTTP API under concurrent load from a second process.

Endpoints: ``GET /restaurants/status`` with 100 ids (Redis hot state, one round trip) and
``GET /clients/{token}/volume`` (DynamoDB). The API runs as ``python -m orderflow.api serve`` (one
uvicorn process) on its own local stack on free loopback ports; the load comes from another process
(aiohttp, ``--concurrency`` requests in flight). Baseline: the same load process calling the same
backends directly (``RestaurantStateStore.statuses`` / DynamoDB ``GetItem``, same concurrency in
threads), so the ratio is what the HTTP layer (auth, validation, JSON, uvicorn) costs.

    .venv/bin/python benchmarks/api_latency.py [--n 3000] [--concurrency 16] [--restaurants 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from orderflow import (
    bootstrap,  # noqa: E402
    )
from orderflow.config import load_settings  # noqa: E402
from orderflow.local import temporary_stack  # noqa: E402

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
        return (f"{self.name:<44} {len(self.latencies):>6} {self.percentile(0.5):>8.2f} {self.percentile(0.99):>8.2f}"
                f" {self.rate:>9.0f}")


def _seed(settings, restaurants: int, clients: int) -> None:
    from orderflow.io.restaurant_state import RestaurantStateStore
    from orderflow.model.presence import AvailabilityChange

    now_ms = int(time.time() * 1000)
    store = RestaurantStateStore(settings.redis_url)
    store.record_keepalives({f"r-{i:06d}": now_ms - random.randint(0, 300_000) for i in range(restaurants)})
    store.apply_changes([AvailabilityChange(f"e-{i}", f"r-{i:06d}", "SET_STATUS", "UNAVAILABLE", None,
                                            "CONNECTION_ISSUES", None, None, now_ms) for i in range(0, restaurants, 50)])
    store.close()
    dynamodb = clients.aws_client(settings, "dynamodb")
    items = [{"PutRequest": {"Item": {"client_token": {"S": f"client-{i}"}, "day": {"S": DAY},
                                      "total": {"N": f"{random.randint(1, 10**9)}.{random.randint(0, 99):02d}"},
                                      "order_count": {"N": str(random.randint(1, 500))},
                                      "updated_at": {"S": "2026-03-02T13:00:00Z"}}}} for i in range(clients)]
    for start in range(0, len(items), 25):
        dynamodb.batch_write_item(RequestItems={settings.client_volume_table: items[start:start + 25]})


def _status_paths(n: int, restaurants: int) -> list[str]:
    rng = random.Random(7)
    return ["/restaurants/status?ids=" + ",".join(f"r-{rng.randrange(restaurants):06d}" for _ in range(100))
            for _ in range(n)]


def _volume_paths(n: int, clients: int) -> list[str]:
    rng = random.Random(11)
    return [f"/clients/client-{rng.randrange(clients)}/volume?day={DAY}" for _ in range(n)]


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
                async with session.get(path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{path[:60]}: HTTP {resp.status}")
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="requests per endpoint (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--restaurants", type=int, default=20_000, help="restaurants in the hot state")
    parser.add_argument("--clients", type=int, default=500, help="client volume items in DynamoDB")
    args = parser.parse_args(argv)

    from orderflow.api.auth import create_key
    from orderflow.api.demo import start_detached, stop_detached

    print("starting a local stack under .local/bench-api-* ...", flush=True)
    with temporary_stack("bench-api-", ".local", timeout=90) as stack:
        try:
            settings = load_settings(stack.environment())
            bootstrap.bootstrap_all(settings)
            _seed(settings, args.restaurants, args.clients)
            key = create_key(settings.postgres_dsn, ["read"], name="benchmark")[1]
            import port_for

            url, _ = start_detached(settings, stack.root, port=port_for.select_random())
            print(f"API on {url}; {args.restaurants} restaurants, {args.clients} clients; "
                  f"{args.n} requests per endpoint, {args.concurrency} in flight, load from a second process\n")

            scenarios = [("status", "GET /restaurants/status (100 ids)", _status_paths(args.n, args.restaurants)),
                         ("volume", "GET /clients/{token}/volume", _volume_paths(args.n, args.clients))]
            print(f"{'':<44} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
            for kind, label, paths in scenarios:
                warm = paths[: max(50, args.n // 20)]
                run_load({"mode": "http", "url": url, "key": key, "paths": warm, "concurrency": args.concurrency})
                http = Result(f"API  {label}", *run_load(
                    {"mode": "http", "url": url, "key": key, "paths": paths, "concurrency": args.concurrency}))
                direct = Result(f"base direct {'statuses(100 ids)' if kind == 'status' else 'DynamoDB GetItem'}",
                                *run_load({"mode": "direct", "settings": settings, "kind": kind, "paths": paths,
                                           "concurrency": args.concurrency}))
                print(http.row())
                print(direct.row())
                print(f"{'  ratio API / direct (req/s)':<44} {http.rate / direct.rate:>35.2f}")
            return 0
        finally:
            stop_detached(stack.root)


if __name__ == "__main__":
    sys.exit(main())
