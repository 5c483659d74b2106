"""Contract tests of the ingest endpoints against the real stack: what they answer and what lands on Kafka."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from orderflow.clients import avro_codec, schema_registry
from orderflow.model.orders import encode_order_avro
from tests.support.kafka_check import count_records, read_at

REST_PROXY_JSON = {"Content-Type": "application/vnd.kafka.json.v2+json"}


def _landed_order(api, record: dict) -> dict:
    msg = read_at(api.settings.kafka_bootstrap, record["topic"], record["partition"], record["offset"])
    return avro_codec(api.settings, "orders").decode(msg.value())


def test_plain_json_order_lands_on_kafka_at_the_answered_offset(api, ingester):
    resp = ingester.post("/orders", json={"ativo": "PETR4", "quantidade": 100, "token": "client-a"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["accepted"] == 1
    record = body["records"][0]
    assert record["topic"] == api.settings.topics.orders
    order = _landed_order(api, record)
    assert (order["asset"], order["quantity"], order["client_token"]) == ("PETR4", 100, "client-a")
    assert order["order_id"] == record["order_id"]
    assert order["source_format"] == "JSON"


def test_json_list_rest_proxy_envelope_csv_and_avro_are_all_accepted(api, ingester):
    listed = ingester.post("/orders", json=[{"ativo": "VALE3", "quantidade": 1, "token": "c1"},
                                            {"asset": "ITUB4", "quantity": 2, "client_token": "c2"}])
    assert listed.status_code == 202, listed.text
    assert [o["client_token"] for o in map(lambda r: _landed_order(api, r), listed.json()["records"])] == ["c1", "c2"]

    envelope = {"records": [{"value": {"ativo": "WEGE3", "quantidade": i + 1, "token": f"rp-{i}"}} for i in range(40)]}
    resp = ingester.post("/orders", content=json.dumps(envelope), headers=REST_PROXY_JSON)
    assert resp.status_code == 202, resp.text
    records = resp.json()["records"]
    assert len(records) == 40 and len({r["order_id"] for r in records}) == 40
    last = _landed_order(api, records[-1])
    assert (last["client_token"], last["quantity"], last["source_format"]) == ("rp-39", 40, "REST_PROXY")

    csv = "PETR4,10,csv-a\nVALE3,20,csv-b,my-order-1\n"
    resp = ingester.post("/orders", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 202, resp.text
    records = resp.json()["records"]
    assert records[1]["order_id"] == "my-order-1"
    assert _landed_order(api, records[0])["source_format"] == "CSV"

    avro = encode_order_avro({"order_id": "avro-1", "client_token": "av", "asset": "BBAS3", "quantity": 3,
                              "event_time": dt.datetime(2026, 1, 5, 13, 0, tzinfo=dt.timezone.utc),
                              "source_format": "AVRO"})
    resp = ingester.post("/orders", content=avro, headers={"Content-Type": "application/avro"})
    assert resp.status_code == 202, resp.text
    landed = resp.json()["records"][0]
    assert _landed_order(api, landed)["order_id"] == "avro-1"
    # Written in the Confluent wire format with the id the registry holds for the orders topic's subject.
    value = read_at(api.settings.kafka_bootstrap, landed["topic"], landed["partition"], landed["offset"]).value()
    latest = schema_registry(api.settings).client.get_latest_version(f"{api.settings.topics.orders}-value")
    assert value[:5] == b"\x00" + latest.schema_id.to_bytes(4, "big")

    confluent = avro_codec(api.settings, "orders").encode({
        "order_id": "avro-2", "client_token": "av", "asset": "BBAS3", "quantity": 4,
        "event_time": dt.datetime(2026, 1, 5, 13, 0, tzinfo=dt.timezone.utc), "source_format": "AVRO"})
    resp = ingester.post("/orders", content=confluent, headers={"Content-Type": "application/avro"})
    assert resp.status_code == 202, resp.text
    assert _landed_order(api, resp.json()["records"][0])["quantity"] == 4


def test_a_batch_with_one_invalid_order_is_rejected_whole(api, ingester):
    topic, partitions = api.settings.topics.orders, api.settings.topic_partitions
    before = count_records(api.settings.kafka_bootstrap, topic, partitions)
    records = [{"value": {"ativo": "PETR4", "quantidade": 5, "token": f"t{i}"}} for i in range(10)]
    records[7]["value"]["quantidade"] = -3
    resp = ingester.post("/orders", content=json.dumps({"records": records}), headers=REST_PROXY_JSON)
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["loc"][:4] == ["body", "records", 7, "value"]
    assert "quantidade: Input should be greater than or equal to 1" in resp.json()["detail"]
    records[7]["value"]["quantidade"] = 5
    records[3]["value"]["ativo"] = "PE TR4"  # a rule the schema states, applied before anything is produced
    resp = ingester.post("/orders", content=json.dumps({"records": records}), headers=REST_PROXY_JSON)
    assert resp.status_code == 422 and "records.3.value" in resp.json()["detail"]
    csv = "PETR4,10,a\nnot a line\n"
    assert ingester.post("/orders", content=csv, headers={"Content-Type": "text/csv"}).status_code == 422
    assert count_records(api.settings.kafka_bootstrap, topic, partitions) == before


@pytest.mark.parametrize("body, content_type, reason", [
    (b"", "application/json", "empty body"),
    (b"{not json", "application/json", "Invalid JSON"),
    (b'{"ativo": "PETR4", "quantidade": 1}', "application/json", "token: Field required"),
    (b'{"records": []}', "application/vnd.kafka.json.v2+json", "records: List should have at least 1 item"),
    (b'{"records": [{"value": {"ativo": "PETR4", "quantidade": 1, "token": "x"}}]}', "application/json",
     "records: Extra inputs are not permitted"),
    (b'{"ativo": "PETR4", "quantidade": "5", "token": "x"}', "application/json", "quantidade: Value error, expected an integer"),
    (b'{"ativo": "PETR4", "quantidade": 5, "token": "a/b"}', "application/json", "token: String should match pattern"),
    (b'{"ativo": "PETR4", "quantidade": 5, "token": "x", "order_id": "o/1#2"}', "application/json",
     "order_id: String should match pattern"),
    (b"PETR4,1,a/b\n", "text/csv", "ativo,quantidade,token[,order_id]"),
    (b'{"ativo": "PETR4", "quantidade": 1, "token": "x"}', "text/csv", "ativo,quantidade,token[,order_id]"),
    (b"PETR4,1,x\n", "application/avro", "Avro single-object encoding"),
])
def test_unusable_order_bodies_get_422_with_the_reason(ingester, body, content_type, reason):
    resp = ingester.post("/orders", content=body, headers={"Content-Type": content_type})
    assert resp.status_code == 422, resp.text
    assert reason in resp.json()["detail"]


def test_unknown_fields_are_refused_not_ignored(ingester):
    """An ignored field is a silent misunderstanding (occurred_at is not a field of availability)."""
    resp = ingester.put("/restaurants/r-2/availability", json={"status": "AVAILABLE", "occurred_at": "2026-01-01T00:00:00Z"})
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"loc": ["body", "occurred_at"], "msg": "Extra inputs are not permitted"}]
    resp = ingester.post("/orders", json={"ativo": "PETR4", "quantidade": 1, "token": "x", "price": "10"})
    assert resp.status_code == 422 and "price: Extra inputs are not permitted" in resp.json()["detail"]
    resp = ingester.post("/restaurants/r-2/keepalive", json={"sent_at": "2026-03-01T12:00:00Z", "battery": 80})
    assert resp.status_code == 422 and "battery" in resp.json()["detail"]


@pytest.mark.parametrize("content_type", [
    "application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", None,
])
def test_orders_dispatch_on_content_type_and_refuse_others_with_415(api, ingester, content_type):
    """A JSON body under any other Content-Type is refused, not guessed at."""
    topic, partitions = api.settings.topics.orders, api.settings.topic_partitions
    before = count_records(api.settings.kafka_bootstrap, topic, partitions)
    headers = {"Content-Type": content_type} if content_type else {}
    resp = ingester.post("/orders", content=b'{"ativo": "PETR4", "quantidade": 1, "token": "x"}', headers=headers)
    assert resp.status_code == 415, resp.text
    assert "application/json" in resp.json()["detail"] and "text/csv" in resp.json()["detail"]
    assert count_records(api.settings.kafka_bootstrap, topic, partitions) == before


def test_json_with_charset_is_json(ingester):
    resp = ingester.post("/orders", content=b'{"ativo": "PETR4", "quantidade": 1, "token": "x"}',
                         headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status_code == 202, resp.text


def test_an_avro_order_is_held_to_the_same_token_and_id_rules(ingester):
    order = {"order_id": "avro-2", "client_token": "a/b", "asset": "BBAS3", "quantity": 3,
             "event_time": dt.datetime.now(dt.timezone.utc), "source_format": "AVRO"}
    resp = ingester.post("/orders", content=encode_order_avro(order), headers={"Content-Type": "application/avro"})
    assert resp.status_code == 422 and "client token 'a/b'" in resp.json()["detail"]
    order.update(client_token="av", order_id="o/1#2")
    resp = ingester.post("/orders", content=encode_order_avro(order), headers={"Content-Type": "application/avro"})
    assert resp.status_code == 422 and "order id 'o/1#2'" in resp.json()["detail"]


def test_minted_order_ids_are_url_safe_and_client_ids_kept(api, ingester):
    resp = ingester.post("/orders", content="PETR4,1,csv-x\nVALE3,2,csv-y,client.id:7@a-b\n",
                         headers={"Content-Type": "text/csv"})
    assert resp.status_code == 202, resp.text
    minted, given = (r["order_id"] for r in resp.json()["records"])
    assert re.fullmatch(r"api-[0-9a-f]{32}-0", minted), minted
    assert given == "client.id:7@a-b"
    assert _landed_order(api, resp.json()["records"][0])["order_id"] == minted


def test_body_and_batch_limits_give_413(api, ingester, api_config):
    big = "PETR4,1,x\n" * (api_config.max_body_bytes // 10 + 10)
    resp = ingester.post("/orders", content=big, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 413 and "larger than" in resp.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(100):
            yield b"PETR4,1,x\n" * 100

    resp = ingester.post("/orders", content=chunks(), headers={"Content-Type": "text/csv"})
    assert resp.status_code == 413

    many = "\n".join(f"PETR4,1,c{i}" for i in range(api_config.max_orders_per_request + 1))
    resp = ingester.post("/orders", content=many, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 413 and "split the batch" in resp.json()["detail"]


def test_ingest_needs_a_key_with_ingest_scope(api, anonymous, reader):
    order = {"ativo": "PETR4", "quantidade": 1, "token": "x"}
    resp = anonymous.post("/orders", json=order)
    assert resp.status_code == 401 and "missing API key" in resp.json()["detail"]
    resp = anonymous.post("/orders", json=order, headers={"X-API-Key": "of_000000000000_" + "A" * 43})
    assert resp.status_code == 401 and "invalid" in resp.json()["detail"]
    resp = reader.post("/orders", json=order)
    assert resp.status_code == 403 and "ingest" in resp.json()["detail"]
    key = api.key("ingest")
    resp = anonymous.post("/orders", json=order, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 202


def test_keepalive_lands_keyed_by_restaurant_at_its_event_time(api, ingester):
    sent_at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=90)).replace(microsecond=123000)
    resp = ingester.post("/restaurants/r-1/keepalive", json={"sent_at": sent_at.isoformat()})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["topic"] == api.settings.topics.keepalive
    msg = read_at(api.settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
    assert msg.key() == b"r-1"
    ping = avro_codec(api.settings, "keepalive").decode(msg.value())
    assert ping["restaurant_id"] == "r-1" and ping["sent_at"] == sent_at
    # The record's Kafka timestamp is the event time (the pipeline's watermark and replays follow it).
    assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, round(sent_at.timestamp() * 1000))
    before = int(time.time() * 1000)
    resp = ingester.post("/restaurants/r-1/keepalive")  # no body: sent now
    assert resp.status_code == 202
    now = read_at(api.settings.kafka_bootstrap, body["topic"], resp.json()["partition"], resp.json()["offset"])
    assert before <= now.timestamp()[1] <= int(time.time() * 1000)
    assert round(avro_codec(api.settings, "keepalive").decode(now.value())["sent_at"].timestamp() * 1000) == now.timestamp()[1]


def _restamped(client, direction: str) -> float:
    found = re.search(rf'^orderflow_api_keepalive_restamped_total{{direction="{direction}"}} (\S+)$',
                      client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("skew", [-3600, -301, 301, 86400])
def test_keepalive_from_a_clock_too_far_off_is_recorded_now_counted_and_logged(api, ingester, skew, caplog):
    """A restaurant whose clock is wrong must still be able to be online: its ping is recorded at the server's time."""
    direction = "ahead" if skew > 0 else "behind"
    counted = _restamped(ingester, direction)
    sent_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=skew)
    before = int(time.time() * 1000)
    with caplog.at_level(logging.WARNING, logger="orderflow.api.ingest"):
        resp = ingester.post("/restaurants/r-skew/keepalive", json={"sent_at": sent_at.isoformat()})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["clock_skew_seconds"] == pytest.approx(skew, abs=5)
    msg = read_at(api.settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
    assert before <= msg.timestamp()[1] <= int(time.time() * 1000)  # the server's time, not the restaurant's
    assert round(dt.datetime.fromisoformat(body["sent_at"]).timestamp() * 1000) == msg.timestamp()[1]
    assert _restamped(ingester, direction) == counted + 1
    assert any("r-skew" in r.getMessage() and "restamped" in r.getMessage() for r in caplog.records)


def test_keepalive_within_the_allowed_skew_keeps_its_own_time(api, ingester):
    sent_at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=250)).replace(microsecond=0)
    resp = ingester.post("/restaurants/r-skew/keepalive", json={"sent_at": sent_at.isoformat()})
    assert resp.status_code == 202 and resp.json()["clock_skew_seconds"] is None
    assert dt.datetime.fromisoformat(resp.json()["sent_at"]) == sent_at


def test_a_restaurant_key_acts_only_for_its_restaurant(api, reader):
    with api.client(api.key("restaurant:r-7")) as own:
        assert own.post("/restaurants/r-7/keepalive").status_code == 202
        resp = own.post("/restaurants/r-8/keepalive")
        assert resp.status_code == 403 and "r-8" in resp.json()["detail"]
        assert own.put("/restaurants/r-8/availability", json={"status": "AVAILABLE"}).status_code == 403
        assert own.post("/orders", json={"ativo": "PETR4", "quantidade": 1, "token": "x"}).status_code == 403
    assert reader.post("/restaurants/r-7/keepalive").status_code == 403


def test_availability_is_a_set_status_event(api, ingester):
    resp = ingester.put("/restaurants/r-2/availability",
                        json={"status": "UNAVAILABLE", "reason": "CONNECTION_ISSUES"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    msg = read_at(api.settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
    event = avro_codec(api.settings, "availability").decode(msg.value())
    assert (event["kind"], event["status"], event["reason"], event["event_id"]) == (
        "SET_STATUS", "UNAVAILABLE", "CONNECTION_ISSUES", body["event_id"])


@pytest.mark.parametrize("body, words", [
    ({"status": "SLEEPING"}, "status"),
    ({"status": "AVAILABLE", "reason": "HOLIDAYS"}, "only with status UNAVAILABLE"),
    ({"status": "UNAVAILABLE", "reason": "BORED"}, "reason"),
    ({}, "status: Field required"),
])
def test_bad_availability_gets_422_naming_the_field(ingester, body, words):
    resp = ingester.put("/restaurants/r-2/availability", json=body)
    assert resp.status_code == 422
    assert words in resp.json()["detail"]


def test_schedule_and_cancel_unavailability(api, ingester):
    starts = dt.datetime(2026, 12, 24, 18, 0, tzinfo=dt.timezone.utc)
    resp = ingester.post("/restaurants/r-3/unavailability", json={
        "reason": "HOLIDAYS", "starts_at": starts.isoformat(), "ends_at": (starts + dt.timedelta(days=2)).isoformat()})
    assert resp.status_code == 202, resp.text
    created = resp.json()
    event = avro_codec(api.settings, "availability").decode(read_at(api.settings.kafka_bootstrap, created["topic"],
                                              created["partition"], created["offset"]).value())
    assert (event["kind"], event["schedule_id"], event["starts_at"]) == ("SCHEDULE_CREATED", created["schedule_id"], starts)

    resp = ingester.delete(f"/restaurants/r-3/unavailability/{created['schedule_id']}")
    assert resp.status_code == 202, resp.text
    cancelled = resp.json()
    event = avro_codec(api.settings, "availability").decode(read_at(api.settings.kafka_bootstrap, cancelled["topic"],
                                              cancelled["partition"], cancelled["offset"]).value())
    assert (event["kind"], event["schedule_id"]) == ("SCHEDULE_CANCELLED", created["schedule_id"])


@pytest.mark.parametrize("body, words", [
    ({"reason": "HOLIDAYS", "starts_at": "2026-12-24T18:00:00+00:00", "ends_at": "2026-12-24T17:00:00+00:00"},
     "ends_at must be after starts_at"),
    ({"reason": "HOLIDAYS", "starts_at": "2026-12-24T18:00:00"}, "starts_at: Value error, expected an ISO-8601 date-time with offset"),
    ({"reason": "HOLIDAYS", "starts_at": 1766599200}, "starts_at: Value error, expected an ISO-8601 date-time"),
    ({"reason": "HOLIDAYS"}, "starts_at: Field required"),
    ({"reason": "HOLIDAYS", "starts_at": "2026-12-24T18:00:00Z", "schedule_id": "bad id!"}, "schedule_id"),
])
def test_bad_unavailability_gets_422(ingester, body, words):
    resp = ingester.post("/restaurants/r-3/unavailability", json=body)
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["detail"]


def test_malformed_json_body_gets_422(ingester):
    resp = ingester.put("/restaurants/r-2/availability", content=b"{oops", headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert "JSON" in resp.json()["detail"]


# -- the keep-alive's fast path (ingest.keepalive_fast_path): a key answered from the key cache ---------------
KEY_CACHE_SECONDS = 2.0


@pytest.fixture(scope="module")
def cached_api(api_settings, api_config):
    """The API as deployed in this respect: keys cached (the fast path needs a cached key)."""
    from tests.support.served_api import ServedApi

    served = ServedApi(api_settings, dataclasses.replace(api_config, key_cache_seconds=KEY_CACHE_SECONDS)).start()
    yield served
    served.stop()


def _counter(client, name: str, labels: str) -> float:
    found = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


KEEPALIVE_202 = 'method="POST",route="/restaurants/{restaurant_id}/keepalive",status="202"'


def test_a_cached_keys_keepalive_is_answered_and_written_as_the_route_does(cached_api):
    settings = cached_api.settings
    with cached_api.client(cached_api.key("ingest")) as client:
        # A body with sent_at goes through the route (and puts the key in the cache).
        sent_at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)).replace(microsecond=250000)
        routed = client.post("/restaurants/r-fast/keepalive", json={"sent_at": sent_at.isoformat()})
        assert routed.status_code == 202, routed.text
        requests = _counter(client, "orderflow_api_requests_total", KEEPALIVE_202)
        cached = _counter(client, "orderflow_api_key_lookups_total", 'result="cached"')
        before = int(time.time() * 1000)
        answers = [client.post("/restaurants/r-fast/keepalive"), client.post("/restaurants/r-fast/keepalive", json={}),
                   client.post("/restaurants/r-fast/keepalive", content=b" {} ",
                               headers={"Content-Type": "application/json; charset=utf-8"})]
        after = int(time.time() * 1000)
        for answer in answers:
            assert answer.status_code == 202, answer.text
            body = answer.json()
            assert set(body) == set(routed.json()) and body["clock_skew_seconds"] is None
            assert body["topic"] == settings.topics.keepalive
            assert body["sent_at"].endswith("Z") == routed.json()["sent_at"].endswith("Z")
            msg = read_at(settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
            assert msg.key() == b"r-fast"
            ping = avro_codec(settings, "keepalive").decode(msg.value())
            assert ping["restaurant_id"] == "r-fast"
            # The answered time is the record's event time and its Kafka timestamp, taken when it arrived.
            answered_ms = round(dt.datetime.fromisoformat(body["sent_at"]).timestamp() * 1000)
            assert answered_ms == msg.timestamp()[1] == round(ping["sent_at"].timestamp() * 1000)
            assert before <= answered_ms <= after
        # Counted under the route, and answered from the key cache.
        assert _counter(client, "orderflow_api_requests_total", KEEPALIVE_202) == requests + 3
        assert _counter(client, "orderflow_api_key_lookups_total", 'result="cached"') == cached + 3


def test_a_cached_keys_keepalive_outside_its_scope_or_with_a_bad_body_is_refused_by_the_route(cached_api):
    with cached_api.client(cached_api.key("restaurant:r-own")) as own:
        assert own.post("/restaurants/r-own/keepalive").status_code == 202
        assert own.post("/restaurants/r-own/keepalive", json={}).status_code == 202  # from the cache now
        resp = own.post("/restaurants/r-other/keepalive", json={})
        assert resp.status_code == 403 and "r-other" in resp.json()["detail"]
        resp = own.post("/restaurants/r-own/keepalive", json={"sent_at": "yesterday"})
        assert resp.status_code == 422 and "sent_at" in resp.text
        resp = own.post("/restaurants/r-own/keepalive", json={"unknown": 1})
        assert resp.status_code == 422
        resp = own.post("/restaurants/-bad-/keepalive", json={})
        assert resp.status_code == 422


def test_a_revoked_key_is_refused_on_the_fast_path_within_the_key_cache_time(cached_api):
    from orderflow.api.auth import revoke_key

    key = cached_api.key("ingest")
    with cached_api.client(key) as client:
        assert client.post("/restaurants/r-rev/keepalive").status_code == 202
        assert client.post("/restaurants/r-rev/keepalive").status_code == 202  # from the cache
        assert revoke_key(cached_api.settings.postgres_dsn, key.split("_")[1])
        revoked_at = time.monotonic()
        while (resp := client.post("/restaurants/r-rev/keepalive")).status_code == 202:
            # The documented bound: ORDERFLOW_API_KEY_CACHE_SECONDS (plus this loop's own request time).
            assert time.monotonic() - revoked_at < KEY_CACHE_SECONDS + 5, "a revoked key accepted past the cache time"
            time.sleep(0.2)
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]


def test_a_keepalive_is_one_record_without_a_transaction_and_an_order_batch_is_a_transaction(cached_api):
    """Keep-alives, by the fast path and by the route, go through ``KafkaSink.produce_record`` (one idempotent
    record, no transaction: issue 26); an order batch still commits a transaction of its own."""
    untransacted, transactions = "orderflow_api_kafka_untransacted_records_total", "orderflow_api_kafka_transactions_total"
    with cached_api.client(cached_api.key("ingest")) as client:
        assert client.post("/restaurants/r-untx/keepalive").status_code == 202  # the key is cached from now on
        acknowledged = _counter(client, untransacted, 'outcome="acknowledged"')
        committed = _counter(client, transactions, 'outcome="committed"')
        sent_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        answers = [client.post("/restaurants/r-untx/keepalive"),  # the fast path
                   client.post("/restaurants/r-untx/keepalive", json={"sent_at": sent_at.isoformat()})]  # the route
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        first, second = (a.json() for a in answers)  # one key, one partition, in the order produced
        assert (second["partition"], second["offset"]) > (first["partition"], first["offset"])
        assert second["partition"] == first["partition"]
        assert _counter(client, untransacted, 'outcome="acknowledged"') == acknowledged + 2
        assert _counter(client, transactions, 'outcome="committed"') == committed
        orders = client.post("/orders", json=[{"ativo": "PETR4", "quantidade": 1, "token": "untx"}])
        assert orders.status_code == 202, orders.text
        assert _counter(client, transactions, 'outcome="committed"') == committed + 1
        assert _counter(client, untransacted, 'outcome="acknowledged"') == acknowledged + 2
    settings = cached_api.settings
    for answer in answers:
        body = answer.json()
        msg = read_at(settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
        assert msg.key() == b"r-untx"
