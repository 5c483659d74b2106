"""Idempotent batched writes of priced orders to Postgres, deriving the exactly-once daily volumes.

One SQL statement per batch, in one transaction:

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
   duplicate delivered by another record is not owned. Windowed alarms aggregate owned orders only, so
   they count each order once, and a replay after a crash (whose window state was lost or rolled back
   with it) counts it again exactly once.
"""
from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

_COLUMNS = ("order_id", "client_token", "asset", "quantity", "pricing_code", "price", "total", "event_time",
            "trade_day", "source_format", "source")
_TYPES = ("text", "text", "text", "bigint", "text", "numeric", "numeric", "timestamptz", "date", "text", "text")

UPSERT_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"%({c})s::{t}[]" for c, t in zip(_COLUMNS, _TYPES, strict=True))})
        AS t({", ".join(_COLUMNS)})
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


def upsert_orders(conn, orders: list[dict], write_volumes: Callable[[list[tuple]], object] | None = None
                  ) -> tuple[list[dict], list[tuple], dict[str, int]]:
    """Runs the batch statement in one transaction on ``conn`` (psycopg, not autocommit).

    ``write_volumes(volumes)`` is called inside the transaction, under the row locks, before the commit
    (see the module docstring). Returns (owned orders, absolute volumes ``(client_token, day, total,
    order_count)``, counts with ``inserted`` / ``replayed`` / ``duplicates``). Orders repeated inside the
    batch keep their first copy.
    """
    unique = {}
    for order in orders:
        unique.setdefault(order["order_id"], order)
    # Sorted so that concurrent batches take the unique-index locks in one order (no deadlocks).
    batch = sorted(unique.values(), key=lambda order: order["order_id"])
    params = {column: [order[column] for order in batch] for column in _COLUMNS}
    owned_ids = set()
    volumes = []
    counts = {"inserted": 0, "replayed": 0}
    with conn.transaction():
        for kind, key, day, total, order_count in conn.execute(UPSERT_BATCH_SQL, params, prepare=True):
            if kind == "volume":
                volumes.append((key, day, total, order_count))
            else:
                owned_ids.add(key)
                counts[kind] += 1
        if write_volumes is not None and volumes:
            write_volumes(volumes)
    counts["duplicates"] = len(orders) - counts["inserted"] - counts["replayed"]
    return [order for order in batch if order["order_id"] in owned_ids], volumes, counts


class _WriteBatch(beam.DoFn):
    def __init__(self, dsn: str, volume_table):
        self.dsn = dsn
        self.volume_table = volume_table
        self.inserted = Metrics.counter("orders", "postgres_inserted")
        self.replayed = Metrics.counter("orders", "postgres_replayed")
        self.duplicates = Metrics.counter("orders", "postgres_duplicates")
        self.batches = Metrics.counter("orders", "postgres_batches")

    def setup(self):
        self._conn = None

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn)
        return self._conn

    def process(self, orders):
        import psycopg

        try:
            owned, volumes, counts = upsert_orders(
                self._connection(), orders, self.volume_table.write if self.volume_table is not None else None)
        except psycopg.OperationalError:
            # A broken connection: drop it and let the runner retry the bundle (the statement is idempotent).
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise
        self.batches.inc()
        self.inserted.inc(counts["inserted"])
        self.replayed.inc(counts["replayed"])
        self.duplicates.inc(counts["duplicates"])
        if owned:
            yield owned

    def teardown(self):
        if getattr(self, "_conn", None) is not None:
            self._conn.close()


class WriteOrdersToPostgres(beam.PTransform):
    """``list[PricedOrder]`` batches -> Postgres (+ daily volumes to ``volume_table``); emits owned orders.

    ``volume_table``: a ``orderflow.io.dynamodb_volume.DailyVolumeTable`` (or None: Postgres only). The
    output (``list[PricedOrder]`` per batch, duplicates removed) feeds the windowed alarms.
    """

    def __init__(self, dsn: str, volume_table=None):
        super().__init__()
        self.dsn = dsn
        self.volume_table = volume_table

    def expand(self, batches):
        return batches | "UpsertOrders" >> beam.ParDo(_WriteBatch(self.dsn, self.volume_table))
