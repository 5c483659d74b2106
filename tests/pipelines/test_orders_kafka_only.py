"""``--orders_sinks=kafka`` through the bounded orders pipeline on the real stack (what benchmarks/peers.py
measures): every record is priced to Kafka or dead-lettered with its reason exactly as with every sink, and
nothing reaches Postgres, DynamoDB, the alarms or the SMS outbox.

Schema evolution rides along: orders written with a newer ``Order`` (one more field, with a default) and with
the single-object encoding of before the registry are priced like the others; the priced orders are read by
a newer ``PricedOrder`` reader and by a plain confluent-kafka consumer with ``AvroDeserializer``, as any tool
of the Kafka ecosystem reads them."""
from __future__ import annotations

import collections
import datetime as dt
import json
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from orderflow.clients import avro_codec, schema_registry
from orderflow.model.avro import AvroCodec
from orderflow.model.orders import encode_order_avro
from orderflow.pipelines import orders as orders_pipeline
from tests.support.avro_history import evolved, register_and_encode
from tests.support.kafka_testing import produce
from tests.support.orders_scenario import DAY, dynamodb_volumes, pipeline_args, prepare_scenario, read_topic

N = 600
EVOLVED_AT = dt.datetime(DAY.year, DAY.month, DAY.day, 15, tzinfo=dt.timezone.utc)  # 12:00 in São Paulo
# order_id -> (asset, quantity): written with a newer Order schema (channel, default "web"), and before the registry.
NEWER = {f"evolved-{i}": ("PETR4", 10 + i) for i in range(3)}
BEFORE = {f"single-object-{i}": ("VALE3", 20 + i) for i in range(2)}


def _order(order_id: str, asset: str, quantity: int) -> dict:
    return {"order_id": order_id, "client_token": "evolution", "asset": asset, "quantity": quantity,
            "event_time": EVOLVED_AT, "source_format": "AVRO"}


@pytest.fixture(scope="module")
def run(module_settings):
    scenario = prepare_scenario(module_settings, N, seed=15)
    newer = register_and_encode(module_settings.schema_registry_url, f"{module_settings.topics.orders}-value",
                                evolved("order"), [{**_order(i, *v), "channel": "app"} for i, v in NEWER.items()])
    before = [encode_order_avro(_order(i, *v)) for i, v in BEFORE.items()]
    produce(module_settings.kafka_bootstrap, module_settings.topics.orders,
            [(b"evolution", value, int(EVOLVED_AT.timestamp() * 1000)) for value in newer + before])
    orders_pipeline.run(pipeline_args(scenario.rules, "--orders_sinks=kafka"), settings=module_settings)
    return module_settings, scenario


def test_every_record_is_priced_to_kafka_or_dead_lettered_with_its_reason(run):
    settings, scenario = run
    codec = avro_codec(settings, "priced_orders")
    priced = [codec.decode(value) for _, _, value, *_ in read_topic(settings, settings.topics.priced_orders)]
    dead = read_topic(settings, settings.topics.orders_dead_letter)
    priced = [o for o in priced if o["client_token"] != "evolution"]  # the evolution orders: tested below
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


def test_orders_of_a_newer_schema_and_of_before_the_registry_are_priced_exactly(run):
    settings, scenario = run
    codec = avro_codec(settings, "priced_orders")
    priced = {o["order_id"]: o for o in (codec.decode(v) for _, _, v, *_ in read_topic(settings, settings.topics.priced_orders))
              if o["client_token"] == "evolution"}
    expected = {order_id: scenario.prices[asset][1] * quantity for order_id, (asset, quantity) in {**NEWER, **BEFORE}.items()}
    assert {order_id: o["total"] for order_id, o in priced.items()} == expected


def test_priced_orders_read_with_a_newer_reader_schema_get_the_new_field_s_default(run, tmp_path):
    settings, _ = run
    (tmp_path / "priced_order.avsc").write_text(json.dumps(evolved("priced_order", "desk", "main")))
    newer = AvroCodec("priced_order", tmp_path, registry=schema_registry(settings))
    read = [newer.decode(v) for _, _, v, *_ in read_topic(settings, settings.topics.priced_orders)]
    assert len(read) == N + len(NEWER) + len(BEFORE) - sum(run[1].expected["reasons"].values())
    assert {o["desk"] for o in read} == {"main"}


def test_a_plain_confluent_kafka_consumer_with_avro_deserializer_reads_every_field(run):
    """What Kafka Connect, ksqlDB or Kafka UI do: the registry's URL, the topic, nothing of orderflow."""
    settings, scenario = run
    deserialize = AvroDeserializer(schema_registry(settings).client)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ecosystem-reader",
                         "enable.auto.commit": False})
    topic = settings.topics.priced_orders
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
        ours = avro_codec(settings, "priced_orders")
        expected = {json.dumps(ours.decode(v), default=str, sort_keys=True) for _, _, v, *_ in read_topic(settings, topic)}
        got = set()
        while len(got) < len(expected):
            message = consumer.poll(10)
            assert message is not None, f"{len(got)} of {len(expected)} priced orders read"
            record = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
            assert set(record) == {f["name"] for f in ours.schema["fields"]}
            got.add(json.dumps(record, default=str, sort_keys=True))
    finally:
        consumer.close()
    assert got == expected
