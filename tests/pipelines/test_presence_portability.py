"""Portability check of the presence pipeline: its portable proto, and a run through Beam's PortableRunner
(in-process job service, SDK worker over the Fn API) on small bounded input from the real local stack.

The input is the presence end-to-end test's generated plan (tests/pipelines/test_presence_pipeline.py) on
200 restaurants instead of 1,000: the generator knows every restaurant's unexplained offline seconds
before the pipeline runs, so the ranking source must match them exactly here too.
"""
from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.pipelines import presence
from orderflow.portability import run_portable
from orderflow_dev.generate.keepalive import make_plan, produce
from tests.support.kafka_testing import stored_records
from tests.support.presence_timeline import planned_keepalives

SP = ZoneInfo("America/Sao_Paulo")
START = dt.datetime(2026, 3, 10, 21, 50, tzinfo=SP)  # 90 minutes across closing time (23:00)
MINUTES = 90
RESTAURANTS = 200
CORRUPT = 3


@pytest.fixture(scope="module")
def portable_run(module_settings):
    settings = module_settings
    plan = make_plan(RESTAURANTS, START, MINUTES, seed=5)
    counts = produce(plan, settings.kafka_bootstrap, settings.topics.keepalive, settings.topics.availability,
                     corrupt=CORRUPT, progress=False)
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    start_iso = dt.datetime.fromtimestamp(plan.start_ms / 1000, dt.timezone.utc).isoformat()
    end_iso = dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc).isoformat()

    def build(pipeline, options):
        presence.build(pipeline, options, settings)

    run = run_portable(build, ["--bounded", f"--track_from={start_iso}", f"--as_of={end_iso}",
                               f"--presence_redis_prefix={prefix}", "--presence_batch_size=500"], check=False)
    return settings, plan, counts, prefix, run


def test_presence_pipeline_runs_portably_with_exact_results(portable_run):
    settings, plan, _, prefix, run = portable_run

    assert run.state == "DONE"
    with psycopg.connect(settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily")
        got = {(rid, day.isoformat()): seconds for rid, day, seconds in rows}
        letters = dict(conn.execute("SELECT reason, count(*) FROM presence_dead_letters GROUP BY reason").fetchall())
    assert len(got) == RESTAURANTS
    assert got == plan.expected()
    assert sum(got.values()) > 0
    assert letters == {"avro_bad_magic": CORRUPT}
    # The run's own counters (from the SDK worker, over the Fn API): every record read is decoded or a dead letter.
    # The expectation from the plan's intent and the broker's own count, never from the generator's loop.
    planned = planned_keepalives(plan)
    keepalives = sum(count for count, _ in planned.values())
    assert stored_records(settings.kafka_bootstrap, settings.topics.keepalive) == keepalives + CORRUPT
    assert run.counters["ReadFromKafka:records"] == keepalives + CORRUPT + len(plan.changes)
    assert run.counters["DecodeAvro:restaurant_keepalive_decoded"] == keepalives
    assert run.counters["DecodeAvailabilityChanges:changes"] == len(plan.changes)
    assert {name.removeprefix("presence:dead_letter_"): n for name, n in run.counters.items()
            if name.startswith("presence:dead_letter_") and n} == letters

    # The hot state written from the SDK worker: every restaurant's last keep-alive.
    last = {rid: t for rid, (_, t) in planned.items()}
    store = RestaurantStateStore(settings.redis_url, key_prefix=prefix)
    got_state = store.statuses(sorted(last), now=dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc))
    assert {rid: v["last_keepalive"] for rid, v in got_state.items()} == {
        rid: dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")
        for rid, t in last.items()}


def test_presence_graph_is_readable_by_flink(portable_run):
    *_, run = portable_run
    # Sessions are standard Sessions windows, state and timers are keyed: nothing Flink cannot rebuild.
    assert run.graph["problems"] == []
    assert run.graph["environments"] == ["beam:env:embedded_python_loopback:v1"]
    assert "beam:requirement:pardo:stateful:v1" in run.graph["requirements"]
