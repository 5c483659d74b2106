"""Idempotent batched writes of priced orders to Postgres, deriving the exactly-once daily volumes.

One SQL statement per batch (the batch goes in as one JSON parameter, encoded by orjson):

1. ``INSERT INTO orders ... ON CONFLICT (order_id) DO NOTHING RETURNING``: only orders never seen before
   become rows; a duplicate never becomes a second row.
2. The rows that were *actually inserted* are summed per (client, day) and added to
   ``client_daily_volume`` in the same statement (every (client, day) of the batch is upserted, with +0
   where nothing was inserted), so the volume counts each order exactly once whatever the duplicates,
   retries and replays: a replayed batch inserts nothing and adds nothing.
3. The upsert returns the absolute volume of every (client, day) of the batch, read under the row lock
   it took. Before the transaction commits, those absolute values are written to DynamoDB
   (``orderflow.io.dynamodb_volume``): writes of one key are thereby serialised in Postgres commit
   order, so DynamoDB never goes back to an older value even when batches of one client run in parallel;
   a crash before the commit replays the batch, which writes the same absolute values again.

4. It also returns the ids of the orders this batch *owns*: inserted now, or inserted earlier by the same
   Kafka record (``source`` coordinates), i.e. a replay of the record that first delivered the order. A
   duplicate delivered by another record is not owned. The orders *inserted now* are added to the alarm
   windows' totals in the same transaction (``orderflow.io.alarm_windows``): each order counts once in
   each of its windows, and an alarm fires in the transaction whose orders make a total cross.

A transaction spans up to ``max_batches`` batches of a bundle (``OrdersWriter``): DynamoDB then gets
each key's latest value once per transaction instead of once per batch, and a failed bundle rolls back
as a whole, which is what the runner retries. (A deadlock between two long transactions is detected by
Postgres; the bundle fails and is retried.)

Last line of defence (the normaliser already refuses what no sink can hold): each batch statement runs
under a savepoint. When Postgres refuses it because of the data (SQLSTATE class 22 data exception, 23
integrity violation, 54 program limit exceeded, e.g. NUL in text or an index row too large), only that
savepoint is rolled back and the batch is halved, each half under its own savepoint, until the refused
orders are alone (``orderflow.io.refusals.write_isolating``); they become dead letters (reason ``postgres_rejected``, the database's message as
detail) and every other order is written. Each part is still one statement inserting orders and adding
what it inserted, so the arguments above hold part by part: nothing refused is counted, nothing written
is counted twice. When DynamoDB answers ``ValidationException`` for a volume item (e.g. a partition key
over 2,048 bytes), the other items are written (``DailyVolumeTable.write``) and the orders this
transaction owns for the refused (client, day) become dead letters (reason ``dynamodb_rejected``); they
stay in Postgres, which holds that client's volume exactly, and a replay of them rewrites the absolute
value once DynamoDB takes it. Counters: ``orders/dead_letter_postgres_rejected``,
``orders/dead_letter_dynamodb_rejected`` and ``orders/dead_letters_sink`` (both).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple

import apache_beam as beam
import orjson
import psycopg
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from orderflow.io.alarm_windows import AlarmWindows
from orderflow.io.postgres import POSTGRES_REJECTED, connect, error_message, is_data_error
from orderflow.io.refusals import write_isolating
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.dead_letter import DEAD_LETTER_TAG, ReasonCounters, Stage
from orderflow.model.orders import OrderBatch, order_dead_letter

__all__ = ["ALARMS_FIRED", "DYNAMODB_REJECTED", "OrdersWriter", "POSTGRES_DUPLICATES", "POSTGRES_REPLAYED",
           "WriteOrdersToPostgres"]

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
ALARMS_FIRED = ("orders", "alarms_fired")
POSTGRES_REPLAYED = ("orders", "postgres_replayed")
POSTGRES_DUPLICATES = ("orders", "postgres_duplicates")

DYNAMODB_REJECTED = "dynamodb_rejected"
# The output of WriteOrdersToPostgres that wakes the SMS relay: the number of messages committed transactions queued.
SMS_QUEUED_TAG = "sms_queued"

_LOG = logging.getLogger(__name__)

_COLUMNS = ("order_id", "client_token", "asset", "quantity", "pricing_code", "price", "total", "event_time",
            "trade_day", "source_format", "source")
_TYPES = ("text", "text", "text", "bigint", "text", "numeric", "numeric", "timestamptz", "date", "text", "text")

UPSERT_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM json_to_recordset(%(orders)s::json)
        AS t({", ".join(f"{c} {t}" for c, t in zip(_COLUMNS, _TYPES, strict=True))})
), inserted AS (
    INSERT INTO orders ({", ".join(_COLUMNS)})
    SELECT {", ".join(_COLUMNS)} FROM input
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id, client_token, trade_day, total
), increments AS (
    SELECT k.client_token, k.trade_day AS day, coalesce(sum(i.total), 0) AS total, count(i.order_id) AS order_count
    FROM (SELECT DISTINCT client_token, trade_day FROM input) k
    LEFT JOIN inserted i ON i.client_token = k.client_token AND i.trade_day = k.trade_day
    GROUP BY k.client_token, k.trade_day
), volumes AS (
    -- Every (client, day) of the batch, +0 where nothing was inserted: the row lock taken here holds
    -- until commit, and RETURNING gives the latest absolute value.
    INSERT INTO client_daily_volume AS v (client_token, day, total, order_count)
    SELECT client_token, day, total, order_count FROM increments ORDER BY client_token, day
    ON CONFLICT (client_token, day) DO UPDATE
        SET total = v.total + EXCLUDED.total, order_count = v.order_count + EXCLUDED.order_count,
            updated_at = CASE WHEN EXCLUDED.order_count > 0 THEN now() ELSE v.updated_at END
    RETURNING client_token, day, total, order_count
)
-- 'inserted' / 'replayed': owned order ids; 'volume': absolute (client, day) volumes. The plain read of
-- orders sees the snapshot from before this statement, so it finds only earlier inserts.
SELECT 'inserted' AS kind, order_id AS key, NULL::date AS day, NULL::numeric AS total, NULL::bigint AS n
FROM inserted
UNION ALL
SELECT 'replayed', i.order_id, NULL, NULL, NULL
FROM input i JOIN orders o ON o.order_id = i.order_id AND o.source = i.source AND i.source <> ''
UNION ALL
SELECT 'volume', client_token, day, total, order_count FROM volumes
"""


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)  # exact: numeric parses the decimal text
    raise TypeError(f"cannot encode {type(value).__name__}")


class Rejected(NamedTuple):
    """An order a sink refused because of its data, with the sink's own message."""

    order: dict
    reason: str   # POSTGRES_REJECTED or DYNAMODB_REJECTED
    message: str


class BatchResult(NamedTuple):
    owned: list[dict]          # orders this batch owns (inserted now, or a replay of the same record)
    inserted: list[dict]       # of those, the orders inserted now (what the alarm windows add)
    volumes: list[tuple]       # absolute (client_token, day, total, order_count) of every key written
    counts: dict[str, int]     # inserted / replayed / duplicates / rejected
    rejected: list[Rejected]   # orders Postgres refused; nothing of them was written


def _statement(conn, batch: list[dict]) -> list[tuple]:
    """Runs the batch statement under a savepoint: if it fails, only this part is rolled back."""
    conn.execute("SAVEPOINT orders_part")
    try:
        payload = orjson.dumps(batch, default=_json_default).decode()
        rows = conn.execute(UPSERT_BATCH_SQL, {"orders": payload}, prepare=True).fetchall()
    except Exception:
        conn.execute("ROLLBACK TO SAVEPOINT orders_part")
        raise
    conn.execute("RELEASE SAVEPOINT orders_part")
    return rows


def _refusal(exc: Exception) -> str | None:
    return error_message(exc) if is_data_error(exc) or isinstance(exc, orjson.JSONEncodeError) else None


def execute_batch(conn, orders: list[dict]) -> BatchResult:
    """Runs the batch statement on ``conn`` inside the caller's transaction (bisecting around refused orders).

    Orders repeated inside the batch keep their first copy.
    """
    unique: dict[str, dict] = {}
    for order in orders:
        unique.setdefault(order["order_id"], order)
    # Sorted so that concurrent batches take the unique-index locks in one order (each part keeps it).
    batch = sorted(unique.values(), key=lambda order: order["order_id"])
    parts, refused = write_isolating(lambda part: _statement(conn, part), batch, _refusal)
    rows = [row for part in parts for row in part]
    rejected = [Rejected(order, POSTGRES_REJECTED, message) for order, message in refused]
    owned_ids, inserted_ids = set(), set()
    volumes = {}  # a later part's value of a key is the newer one
    counts = {"inserted": 0, "replayed": 0, "rejected": len(rejected)}
    for kind, key, day, total, order_count in rows:
        if kind == "volume":
            volumes[(key, day)] = (key, day, total, order_count)
        else:
            owned_ids.add(key)
            if kind == "inserted":
                inserted_ids.add(key)
            counts[kind] += 1
    counts["duplicates"] = len(orders) - counts["inserted"] - counts["replayed"] - len(rejected)
    return BatchResult([order for order in batch if order["order_id"] in owned_ids],
                       [order for order in batch if order["order_id"] in inserted_ids], list(volumes.values()),
                       counts, rejected)


def _refused_orders(refused: list[tuple[tuple, str]], owned_by_key: dict[tuple, list[dict]]) -> list[Rejected]:
    """The owned orders of each volume item DynamoDB refused, with its message."""
    out = []
    for volume, message in refused:
        out += [Rejected(order, DYNAMODB_REJECTED, message) for order in owned_by_key.get((volume[0], volume[1]), [])]
    return out


class WriteResult(NamedTuple):
    owned: list[dict]
    counts: dict[str, int]
    rejected: list[Rejected]  # refused by Postgres in this batch, and by DynamoDB at a commit it triggered


class OrdersWriter:
    """Batches into one Postgres transaction (up to ``max_batches``); volumes to DynamoDB once per commit.

    ``write(orders)`` -> ``WriteResult``; ``commit()`` writes each touched (client, day)'s latest absolute
    volume with ``write_volumes`` while the transaction still holds the rows' locks, then commits, and
    returns the orders of volume items that ``write_volumes`` refused (it returns ``[(volume, message)]``,
    or None); ``rollback()`` discards the transaction (and its pending volumes).

    Outages (``orderflow.io.retry``): a transient error of Postgres or DynamoDB is retried for up to
    ``retry_seconds``. A lost connection loses the open transaction with it, so the retry first replays
    the transaction's batches on a new connection: every statement is idempotent (an order inserted by a
    commit whose answer was lost comes back as ``replayed``, owned by the same record), and the volumes
    are read again under the new locks before DynamoDB gets them. ``transient_retries`` counts attempts.
    """

    def __init__(self, dsn: str, write_volumes: Callable[[list[tuple]], list[tuple[tuple, str]] | None] | None = None,
                 max_batches: int = 20, retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 alarm_windows: AlarmWindows | None = None):
        self.dsn = dsn
        self.alarm_windows = alarm_windows
        self.sms_queued = 0  # SMS queued by committed transactions (the relay has work when this grows)
        self.alarms_fired = 0
        self.write_volumes = write_volumes
        self.max_batches = max_batches
        self.retry_seconds = retry_seconds
        self.transient_retries = 0
        self._conn = None
        self._pending: dict[tuple[str, object], tuple] = {}
        self._owned: dict[tuple[str, object], list[dict]] = {}  # this transaction's owned orders per key
        self._transaction: list[list[dict]] = []  # its batches, replayed if the connection is lost
        self._lost = False  # the connection (and the open transaction with it) failed
        self._fired_queued = [0, 0]  # alarms fired and SMS queued by the open transaction

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        return self._conn

    def start(self) -> None:
        """Brings the stored alarm rules in line with this writer's (``AlarmWindows.sync``), under the outage
        rule; counts what that fired like a commit."""
        if self.alarm_windows is None:
            return
        windows = self.alarm_windows

        def sync():
            try:
                return windows.sync(self._connection())
            except Exception:
                self._drop_connection()
                raise

        changed, fired, queued = call_with_retry("alarm rules to Postgres", sync, self.retry_seconds,
                                                 on_retry=self._on_retry)
        if changed or fired:
            _LOG.info("alarm rules computed again from the stored orders: %s; %d alarms fired, %d SMS queued",
                      ", ".join(changed) or "none", fired, queued)
        self.alarms_fired += fired
        self.sms_queued += queued

    def _execute(self, orders: list[dict]) -> BatchResult:
        conn = self._connection()
        result = execute_batch(conn, orders)
        if self.alarm_windows is not None and result.inserted:
            fired, queued = self.alarm_windows.add(conn, result.inserted)
            self._fired_queued[0] += fired
            self._fired_queued[1] += queued
        for volume in result.volumes:  # later statements of the transaction see newer values
            self._pending[(volume[0], volume[1])] = volume
        for order in result.owned:
            self._owned.setdefault((order["client_token"], order["trade_day"]), []).append(order)
        return result

    def _on_retry(self, exc: BaseException) -> None:
        self.transient_retries += 1
        if isinstance(exc, psycopg.Error):
            self._lost = True

    def _retrying(self, what: str, call: Callable[[], object]):
        """``call()`` with the outage rule; after a Postgres failure, on a new connection with the open
        transaction replayed first (its results were returned already: the replay's are the same)."""
        def attempt():
            if self._lost:
                self._drop_connection()
                self._pending, self._owned, self._fired_queued = {}, {}, [0, 0]
                self._lost = False
                for batch in self._transaction:
                    self._execute(batch)
            return call()

        return call_with_retry(what, attempt, self.retry_seconds, on_retry=self._on_retry)

    def write(self, orders: list[dict]) -> WriteResult:
        result = self._retrying("orders to Postgres", lambda: self._execute(orders))
        self._transaction.append(orders)
        rejected = list(result.rejected)
        if len(self._transaction) >= self.max_batches:
            rejected += self.commit()
        return WriteResult(result.owned, result.counts, rejected)

    def commit(self) -> list[Rejected]:
        if not self._transaction:
            return []

        def write_volumes_and_commit() -> list[Rejected]:
            rejected: list[Rejected] = []
            if self.write_volumes is not None and self._pending:
                refused = self.write_volumes(list(self._pending.values())) or []
                rejected = _refused_orders(refused, self._owned)
            self._connection().commit()
            return rejected

        rejected = self._retrying("daily volumes to DynamoDB and the Postgres commit", write_volumes_and_commit)
        self.alarms_fired += self._fired_queued[0]
        self.sms_queued += self._fired_queued[1]
        self._pending, self._owned, self._transaction, self._fired_queued = {}, {}, [], [0, 0]
        return rejected

    def rollback(self) -> None:
        self._pending, self._owned, self._transaction, self._fired_queued = {}, {}, [], [0, 0]
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection: drop it, the next write reconnects
                self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self.rollback()
            self._drop_connection()


class _WriteBatchFn(beam.DoFn):
    """Runs the writer on one background thread, one batch behind: while Postgres (and, at commits,
    DynamoDB) work on batch k, this thread prices and encodes batch k+1. The owned orders of batch k are
    emitted when batch k+1 arrives, or at the end of the bundle, with batch k's timestamp and window; so
    are the dead letters of the orders a sink refused (those of the bundle's last commit with the last
    batch's timestamp and window)."""

    def __init__(self, dsn: str, volume_table, max_batches_per_transaction: int, retry_seconds: float,
                 alarm_windows: AlarmWindows | None):
        self.dsn = dsn
        self.volume_table = volume_table
        self.alarm_windows = alarm_windows
        self.alarms_fired = Metrics.counter(*ALARMS_FIRED)
        self.sms_queued = Metrics.counter("orders", "sms_queued")
        self.max_batches = max_batches_per_transaction
        self.retry_seconds = retry_seconds
        self.transient_retries = Metrics.counter("orders", "transient_retries")
        self.inserted = Metrics.counter("orders", "postgres_inserted")
        self.replayed = Metrics.counter(*POSTGRES_REPLAYED)
        self.duplicates = Metrics.counter(*POSTGRES_DUPLICATES)
        self.batches = Metrics.counter("orders", "postgres_batches")
        self.dead_letters = Metrics.counter("orders", "dead_letters_sink")
        self.by_reason = ReasonCounters(functools.partial(Metrics.counter, "orders"))

    def setup(self):
        from concurrent.futures import ThreadPoolExecutor

        self._writer = OrdersWriter(self.dsn, self.volume_table.write if self.volume_table is not None else None,
                                    self.max_batches, self.retry_seconds, self.alarm_windows)
        self._retries_counted = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-orders")
        self._thread.submit(self._writer.start).result()
        self._alarms_counted = (0, 0)  # what start() fired and queued is reported with the first bundle

    def start_bundle(self):
        self._in_flight = None  # (future, timestamp, window) of the batch being written
        self._last_batch = None  # (timestamp, window) of the bundle's last batch

    @staticmethod
    def _output(value, timestamp, window, in_process: bool):
        # From process(): the batch's timestamp in the current element's window (every batch of this sink is
        # in one window, the global one); from finish_bundle(), which has no current element, Beam's way is
        # a WindowedValue in the batch's window.
        if in_process:
            return TimestampedValue(value, timestamp)
        from apache_beam.utils.windowed_value import WindowedValue

        return WindowedValue(value, timestamp, (window,))

    def _dead_letters(self, rejected: list[Rejected], timestamp, window, in_process: bool):
        for order, reason, message in rejected:
            self.by_reason.inc(reason)
            self.dead_letters.inc()
            stage = Stage.POSTGRES_ORDERS if reason == POSTGRES_REJECTED else Stage.DYNAMODB_VOLUME
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, self._output(
                order_dead_letter(order, reason, message, stage), timestamp, window, in_process))

    def _collect(self, in_process: bool):
        """Waits for the batch in flight; yields its owned orders and its dead letters, with its timestamp."""
        if self._in_flight is None:
            return
        future, timestamp, window = self._in_flight
        self._in_flight = None
        try:
            owned, counts, rejected = future.result()
        except Exception:
            # The bundle fails and is retried from its start: so must the transaction.
            self._thread.submit(self._writer.rollback).result()
            raise
        finally:
            self._count_retries()
        self.batches.inc()
        self.inserted.inc(counts["inserted"])
        self.replayed.inc(counts["replayed"])
        self.duplicates.inc(counts["duplicates"])
        yield from self._dead_letters(rejected, timestamp, window, in_process)
        yield from self._relay_ticks(timestamp, window, in_process)
        if owned:
            yield self._output(OrderBatch(owned), timestamp, window, in_process)

    def _relay_ticks(self, timestamp, window, in_process: bool):
        """A tick for the SMS relay when committed transactions queued messages since the last one."""
        fired, queued = self._writer.alarms_fired, self._writer.sms_queued
        self.alarms_fired.inc(fired - self._alarms_counted[0])
        self.sms_queued.inc(queued - self._alarms_counted[1])
        if queued > self._alarms_counted[1]:
            yield beam.pvalue.TaggedOutput(SMS_QUEUED_TAG, self._output(
                queued - self._alarms_counted[1], timestamp, window, in_process))
        self._alarms_counted = (fired, queued)

    def _count_retries(self):
        # Counted here, on the bundle's thread: Beam metrics updated on the writer's thread are not reported.
        retries = self._writer.transient_retries
        self.transient_retries.inc(retries - self._retries_counted)
        self._retries_counted = retries

    def process(self, orders, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        previous = list(self._collect(in_process=True))
        self._in_flight = (self._thread.submit(self._writer.write, orders), timestamp, window)
        self._last_batch = (timestamp, window)
        yield from previous

    def finish_bundle(self):
        yield from self._collect(in_process=False)
        try:
            rejected = self._thread.submit(self._writer.commit).result()
        except Exception:
            self._thread.submit(self._writer.rollback).result()
            raise
        finally:
            self._count_retries()
        if rejected:
            yield from self._dead_letters(rejected, *self._last_batch, in_process=False)
        if self._last_batch is not None:
            yield from self._relay_ticks(*self._last_batch, in_process=False)

    def teardown(self):
        thread = getattr(self, "_thread", None)
        if thread is not None:
            try:
                thread.submit(self._writer.close).result()
            except RuntimeError:  # the interpreter is exiting and took the pool first: close from here
                self._writer.close()
            thread.shutdown()


class WriteOrdersToPostgres(beam.PTransform):
    """``list[PricedOrder]`` batches -> Postgres (+ daily volumes to ``volume_table``, + alarm windows).

    Returns a DoOutputsTuple: ``owned`` (``list[PricedOrder]`` per batch, duplicates removed), ``dead_letter``
    (``DeadLetter`` for each order a sink refused because of its data) and ``sms_queued`` (the number of SMS
    that committed transactions queued: ticks for ``orderflow.io.sns_alarms.RelaySmsOutbox``).

    Args:
        dsn: the Postgres database.
        volume_table: a ``orderflow.io.dynamodb_volume.DailyVolumeTable`` (or None: Postgres only).
        max_batches_per_transaction: batches of a bundle one Postgres transaction covers.
        retry_seconds: how long a transient Postgres or DynamoDB error is retried before the bundle fails
          (``orderflow.io.retry``).
        alarm_windows: an ``orderflow.io.alarm_windows.AlarmWindows``: the inserted orders are added to the
          alarm windows' totals in the same transaction, and the rules are synchronised when a worker starts
          (or None: no alarms).
    """

    def __init__(self, dsn: str, volume_table=None, max_batches_per_transaction: int = 20,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS, alarm_windows: AlarmWindows | None = None):
        super().__init__()
        self.dsn = dsn
        self.volume_table = volume_table
        self.max_batches_per_transaction = max_batches_per_transaction
        self.retry_seconds = retry_seconds
        self.alarm_windows = alarm_windows

    def expand(self, batches):
        return batches | "UpsertOrders" >> beam.ParDo(
            _WriteBatchFn(self.dsn, self.volume_table, self.max_batches_per_transaction,
                          self.retry_seconds, self.alarm_windows)).with_output_types(
            OrderBatch).with_outputs(DEAD_LETTER_TAG, SMS_QUEUED_TAG, main="owned")
