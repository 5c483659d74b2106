"""Absolute, monotonic daily-volume writes to real (moto) DynamoDB."""
from __future__ import annotations

from decimal import Decimal

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from orderflow.bootstrap import aws_client
from orderflow.io.dynamodb_volume import WriteDailyVolumeToDynamoDB, write_volumes


def _item(client, table, token, day):
    item = client.get_item(TableName=table, Key={"client_token": {"S": token}, "day": {"S": day}}, ConsistentRead=True)["Item"]
    return Decimal(item["total"]["N"]), int(item["order_count"]["N"]), item["updated_at"]["S"]


def test_newer_values_win_and_stale_ones_are_dropped(module_settings):
    client = aws_client(module_settings, "dynamodb")
    table = module_settings.client_volume_table
    counts = write_volumes(client, table, {("ana", "2026-11-17"): (Decimal("10.750000"), 2),
                                           ("bia", "2026-11-17"): (Decimal("7"), 1)})
    assert counts["written"] == 2
    assert _item(client, table, "ana", "2026-11-17")[:2] == (Decimal("10.75"), 2)
    # A slow retry carrying an older value in the same transaction as a newer one for another key.
    counts = write_volumes(client, table, {("ana", "2026-11-17"): (Decimal("3"), 1),
                                           ("bia", "2026-11-17"): (Decimal("8.000001"), 2)})
    assert (counts["written"], counts["stale"]) == (1, 1)
    assert _item(client, table, "ana", "2026-11-17")[:2] == (Decimal("10.75"), 2)
    assert _item(client, table, "bia", "2026-11-17")[:2] == (Decimal("8.000001"), 2)
    # Rewriting the same absolute value is harmless (idempotent).
    assert write_volumes(client, table, {("bia", "2026-11-17"): (Decimal("8.000001"), 2)})["written"] == 1


def test_transform_coalesces_and_writes_more_than_one_transaction(module_settings):
    volumes = [[(f"c{i:03d}", "2026-11-16", Decimal(i), 1) for i in range(250)],
               [(f"c{i:03d}", "2026-11-16", Decimal(i) * 2, 2) for i in range(0, 250, 2)]]
    with TestPipeline() as p:
        _ = p | beam.Create(volumes) | WriteDailyVolumeToDynamoDB(module_settings)
    client = aws_client(module_settings, "dynamodb")
    table = module_settings.client_volume_table
    assert _item(client, table, "c010", "2026-11-16")[:2] == (Decimal(20), 2)
    assert _item(client, table, "c011", "2026-11-16")[:2] == (Decimal(11), 1)
    assert _item(client, table, "c249", "2026-11-16")[:2] == (Decimal(249), 1)
