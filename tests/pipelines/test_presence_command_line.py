"""The presence pipeline's command line over one past day (``--track_from`` at its 00:00, ``--as_of`` the
next night) on a topic that also holds events of later days, as an operator recomputes a day.

Each restaurant's offline time of the day is planned by hand; the run's summary line is checked too, and a
streaming run over the same topics prints its running summary periodically.
"""
from __future__ import annotations

import datetime as dt
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import time
import uuid
from zoneinfo import ZoneInfo

import psycopg
import pytest
from confluent_kafka import Producer

from orderflow.clients import avro_codec
from orderflow.config import settings_environment
from orderflow.io.presence_queries import offline_ranking
from orderflow.transforms.status_intervals import shard_of
from tests.support.environment import require

SP = ZoneInfo("America/Sao_Paulo")
DAY = dt.date(2026, 3, 10)
SHARDS = 128  # the pipeline's default --status_shards


def at(day: dt.date, hh: int, mm: int = 0) -> int:
    return int(dt.datetime.combine(day, dt.time(hh, mm), tzinfo=SP).timestamp() * 1000)


def pings(start: int, end: int, every_s: int = 30) -> list[int]:
    return list(range(start, end, every_s * 1000))


def _neighbour_of(restaurant_id: str, same_shard: bool) -> str:
    """A restaurant id whose status shard is (or is not) that of ``restaurant_id``."""
    target = shard_of(restaurant_id, SHARDS)
    return next(f"{'nb' if same_shard else 'far'}-{i}" for i in range(100_000)
                if (shard_of(f"nb-{i}" if same_shard else f"far-{i}", SHARDS) == target) == same_shard)


DAY_BEFORE, DAYS_LATER = DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=3)
NEIGHBOUR, STRANGER = _neighbour_of("active", True), _neighbour_of("active", False)
PINGS = {
    "active": pings(at(DAY, 12), at(DAY, 12, 30)),                     # online 12:00-12:31:30
    "veteran": pings(at(DAY_BEFORE, 12), at(DAY_BEFORE, 12, 10)) + pings(at(DAY, 18), at(DAY, 18, 10)),
    "silent-veteran": pings(at(DAY_BEFORE, 12), at(DAY_BEFORE, 12, 10)),
    "late-starter": pings(at(DAY, 15), at(DAY, 15, 10)),               # first seen at 15:00
    "always-on": pings(at(DAY, 9, 58), at(DAY, 23), every_s=60),
    NEIGHBOUR: pings(at(DAYS_LATER, 12), at(DAYS_LATER, 12, 10)),      # events days later only
    STRANGER: pings(at(DAYS_LATER, 12), at(DAYS_LATER, 12, 10)),
}
# Unexplained offline seconds of DAY (opening hours 10:00-23:00), planned by hand:
EXPECTED = {
    "active": (10 * 3600 + 28 * 60 + 30),                  # starts at its first ping: 12:31:30 -> 23:00
    "veteran": 8 * 3600 + (4 * 3600 + 48 * 60 + 30),       # known before the day: 10:00-18:00, 18:11:30-23:00
    "silent-veteran": 13 * 3600,                           # known before the day, silent all day
    "late-starter": 7 * 3600 + 48 * 60 + 30,               # first seen 15:00: 15:11:30 -> 23:00
    "always-on": 0,
}


def _produce(settings) -> dict[str, int]:
    keepalive, availability = avro_codec(settings, "keepalive"), avro_codec(settings, "availability")
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    records = sorted((t, rid) for rid, ts in PINGS.items() for t in ts)
    for t, rid in records:
        producer.produce(settings.topics.keepalive, key=rid.encode(), timestamp=t,
                         value=keepalive.encode({"restaurant_id": rid, "sent_at": t}))
    producer.produce(settings.topics.keepalive, key=b"broken", value=b"not avro", timestamp=at(DAY, 12))
    for rid in (NEIGHBOUR, STRANGER):  # the later restaurants also change their availability, days later
        when = at(DAYS_LATER, 12, 5)
        producer.produce(settings.topics.availability, key=rid.encode(), timestamp=when, value=availability.encode(
            {"event_id": f"{rid}-e1", "restaurant_id": rid, "kind": "SET_STATUS", "status": "UNAVAILABLE",
             "reason": "CONNECTION_ISSUES", "occurred_at": when}))
    assert producer.flush(30) == 0
    return {"keepalives": len(records), "after_cut_off": len(PINGS[NEIGHBOUR]) + len(PINGS[STRANGER])}


@pytest.fixture(scope="module")
def day_run(module_settings):
    counts = _produce(module_settings)
    track_from = dt.datetime.combine(DAY, dt.time(0), tzinfo=SP).isoformat()
    as_of = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0), tzinfo=SP).isoformat()
    env = {**os.environ, **settings_environment(module_settings),
           "ORDERFLOW_PRESENCE_REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:restaurant:"}
    run = subprocess.run([sys.executable, "-m", "orderflow.pipelines.presence", "--bounded",
                          f"--track_from={track_from}", f"--as_of={as_of}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return counts, run


def test_a_day_charges_each_restaurant_from_its_own_start_never_a_shard_neighbour(day_run, module_settings):
    assert shard_of(NEIGHBOUR, SHARDS) == shard_of("active", SHARDS) != shard_of(STRANGER, SHARDS)
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily"
                            ).fetchall()
        ranking = offline_ranking(conn, DAY, DAY, limit=10)
    assert {(rid, day): seconds for rid, day, seconds in rows} == {(rid, DAY): s for rid, s in EXPECTED.items()}
    assert ranking == sorted(EXPECTED.items(), key=lambda kv: (-kv[1], kv[0]))  # zero included, last


def test_the_run_ends_with_a_summary_and_no_warning(day_run):
    counts, run = day_run
    summary = [line for line in run.stdout.splitlines() if line.startswith("presence pipeline done:")]
    assert len(summary) == 1, run.stdout
    line = summary[0]
    records = counts["keepalives"] + 1 + 2  # + the broken record + the two availability changes
    assert f": {records:,} records, {counts['keepalives']:,} keep-alives, 2 availability changes," in line
    assert f"{counts['after_cut_off']:,} pings after the cut-off" in line
    assert line.endswith("1 dead letters (avro_bad_magic 1)")
    assert "WARNING" not in run.stderr, run.stderr[-3000:]


PRISM = pathlib.Path(__file__).resolve().parents[2] / ".local" / "bin" / "prism"  # `make prism`


def test_a_streaming_run_prints_its_running_summary_periodically(day_run, module_settings):
    # Last in this module: the streaming run evaluates the same restaurants from their first event on.
    if not PRISM.is_file():
        require(False, f"no Prism binary at {PRISM} (make prism): streaming runs on Prism")
    counts, _ = day_run
    env = {**os.environ, **settings_environment(module_settings),
           "ORDERFLOW_PRESENCE_REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:restaurant:"}
    argv = [sys.executable, "-m", "orderflow.pipelines.presence", "--presence_start=earliest",
            "--presence_group_id=summary-test", "--summary_interval_seconds=2", "--runner=PrismRunner",
            f"--prism_location={PRISM}"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    everything = f": {counts['keepalives'] + 3:,} records, {counts['keepalives']:,} keep-alives, 2 availability changes,"
    lines, deadline = [], time.monotonic() + 240
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline and process.poll() is None:
                if selector.select(timeout=1):
                    lines.append(process.stderr.readline())
                    if everything in lines[-1] and sum(" pipeline running " in line for line in lines) >= 2:
                        break
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the process group this test started
        process.wait()
    summaries = [line for line in lines if " presence pipeline running (this worker process): " in line]
    assert len(summaries) >= 2, "".join(lines)[-3000:]  # periodic
    assert everything in summaries[-1], "".join(lines)[-3000:]
    assert summaries[-1].rstrip().endswith("1 dead letters (avro_bad_magic 1)")
