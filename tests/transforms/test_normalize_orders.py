"""parse_orders over every input model, and NormalizeOrders over Kafka record batches."""
from __future__ import annotations

import datetime

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from orderflow.io.kafka_record import KafkaRecord
from orderflow.transforms.normalize_orders import InvalidOrder, NormalizeOrders, encode_order_avro, parse_orders

TS = 1_763_700_000_000  # a Kafka record timestamp, epoch millis
UTC = datetime.timezone.utc


def test_plain_json_gets_id_from_source_and_time_from_record():
    [order] = parse_orders(b'{"ativo": "wege3", "quantidade": 100, "token": "vitor"}', source="t/1/7",
                           timestamp_ms=TS)
    assert order == {
        "order_id": "t/1/7#0", "client_token": "vitor", "asset": "WEGE3", "quantity": 100,
        "event_time": datetime.datetime.fromtimestamp(TS / 1000, UTC), "source_format": "JSON",
    }


def test_same_record_gets_same_id_and_without_source_id_is_a_digest():
    payload = b'{"ativo": "WEGE3", "quantidade": 1, "token": "a"}'
    assert parse_orders(payload, source="t/0/1")[0]["order_id"] == parse_orders(payload, source="t/0/1")[0]["order_id"]
    assert parse_orders(payload, source="t/0/2")[0]["order_id"] == "t/0/2#0"
    assert parse_orders(payload)[0]["order_id"].startswith("sha256:")


def test_rest_proxy_envelope_with_many_records_and_explicit_ids():
    payload = (b'{"records": [{"value": {"ativo": "PETR4", "quantidade": 5, "token": "x", "id": "o-1"}},'
               b' {"value": {"asset": "VALE3", "quantity": "7", "client_token": "y",'
               b' "timestamp": "2026-11-21T12:00:00Z"}}]}')
    first, second = parse_orders(payload, source="t/0/9", timestamp_ms=TS)
    assert (first["order_id"], first["asset"], first["quantity"], first["source_format"]) == ("o-1", "PETR4", 5, "REST_PROXY")
    assert (second["order_id"], second["client_token"], second["quantity"]) == ("t/0/9#1", "y", 7)
    assert second["event_time"] == datetime.datetime(2026, 11, 21, 12, tzinfo=UTC)


def test_csv_lines_with_header_and_optional_id():
    orders = parse_orders(b"ativo,quantidade,token,order_id\nWEGE3,10,ana,c-1\nITUB4, 3 ,bia\n", source="s", timestamp_ms=TS)
    assert [(o["asset"], o["quantity"], o["client_token"], o["order_id"], o["source_format"]) for o in orders] == [
        ("WEGE3", 10, "ana", "c-1", "CSV"), ("ITUB4", 3, "bia", "s#1", "CSV")]


def test_canonical_avro_round_trip():
    order = {"order_id": "a-1", "client_token": "vitor", "asset": "WEGE3", "quantity": 42,
             "event_time": datetime.datetime(2026, 11, 21, 13, 0, 0, 123000, tzinfo=UTC), "source_format": "AVRO"}
    assert parse_orders(encode_order_avro(order), source="t/0/0") == [order]


@pytest.mark.parametrize("payload, reason", [
    (b"", "unparseable"),
    (b"{not json", "unparseable"),
    (b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00\x00body", "unparseable"),
    (b'{"records": []}', "unparseable"),
    (b'"just a string"', "unparseable"),
    (b"\xff\xfe\x00", "unparseable"),
    (b"WEGE3;10;vitor", "unparseable"),
    (b'{"ativo": "WEGE3", "quantidade": 0, "token": "v"}', "invalid_quantity"),
    (b'{"ativo": "WEGE3", "quantidade": -5, "token": "v"}', "invalid_quantity"),
    (b'{"ativo": "WEGE3", "quantidade": 1.5, "token": "v"}', "invalid_quantity"),
    (b'{"ativo": "WEGE3", "quantidade": true, "token": "v"}', "invalid_quantity"),
    (b"WEGE3,ten,vitor", "invalid_quantity"),
    (b'{"ativo": "WEGE3", "quantidade": 10}', "missing_token"),
    (b'{"ativo": "WEGE3", "quantidade": 10, "token": "  "}', "missing_token"),
    (b'{"quantidade": 10, "token": "v"}', "missing_asset"),
    (b'{"ativo": "WE GE3!", "quantidade": 10, "token": "v"}', "invalid_asset"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "v", "timestamp": "yesterday"}', "invalid_event_time"),
])
def test_invalid_payloads_raise_with_reason(payload, reason):
    with pytest.raises(InvalidOrder) as raised:
        parse_orders(payload, source="t/0/0", timestamp_ms=TS)
    assert raised.value.reason == reason
    assert raised.value.detail


def test_one_bad_order_rejects_the_whole_envelope_naming_its_index():
    payload = b'{"records": [{"value": {"ativo": "A1", "quantidade": 1, "token": "x"}}, {"value": {"ativo": "A1", "quantidade": 0, "token": "x"}}]}'
    with pytest.raises(InvalidOrder, match="order 1"):
        parse_orders(payload)


def test_normalize_orders_batches_and_dead_letters():
    records = [
        KafkaRecord("in", 0, 0, None, b'{"ativo": "WEGE3", "quantidade": 1, "token": "a"}', TS),
        KafkaRecord("in", 0, 1, None, b"garbage line", TS),
        KafkaRecord("in", 0, 2, None, b"PETR4,2,b", TS),
    ]
    with TestPipeline() as p:
        out = p | beam.Create([records]) | NormalizeOrders()
        assert_that(out.orders | beam.Map(lambda batch: sorted((o["order_id"], o["source"]) for o in batch)),
                    equal_to([[("in/0/0#0", "in/0/0#0"), ("in/0/2#0", "in/0/2#0")]]), label="orders")
        assert_that(out.dead_letter | beam.Map(lambda d: (d.reason, d.source, d.payload, d.stage)),
                    equal_to([("unparseable", "in/0/1", b"garbage line", "normalize_orders")]), label="dead")
