"""The outage rule (``orderflow.io.retry``) on real services: which errors are transient, and the orders writer
riding out a Postgres restart in the middle of a transaction, exactly, or giving up when the budget is spent."""
from __future__ import annotations

import datetime
import signal
import threading
import time
from decimal import Decimal

import boto3
import botocore.config
import port_for
import psycopg
import pytest
import redis
from botocore.exceptions import ClientError
from confluent_kafka import KafkaError, KafkaException

from orderflow.clients import aws_client, aws_endpoint
from orderflow.io.dynamodb_volume import DailyVolumeTable
from orderflow.io.postgres_orders import OrdersWriter
from orderflow.io.retry import call_with_retry, is_transient

DAY = datetime.date(2026, 11, 30)
UTC = datetime.timezone.utc

# A retry budget is the feature (docs/testing.md, "Bounds that stay"): the budget spent is checked from below,
# and giving up is bounded from above by this much more, which a loaded machine never needs (a refused
# connection fails at once, the last attempt starts within the budget) and retrying without end exceeds.
BEYOND_THE_BUDGET = 30.0


def _raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the error is what is examined
        return exc
    pytest.fail("no error raised")


# -- classification, on errors the real clients raise -------------------------------------------------------
def test_a_store_that_is_not_there_is_transient():
    port = port_for.select_random()
    assert is_transient(_raised(lambda: psycopg.connect(f"postgresql://x@127.0.0.1:{port}/x", connect_timeout=2)))
    assert is_transient(_raised(lambda: redis.Redis(port=port, socket_connect_timeout=2).ping()))
    dynamodb = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                            aws_access_key_id="x", aws_secret_access_key="x",
                            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2))
    assert is_transient(_raised(lambda: dynamodb.list_tables()))
    assert is_transient(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert is_transient(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)))


def test_data_a_store_refuses_is_not_transient(pg_dsn, module_settings):
    with psycopg.connect(pg_dsn) as conn:
        assert not is_transient(_raised(lambda: conn.execute("SELECT %s::text", ("a\x00b",))))
        conn.rollback()
        assert not is_transient(_raised(lambda: conn.execute("SELECT 1/0")))
        conn.rollback()
    client = redis.Redis.from_url(module_settings.redis_url)
    client.set("a-string", "x")
    assert not is_transient(_raised(lambda: client.hget("a-string", "field")))  # WRONGTYPE
    table = DailyVolumeTable(aws_endpoint(module_settings, "dynamodb"), module_settings.client_volume_table)
    refused = _raised(lambda: aws_client(module_settings, "dynamodb").put_item(
        TableName=module_settings.client_volume_table,
        Item={"client_token": {"S": "k" * 2100}, "day": {"S": "2026-11-30"}}))
    assert isinstance(refused, ClientError) and not is_transient(refused)
    assert table.write([("k" * 2100, DAY, Decimal(1), 1)])  # refused for its data, returned, not raised
    assert not is_transient(KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))
    assert not is_transient(ValueError("not an outage"))


def test_call_with_retry_gives_up_at_once_on_data_and_after_the_budget_on_an_outage():
    calls = []

    def refused():
        calls.append(1)
        raise ValueError("bad data")

    with pytest.raises(ValueError):
        call_with_retry("test", refused, budget_seconds=30)
    assert len(calls) == 1

    port = port_for.select_random()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        call_with_retry("test", lambda: psycopg.connect(f"postgresql://x@127.0.0.1:{port}/x", connect_timeout=1),
                        budget_seconds=2)
    assert 2 <= time.monotonic() - started < 2 + BEYOND_THE_BUDGET


# -- the orders writer across a Postgres restart --------------------------------------------------------------
def _order(i: int, client: str) -> dict:
    return {"order_id": f"outage-{i}", "client_token": client, "asset": "WEGE3", "quantity": 1, "pricing_code": "W",
            "price": Decimal("1.5"), "total": Decimal("1.5") * (i + 1),
            "event_time": datetime.datetime(DAY.year, DAY.month, DAY.day, 15, tzinfo=UTC), "trade_day": DAY,
            "source_format": "JSON", "source": f"t/0/{i}#0"}


@pytest.fixture(scope="module")
def restartable(own_stack):
    stack, settings = own_stack
    return stack, settings


def test_a_postgres_restart_mid_transaction_is_ridden_out_exactly(restartable):
    stack, settings = restartable
    volumes = DailyVolumeTable(aws_endpoint(settings, "dynamodb"), settings.client_volume_table)
    writer = OrdersWriter(settings.postgres_dsn, volumes.write, max_batches=3, retry_seconds=60)
    first = [_order(i, f"c{i % 3}") for i in range(0, 30)]
    second = [_order(i, f"c{i % 3}") for i in range(30, 60)]
    writer.write(first)  # in the open transaction, not committed
    assert stack.stop("postgres", sig=signal.SIGINT) == "stopped"  # fast shutdown: the transaction is lost

    def restart_later():
        time.sleep(3)
        stack.up()

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    started = time.monotonic()
    result = writer.write(second)  # waits for Postgres, replays `first`, then writes `second`
    rejected = writer.commit()
    restarter.join()
    assert time.monotonic() - started >= 3 and writer.transient_retries > 0
    assert rejected == [] and [o["order_id"] for o in result.owned] == sorted(o["order_id"] for o in second)
    expected = {}
    for order in first + second:
        total, n = expected.get(order["client_token"], (Decimal(0), 0))
        expected[order["client_token"]] = (total + order["total"], n + 1)
    with psycopg.connect(settings.postgres_dsn) as conn:
        stored = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE order_id LIKE 'outage-%' GROUP BY 1")}
        daily = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, total, order_count FROM client_daily_volume WHERE day = %s", (DAY,))}
    assert stored == expected and daily == expected
    items = aws_client(settings, "dynamodb").scan(TableName=settings.client_volume_table, ConsistentRead=True)["Items"]
    assert {i["client_token"]["S"]: (Decimal(i["total"]["N"]), int(i["order_count"]["N"])) for i in items
            if i["day"]["S"] == str(DAY)} == expected
    writer.close()


def test_the_writer_fails_when_postgres_stays_down_past_the_budget(restartable):
    stack, settings = restartable
    writer = OrdersWriter(settings.postgres_dsn, None, retry_seconds=3)
    assert stack.stop("postgres", sig=signal.SIGINT) == "stopped"
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            writer.write([_order(100, "late")])
        assert 3 <= time.monotonic() - started < 3 + BEYOND_THE_BUDGET
    finally:
        stack.up()
        writer.close()
