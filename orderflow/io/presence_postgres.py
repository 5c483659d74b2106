"""Batched, idempotent Postgres sinks of the presence pipeline (the offline ranking reads them: ``presence_queries``).

- ``WriteStatusIntervals``: a batch of status intervals is authoritative for the stretch of time it covers
  per restaurant: rows starting inside it are replaced (a row reaching into it from before is cut at its
  start), so a retry, a replay or a re-run over an overlapping period never leaves overlapping rows; then
  the daily aggregate ``restaurant_offline_daily`` of every (restaurant, day) touched is *recomputed* from
  the intervals (not incremented), so it stays exact. One transaction per batch.
- ``WriteUnavailabilityHistory``: ``restaurant_unavailability``, one row per schedule (created, cancelled)
  and one per stretch of status UNAVAILABLE set by the restaurant (opened by SET_STATUS UNAVAILABLE, closed
  by the next SET_STATUS AVAILABLE), and one per abrupt disconnect over MQTT (kind ``connection``, reason
  ``disconnected``: opened by DISCONNECTED, closed by the next CONNECTED).
- ``WritePresenceDeadLetters``: undecodable or invalid input with its reason (``presence_dead_letters``).

Each sink is one SQL statement (or one pipelined ``executemany``) per batch, one transaction per batch.

Last line of defence: when Postgres refuses a batch because of its data (SQLSTATE class 22, 23 or 54, e.g.
NUL in a restaurant id or an index row too large), or a value cannot even be turned into a parameter
(a timestamp beyond year 9999), the batch is bisected, each part in its own transaction, until the refused
records are alone. ``WriteStatusIntervals`` and ``WriteUnavailabilityHistory`` return those records as
``DeadLetter``s (reason ``postgres_rejected``, the database's message as detail, the record as JSON as
payload), which the presence pipeline stores with its other dead letters; everything else is written.
Halves keep the batch's order (intervals by restaurant and start, changes by occurrence), so each part
is written as the whole batch would have been. Counter: ``PresencePostgres/dead_letters``. Dead letters'
text is made storable before it is written (NUL escaped, an over-long source shortened with a digest).

Outages (``orderflow.io.retry``): a transient error (Postgres stopped, restarting, unreachable) is retried
with backoff on a new connection for up to ``retry_seconds``; every batch statement is idempotent, so a
batch whose commit answer was lost is simply written again. Counter: ``PresencePostgres/transient_retries``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.io.postgres import POSTGRES_REJECTED, connect, error_message, is_data_error
from orderflow.io.refusals import write_isolating
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.dead_letter import DeadLetter, Stage
from orderflow.model.presence import (
    CONNECTION_KINDS,
    DISCONNECTED,
    REASON_DISCONNECTED,
    SCHEDULE_CANCELLED,
    SCHEDULE_CREATED,
    SET_STATUS,
    UNAVAILABLE,
    AvailabilityChange,
    StatusInterval,
    TimelineProgress,
    ms_to_datetime,
)

__all__ = ["WritePresenceDeadLetters", "WriteStatusIntervals", "WriteUnavailabilityHistory", "write_dead_letters",
           "write_intervals", "write_unavailability"]

REPLACE_RANGES_SQL = """
WITH ranges AS (
    SELECT * FROM unnest(%(rid)s::text[], %(from)s::timestamptz[], %(to)s::timestamptz[]) AS r(restaurant_id, from_at, to_at)
), deleted AS (
    DELETE FROM restaurant_status_intervals i USING ranges r
    WHERE i.restaurant_id = r.restaurant_id AND i.start_at >= r.from_at AND i.start_at < r.to_at
    RETURNING i.restaurant_id, i.day
), trimmed AS (
    UPDATE restaurant_status_intervals i SET end_at = r.from_at, written_at = now() FROM ranges r
    WHERE i.restaurant_id = r.restaurant_id AND i.start_at < r.from_at AND i.end_at > r.from_at
    RETURNING i.restaurant_id, i.day
)
SELECT restaurant_id, day FROM deleted UNION SELECT restaurant_id, day FROM trimmed
"""

INSERT_INTERVALS_SQL = """
INSERT INTO restaurant_status_intervals AS i (restaurant_id, start_at, end_at, status, reason, day)
SELECT * FROM unnest(%(rid)s::text[], %(start)s::timestamptz[], %(end)s::timestamptz[], %(status)s::text[],
                     %(reason)s::text[], %(day)s::date[])
ON CONFLICT (restaurant_id, start_at) DO UPDATE
    SET end_at = EXCLUDED.end_at, status = EXCLUDED.status, reason = EXCLUDED.reason, day = EXCLUDED.day,
        written_at = now()
"""

# A second statement (same transaction): the first one's rows are visible to it.
RECOMPUTE_DAILY_SQL = """
INSERT INTO restaurant_offline_daily AS d (restaurant_id, day, unexplained_offline_seconds)
SELECT k.restaurant_id, k.day,
       coalesce(round(sum(extract(epoch FROM i.end_at - i.start_at))
                      FILTER (WHERE i.status = 'offline_unexplained')), 0)::bigint
FROM unnest(%(rid)s::text[], %(day)s::date[]) AS k(restaurant_id, day)
LEFT JOIN restaurant_status_intervals i ON i.restaurant_id = k.restaurant_id AND i.day = k.day
GROUP BY k.restaurant_id, k.day
ORDER BY k.restaurant_id, k.day
ON CONFLICT (restaurant_id, day) DO UPDATE SET unexplained_offline_seconds = EXCLUDED.unexplained_offline_seconds
"""

UPSERT_PROGRESS_SQL = """
INSERT INTO restaurant_presence_progress AS p (restaurant_id, final_until, first_event, last_input)
SELECT * FROM unnest(%(rid)s::text[], %(final)s::timestamptz[], %(first)s::timestamptz[], %(last)s::timestamptz[])
ON CONFLICT (restaurant_id) DO UPDATE SET
    final_until = greatest(p.final_until, EXCLUDED.final_until), first_event = least(p.first_event, EXCLUDED.first_event),
    last_input = greatest(p.last_input, EXCLUDED.last_input), written_at = now()
"""

UPSERT_SCHEDULE_SQL = """
INSERT INTO restaurant_unavailability AS u
    (restaurant_id, schedule_id, kind, reason, starts_at, ends_at, created_at, cancelled_at)
VALUES (%(rid)s, %(sid)s, 'schedule', %(reason)s, %(starts)s, %(ends)s, %(created)s, %(cancelled)s)
ON CONFLICT (restaurant_id, schedule_id) DO UPDATE SET
    reason = coalesce(EXCLUDED.reason, u.reason),
    starts_at = coalesce(EXCLUDED.starts_at, u.starts_at),
    ends_at = coalesce(EXCLUDED.ends_at, u.ends_at),
    created_at = coalesce(EXCLUDED.created_at, u.created_at),
    cancelled_at = least(EXCLUDED.cancelled_at, u.cancelled_at)
"""

OPEN_STATUS_SQL = """
INSERT INTO restaurant_unavailability (restaurant_id, schedule_id, kind, reason, starts_at, created_at)
SELECT %(rid)s, %(sid)s, %(kind)s, %(reason)s, %(starts)s, %(starts)s
WHERE NOT EXISTS (  -- already unavailable: the stretch that is open goes on
    SELECT 1 FROM restaurant_unavailability
    WHERE restaurant_id = %(rid)s AND kind = %(kind)s AND starts_at <= %(starts)s
      AND (ends_at IS NULL OR ends_at > %(starts)s))
ON CONFLICT (restaurant_id, schedule_id) DO NOTHING
"""

CLOSE_STATUS_SQL = """
UPDATE restaurant_unavailability SET ends_at = %(ends)s
WHERE restaurant_id = %(rid)s AND kind = %(kind)s AND ends_at IS NULL AND starts_at <= %(ends)s
"""

INSERT_DEAD_LETTERS_SQL = """
INSERT INTO presence_dead_letters (source, stage, reason, detail, payload)
SELECT * FROM unnest(%(source)s::text[], %(stage)s::text[], %(reason)s::text[], %(detail)s::text[],
                     %(payload)s::bytea[])
ON CONFLICT DO NOTHING
"""

def write_intervals(conn, items: list[StatusInterval | TimelineProgress]) -> int:
    """Replaces the stretch each restaurant's intervals cover, recomputes the touched daily aggregates and
    records how far each timeline is final (``TimelineProgress`` items), in one transaction."""
    intervals = [i for i in items if isinstance(i, StatusInterval)]
    progress: dict[str, TimelineProgress] = {}
    for p in items:
        if isinstance(p, TimelineProgress):
            seen = progress.get(p.restaurant_id)
            progress[p.restaurant_id] = p if seen is None or seen.final_until_ms < p.final_until_ms else seen
    latest = {(i.restaurant_id, i.start_ms): i for i in intervals}  # a later version of an interval wins
    batch = [latest[k] for k in sorted(latest)]  # one lock order for concurrent writers
    ranges: dict[str, list[int]] = {}
    for i in batch:
        r = ranges.setdefault(i.restaurant_id, [i.start_ms, i.end_ms])
        r[0], r[1] = min(r[0], i.start_ms), max(r[1], i.end_ms)
    params = {"rid": [i.restaurant_id for i in batch], "start": [ms_to_datetime(i.start_ms) for i in batch],
              "end": [ms_to_datetime(i.end_ms) for i in batch], "status": [i.status for i in batch],
              "reason": [i.reason for i in batch], "day": [i.day for i in batch]}
    days = {(i.restaurant_id, i.day) for i in batch}
    with conn.transaction():
        if batch:
            replaced = conn.execute(REPLACE_RANGES_SQL, {
                "rid": list(ranges), "from": [ms_to_datetime(r[0]) for r in ranges.values()],
                "to": [ms_to_datetime(r[1]) for r in ranges.values()]}).fetchall()
            days.update(replaced)
            conn.execute(INSERT_INTERVALS_SQL, params)
            ordered = sorted(days)
            conn.execute(RECOMPUTE_DAILY_SQL, {"rid": [r for r, _ in ordered], "day": [d for _, d in ordered]})
        if progress:
            marks = [progress[rid] for rid in sorted(progress)]
            conn.execute(UPSERT_PROGRESS_SQL, {
                "rid": [p.restaurant_id for p in marks], "final": [ms_to_datetime(p.final_until_ms) for p in marks],
                "first": [ms_to_datetime(p.first_ms) for p in marks],
                "last": [ms_to_datetime(p.last_input_ms) for p in marks]})
    return len(batch)


def write_unavailability(conn, changes: list[AvailabilityChange]) -> int:
    """Applies availability changes to the unavailability history, in occurred_at order, one transaction."""
    schedule_rows, status_ops = [], []
    for c in sorted(changes, key=lambda c: (c.occurred_at, c.event_id)):
        if c.kind == SCHEDULE_CREATED:
            schedule_rows.append({"rid": c.restaurant_id, "sid": c.schedule_id, "reason": c.reason,
                                  "starts": _dt(c.starts_at), "ends": _dt(c.ends_at), "created": _dt(c.occurred_at),
                                  "cancelled": None})
        elif c.kind == SCHEDULE_CANCELLED:
            schedule_rows.append({"rid": c.restaurant_id, "sid": c.schedule_id, "reason": None, "starts": None,
                                  "ends": None, "created": None, "cancelled": _dt(c.occurred_at)})
        elif c.kind == SET_STATUS or c.kind in CONNECTION_KINDS:
            status_ops.append(c)
    with conn.transaction():
        with conn.cursor() as cur:
            if schedule_rows:
                cur.executemany(UPSERT_SCHEDULE_SQL, schedule_rows)
            for c in status_ops:  # order matters (open, then close); few per batch
                kind, opens, reason = (("connection", c.kind == DISCONNECTED, REASON_DISCONNECTED)
                                       if c.kind in CONNECTION_KINDS else ("status", c.status == UNAVAILABLE, c.reason))
                if opens:
                    cur.execute(OPEN_STATUS_SQL, {"rid": c.restaurant_id, "sid": c.event_id, "kind": kind,
                                                  "reason": reason, "starts": _dt(c.occurred_at)})
                else:
                    cur.execute(CLOSE_STATUS_SQL, {"rid": c.restaurant_id, "kind": kind, "ends": _dt(c.occurred_at)})
    return len(schedule_rows) + len(status_ops)


def _dt(ms: int | None) -> dt.datetime | None:
    return None if ms is None else ms_to_datetime(ms)


# Python-side refusals while turning a record into parameters (e.g. a timestamp past year 9999).
_PARAMETER_ERRORS = (OverflowError, ValueError, OSError)


def _write_isolating_in_transactions(conn, write: Callable[[object, list], int], batch: list) -> tuple[int, list[tuple[object, str]]]:
    """``write(conn, batch)`` in its own transaction; if the data is refused, each half alone, down to single
    records (``write_isolating``). Returns (rows written, ``[(refused record, message)]``)."""
    from psycopg.pq import TransactionStatus

    def write_part(part):
        try:
            return write(conn, part)
        except Exception:
            if conn.info.transaction_status != TransactionStatus.IDLE:  # a transaction block rolls itself back
                conn.rollback()
            raise

    written, refused = write_isolating(write_part, batch, _refusal)
    return sum(written), refused


def _refusal(exc: Exception) -> str | None:
    return error_message(exc) if is_data_error(exc) or isinstance(exc, _PARAMETER_ERRORS) else None


def _json_default(value):
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


class _PostgresBatchFn(beam.DoFn):
    """Holds one connection per DoFn instance; each element is a batch (list) written in one transaction.
    Yields a ``DeadLetter`` for each record Postgres refuses because of its data."""

    def __init__(self, dsn: str, write, counter: str, order: Callable | None = None,
                 source: Callable[[object], str] | None = None, stage: str = "",
                 retry_seconds: float = DEFAULT_RETRY_SECONDS):
        self._dsn = dsn
        self._retry_seconds = retry_seconds
        self._what = counter
        self._retries = Metrics.counter("PresencePostgres", "transient_retries")
        self._write = write
        self._order = order
        self._source = source
        self._stage = stage
        self._rows = Metrics.counter("PresencePostgres", counter)
        self._dead = Metrics.counter("PresencePostgres", "dead_letters")

    def setup(self):
        self._conn = None

    def _write_batch(self, batch):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn)
        return _write_isolating_in_transactions(self._conn, self._write, batch)

    def _reconnect(self, _exc):
        self._retries.inc()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def process(self, batch):
        if not batch:
            return
        batch = sorted(batch, key=self._order) if self._order else list(batch)
        written, refused = call_with_retry(f"presence {self._what} to Postgres",
                                           lambda: self._write_batch(batch), self._retry_seconds,
                                           on_retry=self._reconnect)
        self._rows.inc(written)
        for record, message in refused:
            self._dead.inc()
            payload = json.dumps(record._asdict() if hasattr(record, "_asdict") else record, default=_json_default)
            yield DeadLetter(POSTGRES_REJECTED, message, payload.encode("utf-8", "backslashreplace"),
                             self._source(record) if self._source else "", self._stage)

    def teardown(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


def _batched(pcoll, label: str, min_batch: int, max_batch: int):
    # One SQL statement per batch instead of one per element.
    return pcoll | label >> beam.BatchElements(min_batch_size=min_batch, max_batch_size=max_batch)


def _interval_order(item: StatusInterval | TimelineProgress):
    # A restaurant's progress after its intervals (they end at or before it): bisected halves are written in
    # order, so progress is never stored ahead of the intervals it vouches for.
    if isinstance(item, TimelineProgress):
        return item.restaurant_id, item.final_until_ms, 1
    return item.restaurant_id, item.start_ms, 0


def _interval_source(item: StatusInterval | TimelineProgress) -> str:
    if isinstance(item, TimelineProgress):
        return f"progress:{item.restaurant_id}@{item.final_until_ms}"
    return f"interval:{item.restaurant_id}@{item.start_ms}"


def _change_order(change: AvailabilityChange):
    return change.occurred_at, change.event_id


def _change_source(change: AvailabilityChange) -> str:
    return f"event:{change.event_id}"


class WriteStatusIntervals(beam.PTransform):
    """``StatusInterval`` elements -> ``restaurant_status_intervals`` + ``restaurant_offline_daily``; and
    ``TimelineProgress`` elements (``RestaurantStatusIntervals``' ``progress`` output, flattened in after the
    intervals) -> ``restaurant_presence_progress``, in the same transaction as the intervals before them.

    Returns the ``DeadLetter``s of intervals Postgres refused because of their data.

    Args:
        dsn: the Postgres database.
        max_batch_size: most intervals per statement.
        retry_seconds: how long an unavailable Postgres is retried before the bundle fails.
    """

    def __init__(self, dsn: str, max_batch_size: int = 5000, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._dsn, self._max, self._retry_seconds = dsn, max_batch_size, retry_seconds

    def expand(self, intervals):
        return (_batched(intervals, "Batch", 100, self._max)
                | "Write" >> beam.ParDo(_PostgresBatchFn(self._dsn, write_intervals, "status_intervals",
                                                         _interval_order, _interval_source,
                                                         Stage.POSTGRES_STATUS_INTERVALS,
                                                         self._retry_seconds)))


class WriteUnavailabilityHistory(beam.PTransform):
    """Lists of ``AvailabilityChange`` (one per Kafka batch) -> ``restaurant_unavailability``.

    Returns the ``DeadLetter``s of changes Postgres refused because of their data.

    Args:
        dsn: the Postgres database.
        retry_seconds: how long an unavailable Postgres is retried before the bundle fails.
    """

    def __init__(self, dsn: str, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._dsn, self._retry_seconds = dsn, retry_seconds

    def expand(self, change_batches):
        return change_batches | "Write" >> beam.ParDo(
            _PostgresBatchFn(self._dsn, write_unavailability, "unavailability_changes", _change_order,
                             _change_source, Stage.POSTGRES_UNAVAILABILITY, self._retry_seconds))


_MAX_SOURCE_BYTES = 256  # (source, stage) is a unique index key: far under its 2,704-byte row limit


def _storable(text: str) -> str:
    """Text Postgres can hold: NUL (and lone surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _storable_source(source: str) -> str:
    source = _storable(source)
    if len(source.encode()) <= _MAX_SOURCE_BYTES:
        return source
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    return f"{source.encode()[:180].decode('utf-8', 'ignore')}...sha256:{digest}"


def write_dead_letters(conn, letters: list[DeadLetter]) -> int:
    params = {"source": [_storable_source(d.source) for d in letters], "stage": [_storable(d.stage) for d in letters],
              "reason": [_storable(d.reason) for d in letters], "detail": [_storable(d.detail) for d in letters],
              "payload": [bytes(d.payload) for d in letters]}
    with conn.transaction():
        conn.execute(INSERT_DEAD_LETTERS_SQL, params)
    return len(letters)


class WritePresenceDeadLetters(beam.PTransform):
    """``DeadLetter`` elements -> ``presence_dead_letters`` (idempotent by source coordinates and stage).

    Args:
        dsn: the Postgres database.
        retry_seconds: how long an unavailable Postgres is retried before the bundle fails.
    """

    def __init__(self, dsn: str, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._dsn, self._retry_seconds = dsn, retry_seconds

    def expand(self, letters):
        return (_batched(letters, "Batch", 1, 1000)
                | "Write" >> beam.ParDo(_PostgresBatchFn(self._dsn, write_dead_letters, "dead_letters",
                                                         retry_seconds=self._retry_seconds)))
