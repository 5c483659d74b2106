"""Per-client daily volume in DynamoDB, written as absolute values that only move forward.

The values come from Postgres (``client_daily_volume``, maintained from the rows each batch actually
inserted, see ``orderflow.io.postgres_orders``), so they are exact whatever the duplicates and replays.
Writing an absolute value is idempotent; writing it with the condition ``order_count <= :new`` (the count
only grows in Postgres) makes the item monotonic when writers race or a slow retry arrives after a newer
value: an older value never overwrites a newer one.

Writes are coalesced per bundle (only the newest value of a key matters) and sent as TransactWriteItems
of up to 100 conditional puts; a put whose condition fails means a newer value is already stored, so it
is dropped and the rest of its transaction is retried.
"""
from __future__ import annotations

import datetime
from decimal import Decimal

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.config import Settings

_MAX_TRANSACTION_ITEMS = 100
_FLUSH_KEYS = 2_000  # flush before the end of a long bundle once this many keys are pending


def _number(value: Decimal | int) -> str:
    text = format(Decimal(value).normalize(), "f")
    return text


def write_volumes(client, table: str, volumes: dict[tuple[str, str], tuple[Decimal, int]]) -> dict[str, int]:
    """Conditionally puts ``{(client_token, day): (total, order_count)}``; returns written / stale counts."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    pending = sorted(volumes.items())
    counts = {"written": 0, "stale": 0, "transactions": 0}
    for start in range(0, len(pending), _MAX_TRANSACTION_ITEMS):
        chunk = pending[start:start + _MAX_TRANSACTION_ITEMS]
        while chunk:
            items = [{"Put": {
                "TableName": table,
                "Item": {"client_token": {"S": token}, "day": {"S": day}, "total": {"N": _number(total)},
                         "order_count": {"N": str(count)}, "updated_at": {"S": now}},
                "ConditionExpression": "attribute_not_exists(order_count) OR order_count <= :count",
                "ExpressionAttributeValues": {":count": {"N": str(count)}},
            }} for (token, day), (total, count) in chunk]
            counts["transactions"] += 1
            try:
                client.transact_write_items(TransactItems=items)
            except client.exceptions.TransactionCanceledException as cancelled:
                reasons = cancelled.response.get("CancellationReasons", [])
                stale = {i for i, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"}
                if not stale:
                    raise  # throttling or conflicts with another transaction: let the runner retry
                counts["stale"] += len(stale)
                chunk = [entry for i, entry in enumerate(chunk) if i not in stale]
                continue
            counts["written"] += len(chunk)
            chunk = []
    return counts


class _WriteVolumes(beam.DoFn):
    def __init__(self, settings: Settings):
        self.settings = settings
        self.written = Metrics.counter("orders", "dynamodb_volumes_written")
        self.stale = Metrics.counter("orders", "dynamodb_volumes_stale")

    def setup(self):
        from orderflow.bootstrap import aws_client

        self._client = aws_client(self.settings, "dynamodb")

    def start_bundle(self):
        self._pending: dict[tuple[str, str], tuple[Decimal, int]] = {}

    def process(self, volumes):
        for token, day, total, count in volumes:
            key = (token, str(day))
            current = self._pending.get(key)
            if current is None or current[1] <= count:
                self._pending[key] = (total, count)
        if len(self._pending) >= _FLUSH_KEYS:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        if self._pending:
            counts = write_volumes(self._client, self.settings.client_volume_table, self._pending)
            self.written.inc(counts["written"])
            self.stale.inc(counts["stale"])
            self._pending = {}


class WriteDailyVolumeToDynamoDB(beam.PTransform):
    """Lists of absolute ``(client_token, day, total, order_count)`` -> ``Settings.client_volume_table``."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def expand(self, volumes):
        return volumes | "PutVolumes" >> beam.ParDo(_WriteVolumes(self.settings))
