"""Confluent REST Proxy v2 produce compatibility: the seed's own request, sent with curl, works unchanged
(behind an API key), and every answer, errors included, is in REST Proxy's shape."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from orderflow.clients import avro_codec
from tests.support.environment import require
from tests.support.kafka_check import count_records, read_at

V2 = "application/vnd.kafka.v2+json"
JSON_V2 = "application/vnd.kafka.json.v2+json"


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
    before = count_records(api.settings.kafka_bootstrap, topic, api.settings.topic_partitions)
    with api.client(key) as client:
        resp = _post(client, path, body, content_type, accept)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == V2
    answer = resp.json()
    assert set(answer) == {"error_code", "message"} and answer["error_code"] == error_code
    assert words in answer["message"]
    assert count_records(api.settings.kafka_bootstrap, topic, api.settings.topic_partitions) == before
