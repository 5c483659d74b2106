"""Confluent REST Proxy v2 produce compatibility: the seed's own request, sent with curl, works unchanged
(behind an API key), and every answer, errors included, is in REST Proxy's shape; the Avro embedded format
registers the request's schema under the topic's subject and answers its id."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from orderflow.clients import avro_codec, schema_registry
from orderflow.model.avro import load_schema
from tests.support.avro_history import evolved, order_with_quantity_as_text
from tests.support.environment import require
from tests.support.kafka_check import count_records, read_at

V2 = "application/vnd.kafka.v2+json"
JSON_V2 = "application/vnd.kafka.json.v2+json"
AVRO_V2 = "application/vnd.kafka.avro.v2+json"


def _curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    done = subprocess.run(["curl", "-sS", "-i", *args], capture_output=True, timeout=60, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_the_seed_request_sent_with_curl_is_produced(api):
    require(shutil.which("curl") is not None, "curl not installed")
    key = api.key("ingest")
    topic = api.settings.topics.orders  # ordem-ativo, suffixed per test module
    # The request of the issue, word for word, plus the API key it now needs.
    status, headers, body = _curl(
        "-XPOST", f"{api.url}/topics/{topic}", "-H", "Accept: application/vnd.kafka.v2+json",
        "-H", "Content-Type: application/vnd.kafka.json.v2+json",
        "-d", '{"records":[{"value":{"ativo":"WEGE3","quantidade":100,"token":"vitor"}}]}',
        "-H", f"X-API-Key: {key}")
    assert status == 200, body
    assert headers["content-type"] == V2
    answer = json.loads(body)
    assert set(answer) == {"offsets", "key_schema_id", "value_schema_id"}
    assert answer["key_schema_id"] is None and answer["value_schema_id"] is None
    (offset,) = answer["offsets"]
    assert set(offset) == {"partition", "offset", "error_code", "error"}
    assert offset["error_code"] is None and offset["error"] is None
    msg = read_at(api.settings.kafka_bootstrap, topic, offset["partition"], offset["offset"])
    assert msg.key() == b"vitor"
    order = avro_codec(api.settings, "orders").decode(msg.value())
    assert (order["asset"], order["quantity"], order["client_token"], order["source_format"]) == (
        "WEGE3", 100, "vitor", "REST_PROXY")


def test_several_records_answer_one_offset_each_in_order(api, ingester):
    records = [{"value": {"ativo": "PETR4", "quantidade": i + 1, "token": f"rp-{i}"}, "key": f"k{i}"} for i in range(5)]
    resp = ingester.post(f"/topics/{api.settings.topics.orders}", content=json.dumps({"records": records}),
                         headers={"Content-Type": JSON_V2})  # no Accept: REST Proxy's default
    assert resp.status_code == 200, resp.text
    offsets = resp.json()["offsets"]
    assert len(offsets) == 5
    landed = [avro_codec(api.settings, "orders").decode(read_at(api.settings.kafka_bootstrap, api.settings.topics.orders, o["partition"],
                                   o["offset"]).value()) for o in offsets]
    assert [(o["client_token"], o["quantity"]) for o in landed] == [(f"rp-{i}", i + 1) for i in range(5)]


def _post(client, path, body, content_type=JSON_V2, accept=V2):
    return client.post(path, content=body if isinstance(body, bytes) else json.dumps(body),
                       headers={"Content-Type": content_type, "Accept": accept})


ONE = {"records": [{"value": {"ativo": "WEGE3", "quantidade": 1, "token": "vitor"}}]}


def _assert_refused(api, post, status: int, error_code: int, words: str) -> None:
    """``post()`` is answered ``status`` with REST Proxy's error body (``error_code``, a message with ``words``),
    and nothing reached the orders topic."""
    topic, partitions = api.settings.topics.orders, api.settings.topic_partitions
    before = count_records(api.settings.kafka_bootstrap, topic, partitions)
    resp = post()
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == V2
    answer = resp.json()
    assert set(answer) == {"error_code", "message"} and answer["error_code"] == error_code, answer
    assert words in answer["message"]
    assert count_records(api.settings.kafka_bootstrap, topic, partitions) == before


@pytest.mark.parametrize("case, status, error_code, words", [
    ("no key", 401, 40101, "missing API key"),
    ("read-only key", 403, 40301, "ingest"),
    ("other topic", 404, 40401, "Topic not found"),
    ("binary embedded format", 415, 415, "application/vnd.kafka.json.v2+json"),
    ("not acceptable", 406, 406, "Not Acceptable"),
    ("invalid order", 422, 422, "quantidade"),
    ("unknown field", 422, 422, "value_schema: Extra inputs are not permitted"),
    ("partition", 422, 422, "partition: Extra inputs are not permitted"),
    ("not JSON", 422, 422, "Invalid JSON"),
])
def test_errors_are_rest_proxy_error_bodies_and_nothing_is_produced(api, anonymous, case, status, error_code, words):
    topic = api.settings.topics.orders
    path, body, content_type, accept, key = f"/topics/{topic}", ONE, JSON_V2, V2, api.key("ingest")
    if case == "no key":
        key = None
    elif case == "read-only key":
        key = api.key("read")
    elif case == "other topic":
        path = f"/topics/{api.settings.topics.keepalive}"
    elif case == "binary embedded format":
        content_type = "application/vnd.kafka.binary.v2+json"
    elif case == "not acceptable":
        accept = "text/html"
    elif case == "invalid order":
        body = {"records": [{"value": {"ativo": "WEGE3", "quantidade": 0, "token": "vitor"}}]}
    elif case == "unknown field":
        body = {**ONE, "value_schema": "{}"}
    elif case == "partition":
        body = {"records": [{"value": ONE["records"][0]["value"], "partition": 2}]}
    elif case == "not JSON":
        body = b"{records"
    with api.client(key) as client:
        _assert_refused(api, lambda: _post(client, path, body, content_type, accept), status, error_code, words)


def _avro_order(order_id: str, quantity: int = 5, **extra) -> dict:
    """An Order value in Avro's JSON encoding (the event time in epoch milliseconds)."""
    return {"order_id": order_id, "client_token": "vitor", "asset": "WEGE3", "quantity": quantity,
            "event_time": 1_767_000_000_000, "source_format": "AVRO", **extra}


def test_avro_with_a_value_schema_registers_it_and_answers_its_id(api, ingester):
    topic = api.settings.topics.orders
    schema = json.dumps(evolved("order"))  # a newer producer's Order: one more field, with a default
    body = {"value_schema": schema, "records": [{"value": _avro_order("rp-avro-1", channel="rest")},
                                                {"value": _avro_order("rp-avro-2", 7)}]}
    resp = _post(ingester, f"/topics/{topic}", body, AVRO_V2)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    latest = schema_registry(api.settings).client.get_latest_version(f"{topic}-value")
    assert answer["value_schema_id"] == latest.schema_id and answer["key_schema_id"] is None
    assert json.loads(latest.schema.schema_str)["fields"][-1]["name"] == "channel"
    landed = [read_at(api.settings.kafka_bootstrap, topic, o["partition"], o["offset"]) for o in answer["offsets"]]
    assert all(m.value()[:5] == b"\x00" + latest.schema_id.to_bytes(4, "big") for m in landed)
    orders = [avro_codec(api.settings, "orders").decode(m.value()) for m in landed]  # as the pipeline reads them
    assert [(o["order_id"], o["quantity"], o["client_token"]) for o in orders] == [
        ("rp-avro-1", 5, "vitor"), ("rp-avro-2", 7, "vitor")]
    assert [m.key() for m in landed] == [b"vitor", b"vitor"]

    again = _post(ingester, f"/topics/{topic}", {"value_schema_id": latest.schema_id,
                                                 "records": [{"value": _avro_order("rp-avro-3")}]}, AVRO_V2)
    assert again.status_code == 200, again.text
    assert again.json()["value_schema_id"] == latest.schema_id


@pytest.mark.parametrize("case, status, error_code, words", [
    ("no schema", 422, 42202, "does not include value schema"),
    ("schema that does not parse", 422, 42205, "Invalid schema"),
    ("incompatible schema", 422, 42205, "Invalid schema"),
    ("unknown schema id", 404, 40403, "not found"),
    ("value not of the schema", 422, 42203, "Conversion of JSON to Object failed"),
    ("invalid order", 422, 422, "invalid_quantity"),
    ("not JSON", 422, 422, "Invalid JSON"),
])
def test_avro_errors_are_confluent_s_and_nothing_is_produced(api, ingester, case, status, error_code, words):
    topic = api.settings.topics.orders
    body = {"value_schema": json.dumps(load_schema("order")), "records": [{"value": _avro_order(f"rp-{case}")}]}
    if case == "no schema":
        del body["value_schema"]
    elif case == "schema that does not parse":
        body["value_schema"] = '{"type": "record", "name": "Order", "fields": [{"name": "x", "type": "nope"}]}'
    elif case == "incompatible schema":
        body["value_schema"] = json.dumps(order_with_quantity_as_text())
        body["records"] = [{"value": _avro_order("rp-text", quantity="5")}]
    elif case == "unknown schema id":
        body = {"value_schema_id": 2_000_000_003, "records": body["records"]}
    elif case == "value not of the schema":
        body["records"] = [{"value": {"order_id": "x"}}]
    elif case == "invalid order":
        body["records"] = [{"value": _avro_order("rp-zero", 0)}]
    elif case == "not JSON":
        body = b"{records"
    _assert_refused(api, lambda: _post(ingester, f"/topics/{topic}", body, AVRO_V2), status, error_code, words)
