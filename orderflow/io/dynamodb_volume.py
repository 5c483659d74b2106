"""Per-client daily volume in DynamoDB (``Settings.client_volume_table``), written as absolute values.

Item: ``{client_token: S, day: S 'YYYY-MM-DD', total: N (exact decimal), order_count: N, updated_at: S}``.

The values come from Postgres ``client_daily_volume``, maintained from the rows each batch actually
inserted (``orderflow.io.postgres_orders``), so they are exact whatever the duplicates and replays.
``DailyVolumeTable.write`` is called inside that batch's transaction, while it holds the row locks of
the keys it writes: two batches touching one client write DynamoDB in their Postgres commit order, so
an item never goes back to an older value, and a plain BatchWriteItem (25 puts per request, unprocessed
items retried) is enough: writing an absolute value is idempotent.
"""
from __future__ import annotations

import datetime
import time
from decimal import Decimal

from orderflow.config import Settings

_BATCH_WRITE_ITEMS = 25


def _number(value: Decimal | int) -> str:
    return format(Decimal(value).normalize(), "f")


class DailyVolumeTable:
    """Writes ``(client_token, day, total, order_count)`` tuples as items; picklable (client made lazily)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client = None

    def __getstate__(self):
        return {"settings": self.settings, "_client": None}

    def _dynamodb(self):
        if self._client is None:
            from orderflow.bootstrap import aws_client

            self._client = aws_client(self.settings, "dynamodb")
        return self._client

    def write(self, volumes: list[tuple]) -> int:
        """Puts every volume (BatchWriteItem, 25 per request, unprocessed items retried); returns the count."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        table = self.settings.client_volume_table
        requests = [{"PutRequest": {"Item": {
            "client_token": {"S": token}, "day": {"S": str(day)}, "total": {"N": _number(total)},
            "order_count": {"N": str(count)}, "updated_at": {"S": now}}}}
            for token, day, total, count in volumes]
        client = self._dynamodb()
        for start in range(0, len(requests), _BATCH_WRITE_ITEMS):
            pending = {table: requests[start:start + _BATCH_WRITE_ITEMS]}
            delay = 0.05
            while pending:
                pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or None
                if pending:  # throttled: back off, then send only what was not written
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        return len(requests)
