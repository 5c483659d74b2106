"""Presence pipeline throughput: the bounded Beam pipeline beside a hand-written loop, in one run.

Both read the same generated topics (default 10,000 restaurants x 60 minutes of pings every 30 s =
1.2M keep-alives, with the generator's outages, schedules and status changes; the issue's full size is
``--restaurants 100000``, 12M keep-alives) with every sink live on a local stack started here (free
ports): hot state in Redis, status intervals + daily unexplained offline seconds + unavailability history
in Postgres. The baseline is a plain confluent-kafka + psycopg + redis loop with the same rules: the
same Avro codec, the same ``presence_rules`` functions and the same SQL and Redis scripts, only without
Beam (it merges each restaurant's pings into intervals in a dict and evaluates every restaurant once at
the end). Each side runs in its own process on its own database and Redis prefix; the daily offline
seconds of both are checked equal (and equal to the generator's plan).

    .venv/bin/python benchmarks/presence_pipeline.py --restaurants 10000 --minutes 60
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import pathlib
import sys
import time
import uuid
from zoneinfo import ZoneInfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import run_side  # noqa: E402  (benchmarks/harness.py, beside this script)

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, load_settings  # noqa: E402

START = dt.datetime(2026, 11, 10, 12, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))


# --------------------------------------------------------------------------------------------------
# The hand-written baseline.
# --------------------------------------------------------------------------------------------------
def hand_loop(settings: Settings, track_from: int, as_of: int, batch_size: int, prefix: str, *,
              stop=None, consume_timeout: float = 1.0) -> None:
    """Reads both topics to their end, then evaluates every restaurant; or, given ``stop`` (a
    ``threading.Event``), streams until it is set (benchmarks/streaming_latency.py)."""
    import psycopg
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from orderflow.clients import avro_codec
    from orderflow.io.presence_postgres import write_intervals, write_unavailability
    from orderflow.io.restaurant_state import RestaurantStateStore
    from orderflow.model.avro import AvroDecodeError
    from orderflow.model.presence import (
        AvailabilityChange,
        InvalidAvailabilityChange,
        OpeningHours,
        evaluate,
        normalize,
        to_ms,
        validate_change,
    )

    hours, gap = OpeningHours(), 120_000
    keepalive_codec, change_codec = avro_codec(settings, "keepalive"), avro_codec(settings, "availability")
    store = RestaurantStateStore(settings.redis_url, key_prefix=prefix)
    conn = psycopg.connect(settings.postgres_dsn)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"hand-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100, "max.partition.fetch.bytes": 16 * 1024 * 1024,
                         "fetch.max.bytes": 64 * 1024 * 1024, "queued.min.messages": 500_000})
    topics = [settings.topics.keepalive, settings.topics.availability]
    assignment = [TopicPartition(t, p, 0) for t in topics for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
    consumer.assign(assignment)
    open_partitions = {(tp.topic, tp.partition) for tp in assignment}
    intervals: dict[str, list[int]] = {}  # restaurant -> flat [s0, e0, s1, e1, ...]
    changes: dict[str, list] = {}
    dead = 0
    while (not stop.is_set()) if stop is not None else open_partitions:
        latest: dict[str, int] = {}
        batch_changes = []
        for message in consumer.consume(batch_size, timeout=consume_timeout):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard((message.topic(), message.partition()))
                    continue
                raise RuntimeError(message.error())
            try:
                if message.topic() == settings.topics.keepalive:
                    record = keepalive_codec.decode(message.value())
                    rid, ping = record["restaurant_id"], to_ms(record["sent_at"])
                    if latest.get(rid, -1) < ping:
                        latest[rid] = ping
                    if ping >= as_of:
                        continue
                    flat = intervals.get(rid)
                    if flat is None:
                        intervals[rid] = [ping, ping + gap]
                    elif flat[-2] <= ping < flat[-1]:
                        flat[-1] = max(flat[-1], ping + gap)
                    elif ping >= flat[-1]:
                        flat.extend((ping, ping + gap))
                    else:
                        merged = normalize([(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)] + [(ping, ping + gap)])
                        flat[:] = [x for iv in merged for x in iv]
                else:
                    change = validate_change(AvailabilityChange.from_record(change_codec.decode(message.value())))
                    changes.setdefault(change.restaurant_id, []).append(change)
                    batch_changes.append(change)
            except (AvroDecodeError, InvalidAvailabilityChange):
                dead += 1
        store.record_keepalives(latest)
        if batch_changes:
            store.apply_changes(batch_changes)
            write_unavailability(conn, batch_changes)
    consumer.close()
    rows = []
    for rid in sorted(set(intervals) | set(changes)):
        flat = intervals.get(rid, [])
        rows += evaluate(rid, track_from, as_of, [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)],
                         changes.get(rid, []), hours)
        if len(rows) >= 5000:
            write_intervals(conn, rows)
            rows = []
    if rows:
        write_intervals(conn, rows)
    conn.close()


# --------------------------------------------------------------------------------------------------
# One side in a child process.
# --------------------------------------------------------------------------------------------------
def child(role: str, track_from: int, as_of: int, batch_size: int, prefix: str) -> None:
    settings = load_settings()  # the parent hands them over in the environment
    started = time.perf_counter()
    if role == "beam":
        from orderflow.pipelines import presence

        presence.run(["--bounded", f"--track_from={track_from}", f"--as_of={as_of}",
                      f"--presence_batch_size={batch_size}", f"--presence_redis_prefix={prefix}"], settings=settings)
    else:
        hand_loop(settings, track_from, as_of, batch_size, prefix)
    elapsed = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent, which holds the plan and produced
    # every keep-alive (at 100,000 restaurants its peak can exceed a side's).
    with open("/proc/self/status") as status:
        peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"seconds": elapsed, "peak_mb": peak_mb}))


def isolated(base: Settings, admin_dsn: str, name: str) -> Settings:
    import psycopg

    database = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    settings = dataclasses.replace(base, postgres_dsn=base.postgres_dsn.rsplit("/", 1)[0] + f"/{database}")
    bootstrap.migrate(settings.postgres_dsn)
    return settings


def outcome(settings: Settings) -> dict:
    import psycopg

    with psycopg.connect(settings.postgres_dsn) as conn:
        daily = conn.execute("SELECT restaurant_id, day::text, unexplained_offline_seconds FROM restaurant_offline_daily")
        intervals = conn.execute("SELECT count(*) FROM restaurant_status_intervals").fetchone()[0]
        return {"daily": {(r, d): s for r, d, s in daily}, "intervals": intervals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restaurants", "--n", type=int, default=10_000,
                        help="restaurants (default 10,000; the issue's full size is 100,000)")
    parser.add_argument("--minutes", type=int, default=60, help="period of pings every 30 s (default 60)")
    parser.add_argument("--batch-size", type=int, default=5000, help="Kafka records per batch, both sides")
    parser.add_argument("--only", choices=["beam", "hand"], help="run one side only")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--track-from", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args.role, args.track_from, args.as_of, args.batch_size, args.prefix)
        return 0

    from orderflow_dev.generate.keepalive import make_plan, produce
    from orderflow_dev.local import temporary_stack

    with temporary_stack("bench-presence-", ROOT / ".local", timeout=120) as stack:
        base = load_settings(stack.environment())
        suffix = uuid.uuid4().hex[:6]
        base = dataclasses.replace(base, topics=dataclasses.replace(
            base.topics, keepalive=f"keepalive-{suffix}", availability=f"availability-{suffix}"))
        bootstrap.create_topics(base.kafka_bootstrap, [base.topics.keepalive, base.topics.availability],
                                base.topic_partitions)
        t = time.perf_counter()
        plan = make_plan(args.restaurants, START, args.minutes, seed=2026)
        counts = produce(plan, base.kafka_bootstrap, base.topics.keepalive, base.topics.availability,
                         progress=sys.stderr.isatty())
        n = counts["keepalives"]
        print(f"generated and produced {n:,} keep-alives of {args.restaurants:,} restaurants over {args.minutes} min "
              f"and {counts['changes']:,} availability changes in {time.perf_counter() - t:.1f}s", flush=True)
        expected = plan.expected()
        admin_dsn = base.postgres_dsn.rsplit("/", 1)[0] + "/postgres"
        results = {}
        for role in ("beam", "hand"):
            if args.only and role != args.only:
                continue
            settings = isolated(base, admin_dsn, role)
            measured = run_side(__file__, role, settings, [
                "--track-from", str(plan.start_ms), "--as-of", str(plan.end_ms),
                "--prefix", f"{role}-{suffix}:restaurant:", "--batch-size", str(args.batch_size)])
            if measured is None:
                return 1
            measured["outcome"] = outcome(settings)
            results[role] = measured
            exact = measured["outcome"]["daily"] == expected
            print(f"{role:>5}: {measured['seconds']:8.1f}s  {n / measured['seconds']:10,.0f} keep-alives/s  "
                  f"peak RSS {measured['peak_mb']:6.0f} MB  intervals={measured['outcome']['intervals']:,}  "
                  f"ranking matches the plan: {exact}", flush=True)
        if len(results) == 2:
            same = results["beam"]["outcome"]["daily"] == results["hand"]["outcome"]["daily"]
            ratio = results["hand"]["seconds"] / results["beam"]["seconds"]
            print(f"ratio beam/hand throughput: {ratio:.2f}x; identical daily offline seconds: {same}")
            return 0 if same else 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
