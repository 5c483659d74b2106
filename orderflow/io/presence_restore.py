"""What a restarted presence pipeline goes on from: the stores, not a runner's checkpoint.

A streaming presence pipeline resumes reading at its consumer group's committed offsets. Kafka commits a
bundle's offsets once the bundle is done, and by then the same bundle has written its keep-alives to Redis
and its availability changes to the unavailability history (they run fused with the read, before any
grouping). What the runner held downstream, the open session windows and the status evaluation's state and
timers, is gone after a crash, a stop or a redeploy on a runner without checkpoints (Prism; Flink without a
savepoint). ``RestorePresenceState`` reads it back from the stores when the pipeline starts:

- each restaurant's ``TimelineProgress`` (``restaurant_presence_progress``, written with its intervals): its
  timeline is final up to there, and the evaluation goes on from that instant, with a day-close timer
  armed for it (so a restaurant that fell silent before the crash and sends nothing after it still gets
  its offline time and its place in the ranking);
- its sessions that end after that instant, from the Redis hot state (``sessions``, merged there as the
  session windows merge), re-emitted as keep-alive markers (``orderflow.model.presence.session_markers``)
  into the session windows: with the keep-alives read after the committed offsets they form the same
  sessions as if the pipeline had never stopped (a session open across a restart stays one session and
  one online interval);
- its availability in effect at that instant and after, from the unavailability history: each stretch of
  self-set unavailability as SET_STATUS UNAVAILABLE (and AVAILABLE at its end), each abrupt MQTT disconnect as
  DISCONNECTED (and CONNECTED at its end), each schedule as created (and cancelled).

Records after the committed offsets are read again and written again: every sink is idempotent, and a
session or change restored and also read again is the same session or change. Counters (namespace
``RestorePresenceState``): ``restaurants``, ``sessions``, ``availability_changes``.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from orderflow.io.avro import DecodedBatch
from orderflow.io.postgres import connect
from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.presence import (
    AVAILABLE,
    CONNECTED,
    DISCONNECTED,
    SCHEDULE_CANCELLED,
    SCHEDULE_CREATED,
    SET_STATUS,
    UNAVAILABLE,
    AvailabilityChange,
    TimelineProgress,
    session_markers,
    to_ms,
)

__all__ = ["RESTORED_TIMELINES_TAG", "RestorePresenceState", "stored_availability", "stored_progress"]

RESTORED_TIMELINES_TAG = "timelines"
_PINGS_PER_ELEMENT = 5_000

_PROGRESS_SQL = """
SELECT restaurant_id, final_until, first_event, last_input FROM restaurant_presence_progress
WHERE final_until - last_input < make_interval(days => %(max_idle_days)s)
"""
# Stretches and schedules that still matter after the restaurant's final instant (all of them for a restaurant
# not finalised yet).
_AVAILABILITY_SQL = """
SELECT u.restaurant_id, u.schedule_id, u.kind, u.reason, u.starts_at, u.ends_at, u.created_at, u.cancelled_at
FROM restaurant_unavailability u LEFT JOIN restaurant_presence_progress p USING (restaurant_id)
WHERE u.starts_at IS NOT NULL
  AND (p.final_until IS NULL OR coalesce(least(u.ends_at, u.cancelled_at), 'infinity') > p.final_until)
ORDER BY u.restaurant_id, u.starts_at
"""


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def stored_progress(conn, max_idle_days: int = 30) -> dict[str, TimelineProgress]:
    """Each restaurant's stored ``TimelineProgress`` (those idle for ``max_idle_days`` are forgotten, as the
    evaluation forgets them)."""
    return {rid: TimelineProgress(rid, _ms(final), _ms(first), _ms(last))
            for rid, final, first, last in conn.execute(_PROGRESS_SQL, {"max_idle_days": max_idle_days})}


def stored_availability(conn) -> list[AvailabilityChange]:
    """The availability changes a restarted evaluation needs, rebuilt from ``restaurant_unavailability``."""
    changes = []
    for rid, schedule_id, kind, reason, starts, ends, created, cancelled in conn.execute(_AVAILABILITY_SQL):
        if kind == "status":
            changes.append(AvailabilityChange.event(schedule_id, rid, SET_STATUS, _ms(starts), status=UNAVAILABLE,
                                                    reason=reason))
            if ends is not None:
                changes.append(AvailabilityChange.event(f"{schedule_id}:end", rid, SET_STATUS, _ms(ends),
                                                        status=AVAILABLE))
        elif kind == "connection":
            changes.append(AvailabilityChange.event(schedule_id, rid, DISCONNECTED, _ms(starts)))
            if ends is not None:
                changes.append(AvailabilityChange.event(f"{schedule_id}:end", rid, CONNECTED, _ms(ends)))
        else:
            changes.append(AvailabilityChange.event(
                f"{schedule_id}:created", rid, SCHEDULE_CREATED, _ms(created if created is not None else starts),
                schedule_id=schedule_id, reason=reason, starts_at=to_ms(starts), ends_at=to_ms(ends)))
            if cancelled is not None:
                changes.append(AvailabilityChange.event(f"{schedule_id}:cancelled", rid, SCHEDULE_CANCELLED,
                                                        _ms(cancelled), schedule_id=schedule_id))
    return changes


class _ReadStoredPresenceFn(beam.DoFn):
    def __init__(self, dsn: str, redis_url: str, key_prefix: str, gap_ms: int, max_idle_days: int,
                 retry_seconds: float):
        self._dsn, self._redis_url, self._key_prefix = dsn, redis_url, key_prefix
        self._gap, self._max_idle_days, self._retry_seconds = gap_ms, max_idle_days, retry_seconds
        self._restaurants = Metrics.counter("RestorePresenceState", "restaurants")
        self._sessions = Metrics.counter("RestorePresenceState", "sessions")
        self._changes = Metrics.counter("RestorePresenceState", "availability_changes")

    def _read(self):
        with connect(self._dsn) as conn:
            progress = stored_progress(conn, self._max_idle_days)
            changes = stored_availability(conn)
        store = RestaurantStateStore(self._redis_url, key_prefix=self._key_prefix)
        try:
            sessions = list(store.recent_sessions())
        finally:
            store.close()
        return progress, changes, sessions

    def process(self, _impulse) -> Iterator:
        progress, changes, sessions = call_with_retry("the presence state from Postgres and Redis", self._read,
                                                      self._retry_seconds)
        self._restaurants.inc(len({*progress, *(rid for rid, _ in sessions)}))
        for stored in progress.values():
            yield beam.pvalue.TaggedOutput(RESTORED_TIMELINES_TAG,
                                           TimestampedValue(stored, stored.final_until_ms / 1000))
        for change in changes:
            self._changes.inc()
            yield beam.pvalue.TaggedOutput(RESTORED_TIMELINES_TAG, TimestampedValue(change, change.occurred_at / 1000))
        pings: list[dict] = []
        for rid, recent in sessions:
            final = progress[rid].final_until_ms if rid in progress else None
            for start, end in recent:
                if final is not None and end <= final:
                    continue  # already in the stored intervals
                self._sessions.inc()
                pings += ({"restaurant_id": rid, "sent_at": t} for t in session_markers(start, end, self._gap))
            if len(pings) >= _PINGS_PER_ELEMENT:
                yield DecodedBatch(pings)
                pings = []
        if pings:
            yield DecodedBatch(pings)


class RestorePresenceState(beam.PTransform):
    """Reads, once when the pipeline starts, the presence state a restart needs (see the module doc).

    Returns a ``DoOutputsTuple``: the main output, lists of keep-alive dicts (``restaurant_id``, ``sent_at``
    ms) standing for the restored sessions, to flatten into ``KeepaliveSessions``' input; and ``timelines``,
    ``TimelineProgress`` and ``AvailabilityChange`` elements, the ``restored`` input of
    ``RestaurantStatusIntervals``.

    Args:
        dsn: the Postgres of the intervals, their progress and the unavailability history.
        redis_url: the Redis of the hot state.
        key_prefix: prefix of the restaurants' hashes.
        gap_ms: the keep-alive timeout (session gap) the pipeline runs with.
        max_idle_days: restaurants idle this long are not restored (the evaluation forgets them too).
        retry_seconds: how long an unavailable store is retried (``orderflow.io.retry``).
    """

    def __init__(self, dsn: str, redis_url: str, key_prefix: str, gap_ms: int, max_idle_days: int = 30,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._fn = _ReadStoredPresenceFn(dsn, redis_url, key_prefix, gap_ms, max_idle_days, retry_seconds)

    def expand(self, pipeline):
        return (pipeline
                | "Start" >> beam.Impulse()
                | "ReadStores" >> beam.ParDo(self._fn).with_output_types(DecodedBatch).with_outputs(
                    RESTORED_TIMELINES_TAG, main="pings"))
