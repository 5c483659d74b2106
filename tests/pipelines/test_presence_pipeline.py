"""End to end on the local stack: 1,000 generated restaurants through the bounded presence pipeline.

The generator plans outages, schedules (kept and cancelled), self-set unavailability and restaurants that
disappear, so every restaurant's unexplained offline seconds are known before the pipeline runs; the
ranking read back from Postgres must match them exactly.
"""
from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import apache_beam as beam
import psycopg
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from confluent_kafka import Producer

from orderflow.clients import avro_codec, schema_registry
from orderflow.io.presence_queries import offline_ranking
from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.pipelines import presence
from orderflow.pipelines.summary import counters
from orderflow_dev.generate.keepalive import make_plan, produce
from tests.support.kafka_testing import stored_records
from tests.support.presence_timeline import planned_keepalives

SP = ZoneInfo("America/Sao_Paulo")
START = dt.datetime(2026, 3, 10, 21, 50, tzinfo=SP)  # 90 minutes across closing time (23:00)
MINUTES = 90
CORRUPT = 7


@pytest.fixture(scope="module")
def run(module_settings):
    plan = make_plan(1000, START, MINUTES, seed=11)
    counts = produce(plan, module_settings.kafka_bootstrap, module_settings.topics.keepalive,
                     module_settings.topics.availability, corrupt=CORRUPT, progress=False,
                     registry=schema_registry(module_settings))
    # An availability event that decodes but is invalid (SET_STATUS without a status): a dead letter.
    producer = Producer({"bootstrap.servers": module_settings.kafka_bootstrap})
    producer.produce(module_settings.topics.availability, key=b"rest-00000", value=avro_codec(
        module_settings, "availability").encode({"event_id": "bad-1", "restaurant_id": "rest-00000", "kind": "SET_STATUS",
                                           "occurred_at": plan.start_ms + 1000}))
    assert producer.flush(10) == 0
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    start_iso = dt.datetime.fromtimestamp(plan.start_ms / 1000, dt.timezone.utc).isoformat()
    end_iso = dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc).isoformat()
    result = presence.run(["--bounded", f"--track_from={start_iso}", f"--as_of={end_iso}",
                           f"--presence_redis_prefix={prefix}", "--presence_batch_size=5000"], settings=module_settings)
    return plan, counts, prefix, result


def test_unexplained_offline_seconds_match_the_plan_exactly(run, module_settings):
    plan, _, _, _ = run
    expected = plan.expected()
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily").fetchall()
        got = {(rid, day.isoformat()): seconds for rid, day, seconds in rows}
        ranking = offline_ranking(conn, START.date(), START.date(), limit=20)
    assert len(got) == 1000
    assert got == expected
    assert sum(expected.values()) > 0 and sum(1 for v in expected.values() if v == 0) > 100
    expected_top = sorted(((rid, s) for (rid, _), s in expected.items()), key=lambda x: (-x[1], x[0]))[:20]
    assert ranking == expected_top


def test_intervals_cover_the_open_part_of_the_period_without_overlap(run, module_settings):
    plan, _, _, _ = run
    open_ms = (dt.datetime(2026, 3, 10, 23, tzinfo=SP).timestamp() - START.timestamp()) * 1000  # 21:50 -> 23:00
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, start_at, end_at, status FROM restaurant_status_intervals "
                            "ORDER BY restaurant_id, start_at").fetchall()
    by = {}
    for rid, start, end, status in rows:
        by.setdefault(rid, []).append((start, end, status))
    assert len(by) == 1000
    for rid, intervals in by.items():
        assert all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:], strict=False)), rid
        total = sum((e - s).total_seconds() for s, e, _ in intervals) * 1000
        assert total == open_ms, rid
        assert max(e for _, e, _ in intervals) <= dt.datetime(2026, 3, 10, 23, tzinfo=SP)
    statuses = {status for intervals in by.values() for _, _, status in intervals}
    assert statuses == {"online", "offline_scheduled", "offline_unexplained"}


def read_counters(result, step_prefix: str) -> int:
    """``ReadFromKafka/records`` of the read whose step label starts with ``step_prefix``."""
    found = result.metrics().query(MetricsFilter().with_namespace("ReadFromKafka").with_name("records"))["counters"]
    return sum(c.committed for c in found if c.key.step.startswith(step_prefix))


def test_records_in_equal_records_out_plus_dead_letters(run, module_settings):
    """The pipeline's own counters against the plan: every record read was decoded or dead-lettered."""
    plan, _, _, result = run
    # The expectation from the plan's intent and the broker's own count, never from the generator's loop.
    keepalives = sum(count for count, _ in planned_keepalives(plan).values())
    assert stored_records(module_settings.kafka_bootstrap, module_settings.topics.keepalive) == keepalives + CORRUPT
    got = counters(result)
    keepalive_records, availability_records = read_counters(result, "ReadKeepalives"), read_counters(
        result, "ReadAvailability")
    assert keepalive_records == keepalives + CORRUPT
    assert availability_records == len(plan.changes) + 1
    assert got["DecodeAvro/restaurant_keepalive_decoded"] == keepalives
    assert got["DecodeAvailabilityChanges/changes"] == len(plan.changes)
    dead = {name.removeprefix("presence/dead_letter_"): n for name, n in got.items()
            if name.startswith("presence/dead_letter_") and n}
    assert dead == {"avro_bad_magic": CORRUPT, "missing_status": 1}
    assert got["ReadFromKafka/records"] == (got["DecodeAvro/restaurant_keepalive_decoded"]
                                            + got["DecodeAvailabilityChanges/changes"] + sum(dead.values()))
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        letters = conn.execute("SELECT reason, count(*) FROM presence_dead_letters GROUP BY reason").fetchall()
    assert dict(letters) == dead


def test_unavailability_history(run, module_settings):
    plan, _, _, _ = run
    schedules = {c["schedule_id"] for c in plan.changes if c["kind"] == "SCHEDULE_CREATED"}
    cancelled = {c["schedule_id"] for c in plan.changes if c["kind"] == "SCHEDULE_CANCELLED"}
    unavailable = [c for c in plan.changes if c["kind"] == "SET_STATUS" and c["status"] == "UNAVAILABLE"]
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT schedule_id, kind, cancelled_at IS NOT NULL, ends_at IS NOT NULL "
                            "FROM restaurant_unavailability").fetchall()
    assert {r[0] for r in rows if r[1] == "schedule"} == schedules
    assert {r[0] for r in rows if r[1] == "schedule" and r[2]} == cancelled
    status_rows = [r for r in rows if r[1] == "status"]
    assert len(status_rows) == len(unavailable) and all(r[3] for r in status_rows)  # each closed by AVAILABLE


def test_hot_state_in_redis(run, module_settings):
    plan, _, prefix, _ = run
    last = {rid: t for rid, (_, t) in planned_keepalives(plan).items()}
    store = RestaurantStateStore(module_settings.redis_url, key_prefix=prefix)
    at_end = dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc)
    got = store.statuses([r.restaurant_id for r in plan.restaurants], now=at_end)
    assert {rid: v["last_keepalive"] for rid, v in got.items()} == {
        rid: dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")
        for rid, t in last.items()}
    # 23:20 local: closed, so everyone is offline; restaurants gone for two minutes or more also lack a
    # keep-alive.
    assert all("outside_opening_hours" in v["reasons"] for v in got.values())
    silent = {rid for rid, t in last.items() if plan.end_ms - t >= plan.gap_ms}
    assert silent and silent <= {r.restaurant_id for r in plan.restaurants if r.gone_after is not None}
    assert {rid for rid, v in got.items() if "no_keepalive" in v["reasons"]} == silent


def test_streaming_keepalives_meet_no_flatten_before_their_session_grouping():
    """On Prism the step after a Flatten starts a stage of its own, and a Flatten input whose coder differs from
    the output's gets one too: one more bundle (and a crossing through the runner) per bundle read. The decoded
    keep-alives are merged into session markers in the stage that reads them, and every Flatten of the pipeline
    takes inputs of its output's coder."""
    options = PipelineOptions(["--streaming"])
    pipeline = beam.Pipeline(options=options)
    presence.build(pipeline, options)  # streaming from the committed offsets: with the restored sessions
    components = pipeline.to_runner_api().components
    steps = [t for t in components.transforms.values() if not t.subtransforms]
    flattens = [t for t in steps if t.spec.urn == common_urns.primitives.FLATTEN.urn]
    assert {f.unique_name for f in flattens} >= {"Sessions/SessionMarkersTogether", "Status/Together"}
    for flatten in flattens:
        (output,) = flatten.outputs.values()
        input_coders = {components.pcollections[p].coder_id for p in flatten.inputs.values()}
        assert input_coders == {components.pcollections[output].coder_id}, flatten.unique_name
    (markers,) = (f.outputs["None"] for f in flattens if f.unique_name == "Sessions/SessionMarkersTogether")
    assert [t.unique_name for t in steps if markers in t.inputs.values()] == ["Sessions/GroupSessions"]
    (decoded,) = (t.outputs["None"] for t in steps if t.unique_name.startswith("DecodeKeepalives/"))
    assert sorted(t.unique_name for t in steps if decoded in t.inputs.values()) == [
        "KeepalivesToRedis/ParDo(_RecordKeepalivesFn)", "Sessions/SessionMarkers[0]/MergePingsPerRestaurant",
        "Summary[DecodeAvro/restaurant_keepalive_decoded]"]
