"""parse_orders over every input model, and the limits every sink can hold (OrderLimits)."""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys

import pytest

from orderflow.model.orders import InvalidOrder, encode_order_avro, parse_orders

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
    assert parse_orders(payload, source="t/0/1")[0]["order_id"] == "t/0/1#0"
    assert parse_orders(payload, source="t/0/2")[0]["order_id"] == "t/0/2#0"
    assert parse_orders(payload)[0]["order_id"].startswith("sha256:")


# Id-less records without a source (the HTTP API's, a file's): their id is all that deduplicates a record sent
# twice, so it must depend on the payload alone: the same in every call and every process (Python's hash()
# of bytes is not: it is salted per process), different for another payload or another record of it.
_IDLESS = [b'{"ativo": "WEGE3", "quantidade": 1, "token": "a"}', b'{"ativo": "WEGE3", "quantidade": 2, "token": "a"}',
           b"ativo,quantidade,token\nWEGE3,1,a\nWEGE3,1,a\n"]
_PRINT_IDS = ("import sys; from orderflow.model.orders import parse_orders\n"
              "for payload in eval(sys.stdin.read()): print(*(o['order_id'] for o in parse_orders(payload)))")


def _ids_in_a_process(hash_seed: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PRINT_IDS], input=repr(_IDLESS), capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=120, check=True)
    return done.stdout.splitlines()


def test_an_idless_record_has_the_same_id_in_every_call_and_process():
    here = [" ".join(o["order_id"] for o in parse_orders(payload)) for payload in _IDLESS]
    assert here == [" ".join(o["order_id"] for o in parse_orders(payload)) for payload in _IDLESS]
    assert _ids_in_a_process("1") == _ids_in_a_process("2") == here
    single, other, csv = (ids.split() for ids in here)
    assert len(single) == len(other) == 1 and len(csv) == 2
    assert single != other  # another quantity: another order
    assert csv[0] != csv[1]  # two equal lines of one record are two orders
    assert all(re.fullmatch(r"sha256:[0-9a-f]{32}#[0-9]+", order_id) for order_id in [*single, *other, *csv])


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


# -- the limits every sink can hold (OrderLimits) -------------------------------------------------------------
NOW = datetime.datetime(2026, 11, 21, 12, tzinfo=UTC)


def _reason(payload: bytes, **kwargs) -> str:
    with pytest.raises(InvalidOrder) as raised:
        parse_orders(payload, source="t/0/0", timestamp_ms=TS, now=NOW, **kwargs)
    assert raised.value.detail
    return raised.value.reason


@pytest.mark.parametrize("payload, reason", [
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "ana\\u0000"}', "invalid_token"),
    (b"WEGE3,1,an\x00a", "invalid_token"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a\\u0007b"}', "invalid_token"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a\\u0085b"}', "invalid_token"),  # C1 control
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "ana", "order_id": "o\\u00001"}', "invalid_order_id"),
    (b"WEGE3,1,ana,o\x001", "invalid_order_id"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "' + b"x" * 257 + b'"}', "token_too_long"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "' + "é".encode() * 129 + b'"}', "token_too_long"),  # 258 bytes
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "id": "' + b"i" * 3000 + b'"}', "order_id_too_long"),
    (b'{"ativo": "WEGE3", "quantidade": "5_000", "token": "a"}', "invalid_quantity"),
    (b"WEGE3,5_000,a", "invalid_quantity"),
    (b"WEGE3,+5,a", "invalid_quantity"),
    ("WEGE3,١٢,a".encode(), "invalid_quantity"),  # Arabic-Indic digits: int() reads 12
    ('{"ativo": "WEGE3", "quantidade": "٥", "token": "a"}'.encode(), "invalid_quantity"),
    (b"WEGE3,1000000000001,a", "quantity_out_of_range"),
    (b"WEGE3," + b"9" * 5000 + b",a", "quantity_out_of_range"),  # int() would refuse >4300 digits anyway
    (b'{"ativo": "WEGE3", "quantidade": 9223372036854775807, "token": "a"}', "quantity_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1e300, "token": "a"}', "quantity_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": "0001-01-01T00:00:00Z"}', "event_time_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": "0001-01-01T00:00:00+05:00"}',
     "event_time_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": "9999-12-31T23:59:59Z"}', "event_time_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": -62135596800000}', "event_time_out_of_range"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": 1e30}', "invalid_event_time"),
    (b'{"ativo": "WEGE3", "quantidade": 1, "token": "a", "timestamp": "2026-11-22T12:00:01Z"}', "event_time_out_of_range"),
])
def test_values_no_sink_can_hold_are_refused_at_the_edge_with_their_own_reason(payload, reason):
    assert _reason(payload) == reason


def test_avro_orders_are_held_to_the_same_limits():
    order = {"order_id": "a-1", "client_token": "vitor", "asset": "WEGE3", "quantity": 42, "event_time": NOW,
             "source_format": "AVRO"}
    assert parse_orders(encode_order_avro(order), now=NOW)[0]["client_token"] == "vitor"
    assert _reason(encode_order_avro({**order, "client_token": "vi\x00tor"})) == "invalid_token"
    assert _reason(encode_order_avro({**order, "order_id": "a" * 300})) == "order_id_too_long"
    assert _reason(encode_order_avro({**order, "quantity": 2**62})) == "quantity_out_of_range"
    year_one = datetime.datetime(1, 1, 1, tzinfo=UTC)
    assert _reason(encode_order_avro({**order, "event_time": year_one})) == "event_time_out_of_range"


def test_limits_are_inclusive_and_configurable():
    token, order_id = "t" * 256, "é" * 128  # exactly 256 bytes each
    [order] = parse_orders(f"WEGE3,1000000000000,{token},{order_id}".encode(), now=NOW)
    assert (order["client_token"], order["order_id"], order["quantity"]) == (token, order_id, 10**12)
    assert parse_orders(b"WEGE3,007,a", now=NOW)[0]["quantity"] == 7  # ASCII digits, leading zeros are fine
    # The Kafka record timestamp is held to the event-time range like a time in the payload.
    old = int((NOW - datetime.timedelta(days=3661)).timestamp() * 1000)
    with pytest.raises(InvalidOrder, match="outside") as raised:
        parse_orders(b"WEGE3,1,a", timestamp_ms=old, now=NOW)
    assert raised.value.reason == "event_time_out_of_range"
    from orderflow.model.orders import OrderLimits
    wide = OrderLimits(max_key_bytes=4000, max_quantity=5, max_event_age=datetime.timedelta(days=40_000))
    assert parse_orders(b"WEGE3,1,a", timestamp_ms=old, now=NOW, limits=wide)[0]["event_time"].year == 2016
    assert parse_orders(b"WEGE3,5," + b"x" * 3000, now=NOW, limits=wide)[0]["client_token"] == "x" * 3000
    assert _reason(b"WEGE3,6,a", limits=wide) == "quantity_out_of_range"


def test_minted_ids_and_an_avro_order_keeps_its_recorded_input_model():
    payload = b"PETR4,1,a\nVALE3,2,b,given-1\n"
    assert [o["order_id"] for o in parse_orders(payload, source="t/0/1", minted_id_prefix="api-x")] == ["api-x-0", "given-1"]
    order = parse_orders(b'{"ativo": "PETR4", "quantidade": 1, "token": "a"}')[0]
    assert parse_orders(encode_order_avro(order))[0]["source_format"] == "JSON"


def test_under_the_apis_contract_every_error_is_returned_with_the_pipelines_reasons():
    from orderflow.model.orders import InvalidOrders

    body = json.dumps({"records": [
        {"value": {"ativo": "PETR4", "quantidade": 5, "token": "ok"}},
        {"value": {"ativo": "PE TR4", "quantidade": 5, "token": "a"}},
        {"value": {"ativo": "PETR4", "quantidade": -3, "token": "b", "price": 1}},
        {"value": {"ativo": "PETR4", "quantidade": 5, "token": "c\u0000"}},
    ]}).encode()
    with pytest.raises(InvalidOrders) as refused:
        parse_orders(body, contract="REST_PROXY")
    assert [error.loc for error in refused.value.contract_errors] == [
        ("records", 1, "value", "ativo"), ("records", 2, "value", "price"), ("records", 2, "value", "quantidade"),
        ("records", 3, "value", "token")]
    assert [error.reason for error in refused.value.rule_errors] == ["invalid_asset", "invalid_quantity",
                                                                      "invalid_token"]
    assert refused.value.reason == "invalid_asset"  # the first, as a dead letter would carry it
    assert "records.2.value.price: Extra inputs are not permitted" in refused.value.contract_detail


@pytest.mark.parametrize("body, contract, words", [
    (b'{"ativo": "PETR4", "quantidade": "5", "token": "x"}', "JSON", "quantidade: Value error, expected an integer"),
    (b'{"records": [{"value": {"ativo": "PETR4", "quantidade": 1, "token": "x"}}]}', "JSON",
     "records: Extra inputs are not permitted"),
    (b'{"ativo": "PETR4", "quantidade": 1, "token": "x", "event_time": "2026-11-21T12:00:00"}', "JSON",
     "event_time: Value error"),  # no offset: the pipeline reads it as UTC
    (b"PETR4,1,a/b\n", "CSV", "ativo,quantidade,token[,order_id]"),
    (b"PETR4,1,x\n", "AVRO", "Avro single-object encoding"),
])
def test_what_only_the_contract_refuses_has_no_pipeline_reason(body, contract, words):
    """The pipeline takes these (a quantity as text, an envelope's fields, ...); the API's contract does not."""
    from orderflow.model.orders import InvalidOrders

    with pytest.raises(InvalidOrders) as refused:
        parse_orders(body, contract=contract)
    assert refused.value.rule_errors == [] and refused.value.reason == "contract"
    assert words in refused.value.contract_detail


def test_a_body_the_contract_accepts_parses_as_the_pipeline_parses_it():
    body = b'[{"asset": "WEGE3", "quantity": 5.0, "client_token": "c-1", "event_time": 1767225600000}]'
    (order,) = parse_orders(body, contract="JSON", minted_id_prefix="api-x", now=NOW)
    assert order == parse_orders(body, minted_id_prefix="api-x", now=NOW)[0]
    assert (order["order_id"], order["quantity"]) == ("api-x-0", 5)
