"""Per-client daily volume in DynamoDB (``Settings.client_volume_table``), written as absolute values.

Item: ``{client_token: S, day: S 'YYYY-MM-DD', total: N (exact decimal), order_count: N, updated_at: S}``.

The values come from Postgres ``client_daily_volume``, maintained from the rows each batch actually
inserted (``orderflow.io.postgres_orders``), so they are exact whatever the duplicates and replays.
``DailyVolumeTable.write`` is called inside that batch's transaction, while it holds the row locks of
the keys it writes: two batches touching one client write DynamoDB in their Postgres commit order, so
an item never goes back to an older value, and a plain BatchWriteItem (25 puts per request, unprocessed
items retried) is enough: writing an absolute value is idempotent. An item DynamoDB refuses because of
its data (``ValidationException``) is found by bisecting its request and returned to the caller with
DynamoDB's message; the other items are written.
"""
from __future__ import annotations

import datetime
import time
from decimal import Decimal

from orderflow.clients import AwsEndpoint
from orderflow.io.refusals import write_isolating

__all__ = ["DailyVolumeTable"]

_BATCH_WRITE_ITEMS = 25


def _number(value: Decimal | int) -> str:
    return format(Decimal(value).normalize(), "f")


class DailyVolumeTable:
    """Writes ``(client_token, day, total, order_count)`` tuples as items; picklable (client made lazily).

    Args:
        dynamodb: where DynamoDB is (``orderflow.clients.aws_endpoint(settings, "dynamodb")``).
        table: the table (``Settings.client_volume_table``).
    """

    def __init__(self, dynamodb: AwsEndpoint, table: str):
        self.dynamodb = dynamodb
        self.table = table
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    def _dynamodb(self):
        if self._client is None:
            self._client = self.dynamodb.client()
        return self._client

    def write(self, volumes: list[tuple]) -> list[tuple[tuple, str]]:
        """Puts every volume (BatchWriteItem, 25 per request, unprocessed items retried).

        Returns the volumes DynamoDB refused because of their data (``ValidationException``, e.g. a
        partition key over 2,048 bytes) with its message: a refused request is bisected until the refused
        items are alone, and every other item is written (absolute values: writing one twice is harmless).
        """
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        requests: list[tuple[dict, tuple]] = [({"PutRequest": {"Item": {
            "client_token": {"S": token}, "day": {"S": str(day)}, "total": {"N": _number(total)},
            "order_count": {"N": str(count)}, "updated_at": {"S": now}}}}, (token, day, total, count))
            for token, day, total, count in volumes]
        refused: list[tuple[tuple, str]] = []
        for start in range(0, len(requests), _BATCH_WRITE_ITEMS):
            _, refused_part = write_isolating(self._put, requests[start:start + _BATCH_WRITE_ITEMS], self._refusal)
            refused += [(volume, message) for (_, volume), message in refused_part]
        return refused

    @staticmethod
    def _refusal(exc: Exception) -> str | None:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "ValidationException":
            return f"DynamoDB ValidationException: {exc.response['Error'].get('Message')}"
        return None

    def _put(self, requests: list[tuple[dict, tuple]]) -> None:
        client = self._dynamodb()
        pending: dict | None = {self.table: [request for request, _ in requests]}
        delay = 0.05
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or None
            if pending:  # throttled: back off, then send only what was not written
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
