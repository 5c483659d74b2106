"""What a restarted presence pipeline reads back from the stores: progress, the sessions after it, availability."""
from __future__ import annotations

import uuid

import apache_beam as beam
import psycopg
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from orderflow.io.presence_postgres import write_intervals, write_unavailability
from orderflow.io.presence_restore import RestorePresenceState
from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.model.presence import AvailabilityChange, TimelineProgress

GAP = 120_000
T = 1_780_000_000_000  # a whole millisecond instant in 2026


def _change(rid, kind, at, **fields):
    return AvailabilityChange.event(uuid.uuid4().hex, rid, kind, at, **fields)


def test_progress_sessions_after_it_and_availability_come_back(module_settings):
    dsn, prefix = module_settings.postgres_dsn, f"t-{uuid.uuid4().hex[:6]}:"
    store = RestaurantStateStore(module_settings.redis_url, key_prefix=prefix, keepalive_timeout_ms=GAP)
    # 'done' is final up to T + 10 min: its session before that is in the stored intervals, the one after is not.
    store.record_keepalives({"done": [T, T + 60_000], "new": [T + 30_000]})
    store.record_keepalives({"done": [T + 20 * 60_000, T + 21 * 60_000]})
    store.close()
    with psycopg.connect(dsn) as conn:
        write_intervals(conn, [TimelineProgress("done", T + 10 * 60_000, T, T + 3 * 60_000)])
        unavailable = _change("done", "SET_STATUS", T + 5 * 60_000, status="UNAVAILABLE", reason="HOLIDAYS")
        write_unavailability(conn, [
            _change("done", "SET_STATUS", T + 60_000, status="UNAVAILABLE", reason="OLD"),   # over before the final instant
            _change("done", "SET_STATUS", T + 2 * 60_000, status="AVAILABLE"),
            unavailable,                                                                    # open across it
            _change("done", "DISCONNECTED", T + 12 * 60_000),                              # an MQTT will, after it
            _change("new", "SCHEDULE_CREATED", T, schedule_id="s1", reason="HOLIDAYS", starts_at=T + 60_000,
                    ends_at=T + 50 * 60_000),
            _change("new", "SCHEDULE_CANCELLED", T + 40 * 60_000, schedule_id="s1")])

    def ping_times(batches):
        return sorted((p["restaurant_id"], p["sent_at"]) for batch in batches for p in batch)

    with TestPipeline() as p:
        restored = p | RestorePresenceState(dsn, module_settings.redis_url, prefix, GAP)
        # 'done': only the session after its final instant, as markers; 'new' (never final): all of it.
        assert_that(restored.pings | beam.combiners.ToList() | beam.Map(ping_times), equal_to([sorted([
            ("done", T + 20 * 60_000), ("done", T + 21 * 60_000), ("new", T + 30_000)])]), label="pings")
        assert_that(restored.timelines | beam.Map(lambda x: (type(x).__name__, x.restaurant_id, getattr(x, "kind", None),
                                                             getattr(x, "occurred_at", None), getattr(x, "status", None))),
                    equal_to([("TimelineProgress", "done", None, None, None),
                              ("AvailabilityChange", "done", "SET_STATUS", T + 5 * 60_000, "UNAVAILABLE"),
                              ("AvailabilityChange", "done", "DISCONNECTED", T + 12 * 60_000, None),
                              ("AvailabilityChange", "new", "SCHEDULE_CREATED", T, None),
                              ("AvailabilityChange", "new", "SCHEDULE_CANCELLED", T + 40 * 60_000, None)]),
                    label="timelines")
