"""Daily volumes written to the local DynamoDB (dynalite) under the Postgres row locks: exact and never older."""
from __future__ import annotations

import datetime
import random
import threading
from decimal import Decimal

import psycopg

from orderflow.clients import aws_client, aws_endpoint
from orderflow.io.dynamodb_volume import DailyVolumeTable
from orderflow.io.postgres_orders import OrdersWriter

DAY = datetime.date(2026, 11, 15)


def _table(settings) -> DailyVolumeTable:
    return DailyVolumeTable(aws_endpoint(settings, "dynamodb"), settings.client_volume_table)


def _scan(settings):
    client = aws_client(settings, "dynamodb")
    items = client.scan(TableName=settings.client_volume_table, ConsistentRead=True)["Items"]
    return {(i["client_token"]["S"], i["day"]["S"]): (Decimal(i["total"]["N"]), int(i["order_count"]["N"]))
            for i in items}


def test_write_puts_absolute_exact_items_in_batches(module_settings):
    table = _table(module_settings)
    volumes = [(f"w{i:03d}", "2026-11-14", Decimal("0.000001") * i + 5, i + 1) for i in range(60)]
    assert table.write(volumes) == []  # three BatchWriteItem requests, nothing refused
    items = _scan(module_settings)
    assert items[("w059", "2026-11-14")] == (Decimal("5.000059"), 60)
    assert table.write([("w001", "2026-11-14", Decimal("9.5"), 7)]) == []  # a newer absolute value replaces
    assert _scan(module_settings)[("w001", "2026-11-14")] == (Decimal("9.5"), 7)


def test_parallel_writers_of_the_same_clients_leave_dynamodb_at_the_exact_volumes(module_settings):
    """Four production writers (``OrdersWriter``, one batch per transaction as when streaming) race on the
    same few clients, with orders sent twice across writers; DynamoDB must end exactly at each client's
    volume of its distinct orders, counted here from the batches themselves."""
    clients = ["p-ana", "p-bia", "p-caio"]
    rng = random.Random(3)

    def order(n):
        return {"order_id": f"par-{n}", "client_token": clients[n % 3], "asset": "WEGE3", "quantity": 1 + n % 4,
                "pricing_code": "W", "price": Decimal("1.5"), "total": Decimal("1.5") * (1 + n % 4),
                "event_time": datetime.datetime(2026, 11, 15, 15, tzinfo=datetime.timezone.utc),
                "trade_day": DAY, "source_format": "JSON", "source": f"t/0/{n}#0"}

    numbers = list(range(700)) + rng.sample(range(700), 100)  # 100 orders a second time, by any writer
    rng.shuffle(numbers)
    batches = [[order(n) for n in numbers[i:i + 20]] for i in range(0, len(numbers), 20)]
    errors = []

    def writer(mine):
        orders = OrdersWriter(module_settings.postgres_dsn, _table(module_settings).write, max_batches=1)
        try:
            for batch in mine:
                assert orders.write(batch).rejected == []
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            orders.close()

    threads = [threading.Thread(target=writer, args=(batches[w::4],)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    truth = {}
    for n in set(numbers):
        total, count = truth.get((clients[n % 3], str(DAY)), (Decimal(0), 0))
        truth[(clients[n % 3], str(DAY))] = (total + Decimal("1.5") * (1 + n % 4), count + 1)
    assert sum(n for _, n in truth.values()) == 700
    assert {k: v for k, v in _scan(module_settings).items() if k[0].startswith("p-")} == truth


def test_an_item_dynamodb_refuses_is_bisected_out_and_the_others_are_written(module_settings):
    table = _table(module_settings)
    long_token = "k" * 2100  # DynamoDB's partition key limit is 2,048 bytes
    volumes = [(f"v{i:03d}", "2026-11-16", Decimal(i + 1), 1) for i in range(30)]
    volumes.insert(17, (long_token, "2026-11-16", Decimal(5), 1))
    refused = table.write(volumes)
    assert [volume for volume, _ in refused] == [(long_token, "2026-11-16", Decimal(5), 1)]
    assert "ValidationException" in refused[0][1] and "2048" in refused[0][1]
    items = _scan(module_settings)
    assert {k: v for k, v in items.items() if k[1] == "2026-11-16"} == {
        (f"v{i:03d}", "2026-11-16"): (Decimal(i + 1), 1) for i in range(30)}


def test_orders_of_a_refused_volume_item_become_dead_letters_and_stay_in_postgres(module_settings):
    from orderflow.io.postgres_orders import DYNAMODB_REJECTED

    day = datetime.date(2026, 11, 18)
    long_token = "q" * 2100

    def order(i, client):
        return {"order_id": f"dv-{i}", "client_token": client, "asset": "WEGE3", "quantity": 1,
                "pricing_code": "W", "price": Decimal("2"), "total": Decimal("2"),
                "event_time": datetime.datetime(2026, 11, 18, 15, tzinfo=datetime.timezone.utc), "trade_day": day,
                "source_format": "JSON", "source": f"dv/0/{i}#0"}

    writer = OrdersWriter(module_settings.postgres_dsn, _table(module_settings).write, max_batches=5)
    try:
        writer.write([order(0, "dv-ana"), order(1, long_token)])
        writer.write([order(2, long_token), order(3, "dv-bia")])
        rejected = writer.commit()
    finally:
        writer.close()
    assert sorted(r.order["order_id"] for r in rejected) == ["dv-1", "dv-2"]
    assert {r.reason for r in rejected} == {DYNAMODB_REJECTED} and "2048" in rejected[0].message
    items = {k: v for k, v in _scan(module_settings).items() if k[1] == str(day)}
    assert items == {("dv-ana", str(day)): (Decimal(2), 1), ("dv-bia", str(day)): (Decimal(2), 1)}
    with psycopg.connect(module_settings.postgres_dsn) as conn:  # Postgres holds them, and the exact volume
        assert conn.execute("SELECT order_count FROM client_daily_volume WHERE client_token = %s",
                            (long_token,)).fetchone() == (2,)
