"""``--orders_sinks=kafka`` through the bounded orders pipeline on the real stack (what benchmarks/peers.py
measures): every record is priced to Kafka or dead-lettered with its reason exactly as with every sink, and
nothing reaches Postgres, DynamoDB, the alarms or the SMS outbox."""
from __future__ import annotations

import collections
from decimal import Decimal

import psycopg
import pytest

from orderflow.clients import avro_codec
from orderflow.pipelines import orders as orders_pipeline
from tests.support.orders_scenario import DAY, dynamodb_volumes, pipeline_args, prepare_scenario, read_topic

N = 600


@pytest.fixture(scope="module")
def run(module_settings):
    scenario = prepare_scenario(module_settings, N, seed=15)
    orders_pipeline.run(pipeline_args(scenario.rules, "--orders_sinks=kafka"), settings=module_settings)
    return module_settings, scenario


def test_every_record_is_priced_to_kafka_or_dead_lettered_with_its_reason(run):
    settings, scenario = run
    codec = avro_codec(settings, "priced_orders")
    priced = [codec.decode(value) for _, _, value, *_ in read_topic(settings, settings.topics.priced_orders)]
    dead = read_topic(settings, settings.topics.orders_dead_letter)
    assert len(priced) + len(dead) == N
    reasons = collections.Counter(dict(headers)["dlq.reason"].decode() for *_, headers in dead)
    assert reasons == scenario.expected["reasons"]
    # Duplicates are priced and published too (only the stores recognise them): every record that is not
    # malformed, at its day's price, in exact decimal.
    published = [r for r in scenario.records if r.kind != "malformed"]
    assert len(priced) == len(published)
    assert sum((o["total"] for o in priced), Decimal(0)) == sum(
        (scenario.prices[r.asset][1] * r.quantity for r in published), Decimal(0))
    assert {o["trade_day"] for o in priced} == {DAY}


def test_no_store_alarm_or_sms_is_touched(run):
    settings, _ = run
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM alarms").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sms_outbox").fetchone()[0] == 0
    assert dynamodb_volumes(settings, DAY) == {}
