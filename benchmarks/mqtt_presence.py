"""Keep-alives over MQTT at scale: restaurants connected to sharded Mosquitto brokers, through the bridge and
the presence pipeline streaming on Prism, then a mass kill.

On a throw-away local stack started here (free ports), with ``--brokers`` Mosquitto processes (the stack's
own and more, each on its own port: one process holds at most ~19,000 connections under the 20,000 open-file
limit) and ``--loaders`` fleet processes (``python -m orderflow_dev.generate mqtt``), loader ``k`` connecting
from source address 127.0.0.(k+2) (each source address has ~28,000 ephemeral ports), ramping up at
``--rate`` connections/s in all. Restaurant ``j`` of a loader goes to broker ``j % brokers``. It reports:

- the ramp: connections/s and how many connected;
- during ``--minutes`` of steady pinging (every ``--interval`` s): the brokers' and the bridge's CPU (% of one
  core) and RSS, and ping -> Redis latency p50/p99 (a probe fleet in this process pings with its own
  ``sent_at`` and polls the hot state until it shows);
- a sample of 1,000 statuses (``RestaurantStateStore.statuses``, the code of ``GET /restaurants/status``)
  checked against what the loaders know: connected and pinging inside opening hours -> online;
- then ``--kill`` connections closed abruptly (SIGUSR1 to the loaders: no DISCONNECT, never reconnected) and
  how long until all of them read offline with reason ``disconnected``.

- beside it, the HTTP path's rate on the same machine: ``--http-requests`` ``POST /restaurants/{id}/keepalive``
  at ``--http-concurrency`` in flight from another process (``api_latency.py``'s load), the API served
  detached on the same stack, the MQTT load stopped first.

    .venv/bin/python benchmarks/mqtt_presence.py        # 100,000 restaurants, 6 brokers, 6 loaders, 10 minutes
    .venv/bin/python benchmarks/mqtt_presence.py --restaurants 2000 --brokers 2 --loaders 2 --minutes 1 --kill 500
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import os
import pathlib
import random
import signal
import statistics
import sys
import tempfile
import time
import zoneinfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import api_latency  # noqa: E402  (benchmarks/, beside this script: the HTTP load process)
from harness import cpu_seconds, process_tree, rss_mb  # noqa: E402

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, load_settings, settings_environment  # noqa: E402
from orderflow.io.restaurant_state import RestaurantStateStore  # noqa: E402
from orderflow_dev.generate.mqtt_fleet import RestaurantFleet  # noqa: E402
from orderflow_dev.local.processes import DetachedProcess  # noqa: E402
from orderflow_dev.local.stack import LocalStack, StackPorts, temporary_stack  # noqa: E402

ZONE = "America/Sao_Paulo"

def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (nor waiting for I/O) since boot, from /proc/stat."""
    fields = [int(f) for f in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def forwarded_wills(metrics_url: str) -> float:
    """The bridge's ``orderflow_bridge_forwarded_total{kind="disconnected"}``: last wills written to Kafka."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('orderflow_bridge_forwarded_total{kind="disconnected"}'))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def open_now() -> str:
    local = dt.datetime.now(zoneinfo.ZoneInfo(ZONE))
    return f"{local - dt.timedelta(hours=1):%H:%M}-{local + dt.timedelta(hours=4):%H:%M}"


def shards(stack: LocalStack, count: int, workdir: pathlib.Path) -> list[LocalStack]:
    """The stack's broker and ``count - 1`` more Mosquitto processes, each a one-service stack of its own."""
    extra = []
    for n in range(1, count):
        free = StackPorts.free()
        shard = LocalStack(workdir / f"broker-{n}", dataclasses.replace(StackPorts(), mosquitto=free.mosquitto),
                           only=("mosquitto",))
        shard.up(timeout=30)
        extra.append(shard)
    return [stack, *extra]


def issue(brokers: list[LocalStack], loaders: int, restaurants: int, workdir: pathlib.Path) -> list[list[str]]:
    """Accounts for every restaurant on its broker; one credentials file per loader. Returns each loader's ids."""
    ids = [f"mqtt-{n:06d}" for n in range(restaurants)]
    per_loader = [ids[k::loaders] for k in range(loaders)]
    for k, mine in enumerate(per_loader):
        passwords: dict[str, str] = {}
        for b, broker in enumerate(brokers):
            passwords.update(broker.issue_mqtt_credentials(mine[b::len(brokers)]))
        (workdir / f"loader-{k}.credentials").write_text("".join(f"{r} {passwords[r]}\n" for r in mine))
    return per_loader


async def probe_latency(settings: Settings, broker: LocalStack, seconds: float, every: float = 0.5) -> list[float]:
    """ping -> visible in the Redis hot state, for 20 probe restaurants pinging with their own sent_at."""
    ids = [f"probe-{n:03d}" for n in range(20)]
    fleet = RestaurantFleet([("127.0.0.1", broker.ports.mosquitto)], broker.issue_mqtt_credentials(ids))
    store = RestaurantStateStore.from_settings(settings)
    assert await fleet.connect_all() == len(ids), fleet.counts
    latencies: list[float] = []
    dropped = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        restaurant = random.choice(ids)
        sent_ms = int(time.time() * 1000)
        sent_at = dt.datetime.fromtimestamp(sent_ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")
        try:
            if not fleet.connections[restaurant].connected:  # dropped by its broker: reconnect, as a device does
                await fleet.connect_all([restaurant], retry_for=60)
            await fleet.connections[restaurant].ping(f'{{"sent_at": "{sent_at}"}}'.encode())
        except (ConnectionError, asyncio.TimeoutError):
            dropped += 1
            continue
        while True:
            stored = store.raw([restaurant])[0].get(b"last_keepalive_ms")
            if stored and int(stored) >= sent_ms:
                latencies.append(time.time() - sent_ms / 1000)
                break
            if time.time() - sent_ms / 1000 > 60:
                latencies.append(float("inf"))
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(every)
    await fleet.disconnect(ids)
    if dropped:
        print(f"probes: {dropped} keep-alives not acknowledged (connection dropped), not counted")
    return latencies


def http_phase(settings: Settings, workdir: pathlib.Path, requests: int, concurrency: int) -> None:
    """The HTTP path beside it: POST /restaurants/{id}/keepalive through the API served detached."""
    import port_for

    from orderflow.api.auth import create_key
    from orderflow_dev.demo.api import start_detached, stop_detached

    url, _ = start_detached(settings, workdir, port=port_for.select_random())
    try:
        key = create_key(settings.postgres_dsn, ["ingest"], name="benchmark")[1]
        rng = random.Random(7)
        paths = [(f"/restaurants/http-{rng.randrange(100_000):06d}/keepalive", b"{}") for _ in range(requests)]
        api_latency.run_load({"mode": "http", "url": url, "key": key, "paths": paths[:500],
                              "concurrency": concurrency})  # warm-up
        latencies, seconds = api_latency.run_load({"mode": "http", "url": url, "key": key, "paths": paths,
                                                   "concurrency": concurrency})
        print(f"HTTP: {len(latencies) / seconds:.0f} keep-alives/s at {concurrency} in flight, "
              f"p50 {1000 * percentile(latencies, 0.5):.0f} ms, p99 {1000 * percentile(latencies, 0.99):.0f} ms")
    finally:
        stop_detached(workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restaurants", type=int, default=100_000)
    parser.add_argument("--brokers", type=int, default=6)
    parser.add_argument("--loaders", type=int, default=6)
    parser.add_argument("--rate", type=float, default=1500.0, help="connections per second, all loaders together")
    parser.add_argument("--interval", type=float, default=30.0, help="keep-alive period (s)")
    parser.add_argument("--minutes", type=float, default=10.0, help="steady pinging before the kill")
    parser.add_argument("--kill", type=int, default=10_000, help="connections killed abruptly at the end")
    parser.add_argument("--http-requests", type=int, default=30_000, help="HTTP keep-alives of the HTTP phase (0: none)")
    parser.add_argument("--http-concurrency", type=int, default=64)
    args = parser.parse_args()
    per_loader_max = 19_000
    if args.restaurants / args.loaders > per_loader_max or args.restaurants / args.brokers > per_loader_max:
        parser.error(f"at most {per_loader_max} connections per loader and per broker (20,000 open files each)")

    with temporary_stack("bench-mqtt-", timeout=180) as stack, tempfile.TemporaryDirectory(dir=".local") as tmp:
        workdir = pathlib.Path(tmp)
        brokers = shards(stack, args.brokers, workdir)
        hours = open_now()
        settings = dataclasses.replace(
            load_settings(stack.environment()), opening_hours=hours, presence_timezone=ZONE,
            mqtt_url=",".join(f"mqtt://127.0.0.1:{b.ports.mosquitto}" for b in brokers))
        bootstrap.bootstrap_all(settings)
        env = {**settings_environment(settings), "ORDERFLOW_LOG_FORMAT": "text"}
        started = time.monotonic()
        per_loader = issue(brokers, args.loaders, args.restaurants, workdir)
        print(f"accounts: {args.restaurants} on {args.brokers} brokers in {time.monotonic() - started:.1f} s")

        presence = DetachedProcess("presence", workdir)
        presence.start([f"--opening_hours={hours}", f"--presence_timezone={ZONE}"], env=env)
        import port_for

        bridge_metrics = f"http://127.0.0.1:{(metrics_port := port_for.select_random())}/metrics"
        bridge = DetachedProcess("bridge", workdir)
        bridge.start(["--metrics-port", str(metrics_port)], env=env)
        store = RestaurantStateStore.from_settings(settings)
        loaders = []
        try:
            time.sleep(5)
            started = time.monotonic()
            for k in range(args.loaders):
                loader = DetachedProcess("mqtt-feed", workdir / f"loader-{k}")
                kill = len(per_loader[k]) * args.kill // args.restaurants
                loader.start(["--credentials", str(workdir / f"loader-{k}.credentials"),
                              "--interval", str(args.interval), "--rate", str(args.rate / args.loaders),
                              "--source-addresses", f"127.0.0.{k + 2}", "--kill-on-sigusr1", str(kill)], env=env)
                loaders.append((loader, per_loader[k][:kill]))
            while True:
                lines = [line for loader, _ in loaders for line in loader.log_path.read_text().splitlines()
                         if " connected (" in line]
                if len(lines) == len(loaders):
                    break
                if any(loader.status() != "running" for loader, _ in loaders):
                    raise RuntimeError("a loader died: " + " ".join(loader.log_tail() for loader, _ in loaders))
                time.sleep(1)
            ramp = time.monotonic() - started
            connected = sum(int(line.split("mqtt fleet: ")[1].split()[0]) for line in lines)
            retried = sum(int(line.split("failed=")[1].split(",")[0]) for line in lines)
            print(f"ramp: {connected} of {args.restaurants} connected in {ramp:.1f} s "
                  f"({connected / ramp:.0f} connections/s; {retried} attempts failed and were retried)")

            groups = {f"broker-{n}": [b._pid(b.services["mosquitto"])] for n, b in enumerate(brokers)}
            groups["bridge"] = [bridge.pid]
            # Where the rest of the 2 cores went: the presence pipeline with its Prism and SDK workers, and the
            # simulated devices (which a real deployment does not run beside the platform).
            groups["pipeline"] = list(process_tree(presence.pid))
            groups["loaders"] = [loader.pid for loader, _ in loaders]
            before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
            machine_before = machine_busy_seconds()
            steady = time.monotonic()
            latencies = asyncio.run(probe_latency(settings, brokers[0], args.minutes * 60))
            elapsed = time.monotonic() - steady
            for name, pids in groups.items():
                cpu = 100 * (sum(cpu_seconds(pid) for pid in pids) - before[name]) / elapsed
                print(f"{name:<10} CPU {cpu:5.1f}% of a core, RSS {sum(rss_mb(pid) for pid in pids):7.1f} MB")
            print(f"machine    CPU {100 * (machine_busy_seconds() - machine_before) / elapsed:5.1f}% of one core "
                  f"({os.cpu_count()} cores), load {os.getloadavg()[0]:.1f}")
            print(f"ping -> Redis: p50 {percentile(latencies, 0.5):.3f} s, p99 {percentile(latencies, 0.99):.3f} s "
                  f"({len(latencies)} probes)")

            sample = random.Random(7).sample([r for ids in per_loader for r in ids], min(1000, args.restaurants))
            statuses = store.statuses(sample)
            online = sum(s["status"] == "online" for s in statuses.values())
            print(f"sample: {online} of {len(sample)} statuses online, as the loaders know them "
                  f"({statistics.mean(len(s['reasons']) for s in statuses.values()):.3f} reasons on average; "
                  f"reasons seen: {dict(collections.Counter(r for s in statuses.values() for r in s['reasons']))})")

            killed = [r for _, ids in loaders for r in ids]
            wills_before = forwarded_wills(bridge_metrics)
            for loader, _ in loaders:
                os.kill(loader.pid, signal.SIGUSR1)
            kill_started = time.monotonic()
            bridged_after = None  # the stage split: broker + bridge, then Kafka + the pipeline
            while True:
                if bridged_after is None and forwarded_wills(bridge_metrics) - wills_before >= len(killed):
                    bridged_after = time.monotonic() - kill_started
                    print(f"kill: the bridge wrote all {len(killed)} last wills to Kafka after {bridged_after:.1f} s")
                left = [r for r, s in store.statuses(killed).items() if "disconnected" not in s["reasons"]]
                if not left or time.monotonic() - kill_started > 600:
                    break
                time.sleep(0.5)
            print(f"kill: {len(killed) - len(left)} of {len(killed)} read offline/disconnected after "
                  f"{time.monotonic() - kill_started:.1f} s")
            for loader, _ in loaders:
                loader.stop()
            if args.http_requests:
                http_phase(settings, workdir, args.http_requests, args.http_concurrency)
            return 0 if not left and online == len(sample) else 1
        finally:
            for loader, _ in loaders:
                loader.stop()
            bridge.stop()
            presence.stop()
            for broker in brokers[1:]:
                broker.down()


if __name__ == "__main__":
    sys.exit(main())
