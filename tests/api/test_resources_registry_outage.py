"""The served API while the schema registry is down (a stack of this module's own: the registry is stopped):
requests whose schema id the API has cached go on; one that needs the registry (a new REST Proxy schema) is
answered 503, and goes through once the registry is back."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from orderflow.config import ApiConfig
from orderflow.model.avro import load_schema
from tests.support.served_api import ServedApi

ORDER = {"ativo": "PETR4", "quantidade": 3, "token": "outage"}


@pytest.fixture(scope="module")
def served(own_stack):
    stack, settings = own_stack
    api = ServedApi(settings, ApiConfig()).start()
    yield stack, api
    api.stop()


def _keepalive(client):
    return client.post("/restaurants/r-outage/keepalive", json={"sent_at": dt.datetime.now(dt.timezone.utc).isoformat()})


def _new_rest_proxy_schema(client, topic: str):
    schema = load_schema("order")
    schema["fields"].append({"name": "outage_note", "type": "string", "default": ""})
    value = {"order_id": "outage-avro", "client_token": "outage", "asset": "PETR4", "quantity": 1,
             "event_time": 1_767_000_000_000, "source_format": "AVRO", "outage_note": "x"}
    return client.post(f"/topics/{topic}", content=json.dumps({"value_schema": json.dumps(schema),
                                                               "records": [{"value": value}]}),
                       headers={"Content-Type": "application/vnd.kafka.avro.v2+json"})


def test_cached_ids_keep_working_and_a_new_registration_answers_503(served):
    stack, api = served
    with api.client(api.key("ingest")) as client:
        assert client.post("/orders", json=ORDER).status_code == 202  # the Order id is looked up, then cached
        assert stack.stop("registry") == "stopped"
        try:
            again = client.post("/orders", json=ORDER)
            assert again.status_code == 202, again.text
            # Cached too: the keep-alive schema's id (bootstrap registered it in this process, as the API caches
            # the ids of the schemas it writes for the life of its process).
            assert _keepalive(client).status_code == 202
            proxied = _new_rest_proxy_schema(client, api.settings.topics.orders)
            assert proxied.status_code == 503, proxied.text
            assert proxied.json()["error_code"] == 503 and "schema registry" in proxied.json()["message"]
        finally:
            stack.up()
        assert _new_rest_proxy_schema(client, api.settings.topics.orders).status_code == 200
