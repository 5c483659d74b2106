"""Ingest is all or nothing (each request in one Kafka transaction, which concurrent requests may share) and safe
to retry (Idempotency-Key)."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import re
import threading
import uuid
import zlib

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from orderflow.clients import avro_codec
from orderflow.model.orders import parse_orders
from tests.support.kafka_check import read_all
from tests.support.served_api import ServedApi

MINTED_ID = re.compile(r"^api-[0-9a-f]{32}-\d+$")
RECORD_BATCH_HEADER = 61  # bytes of a Kafka v2 record batch before its first record
RECORD_OVERHEAD = 20      # at most, per record: length, attributes, deltas, key/value lengths, headers


def _partition(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner (consistent_random): CRC-32 of the key modulo the partition count."""
    return zlib.crc32(key) % partitions


def _order_ids(settings, messages) -> list[str]:
    codec = avro_codec(settings, "orders")
    return [codec.decode(m.value())["order_id"] for m in messages]


def _set_max_message_bytes(bootstrap: str, topic: str, limit: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=15)


@pytest.fixture
def strict_topic_api(api_settings, api_config):
    """The API producing orders to a 2-partition topic of its own, whose max.message.bytes the test sets."""
    topic = f"strict-orders-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": api_settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=15)
    settings = dataclasses.replace(api_settings, topics=dataclasses.replace(api_settings.topics, orders=topic))
    served = ServedApi(settings, api_config).start()
    yield served, topic
    served.stop()


def test_a_batch_the_broker_refuses_midway_is_answered_503_never_visible_and_its_retry_counts_once(strict_topic_api):
    api, topic = strict_topic_api
    bootstrap = api.settings.kafka_bootstrap
    # Three small orders go to one partition, one big order (longest token and id) to the other, and the
    # topic's max.message.bytes lies between the two: the broker writes the small ones, refuses the big one.
    small_token = "small-client"
    big_token = next(t for t in (f"big-{n}-" + "t" * 110 for n in range(100))
                     if _partition(t.encode(), 2) != _partition(small_token.encode(), 2))
    batch = [{"ativo": "PETR4", "quantidade": q, "token": small_token} for q in (1, 2, 3)]
    batch.append({"ativo": "VALE3", "quantidade": 4, "token": big_token, "order_id": "big-" + "o" * 190})
    body = json.dumps(batch)

    encoded = [(o["client_token"].encode(), avro_codec(api.settings, "orders").encode(o))
               for o in parse_orders(body.encode(), minted_id_prefix="api-" + "0" * 32)]
    small_batch = RECORD_BATCH_HEADER + sum(len(k) + len(v) + RECORD_OVERHEAD for k, v in encoded[:3])
    big_batch = RECORD_BATCH_HEADER + len(encoded[3][0]) + len(encoded[3][1])
    assert small_batch + 40 < big_batch
    _set_max_message_bytes(bootstrap, topic, (small_batch + big_batch) // 2)

    headers = {"Idempotency-Key": f"batch-{uuid.uuid4()}"}
    with api.client(api.key("ingest")) as client:
        refused = client.post("/orders", content=body, headers={**headers, "Content-Type": "application/json"})
        assert refused.status_code == 503, refused.text
        assert "nothing of them was written" in refused.json()["detail"]
        assert "too large" in refused.json()["detail"].lower()

        # Midway: the small orders were written (a read_uncommitted reader sees them), then aborted.
        written = _order_ids(api.settings, read_all(bootstrap, topic, 2, isolation="read_uncommitted"))
        assert len(written) == 3 and all(MINTED_ID.match(i) for i in written)
        assert read_all(bootstrap, topic, 2) == []  # read_committed: nothing of the batch
        # A refused batch is not an unhealthy Kafka: the health check sees transactions working again.
        assert client.get("/healthz").json()["checks"]["kafka"] == "ok"

        _set_max_message_bytes(bootstrap, topic, 1_048_588)
        retried = client.post("/orders", content=body, headers={**headers, "Content-Type": "application/json"})
        assert retried.status_code == 202, retried.text
        ids = [r["order_id"] for r in retried.json()["records"]]
        assert ids[:3] == written  # the retry carries the ids the aborted attempt had
        assert collections.Counter(_order_ids(api.settings, read_all(bootstrap, topic, 2))) == {i: 1 for i in ids}

        # A client that never saw the 202 sends it again: the same ids, so the pipeline (idempotent on the
        # order id) counts each order once.
        again = client.post("/orders", content=body, headers={**headers, "Content-Type": "application/json"})
        assert again.status_code == 202
        assert [r["order_id"] for r in again.json()["records"]] == ids
        assert collections.Counter(_order_ids(api.settings, read_all(bootstrap, topic, 2))) == {i: 2 for i in ids}


def test_an_idempotency_key_gives_the_same_url_safe_ids_to_the_same_callers_retry(api, ingester):
    order = [{"ativo": "PETR4", "quantidade": 1, "token": "idem"}, {"ativo": "VALE3", "quantidade": 2, "token": "idem"},
             {"ativo": "ITUB4", "quantidade": 3, "token": "idem", "order_id": "own-id-1"}]

    def ids(client, key=None):
        resp = client.post("/orders", json=order, headers={"Idempotency-Key": key} if key else {})
        assert resp.status_code == 202, resp.text
        records = resp.json()["records"]
        assert len(records) == len(order), records  # one answer per order sent, so no check below is vacuous
        return [r["order_id"] for r in records]

    key = str(uuid.uuid4())
    first = ids(ingester, key)
    assert all(MINTED_ID.match(i) for i in first[:2]) and first[2] == "own-id-1"
    assert [i.rsplit("-", 1)[1] for i in first[:2]] == ["0", "1"]  # the index in the batch
    assert ids(ingester, key) == first
    assert ids(ingester, str(uuid.uuid4()))[:2] != first[:2]
    unkeyed = ids(ingester)
    assert all(MINTED_ID.match(i) for i in unkeyed[:2]) and unkeyed != ids(ingester)
    # Keys are the caller's own: another API key sending the same Idempotency-Key gets other ids.
    with api.client(api.key("ingest")) as other:
        assert ids(other, key)[:2] != first[:2]


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "é"])
def test_a_malformed_idempotency_key_gets_422(ingester, key):
    resp = ingester.post("/orders", json={"ativo": "PETR4", "quantidade": 1, "token": "k"},
                         headers={"Idempotency-Key": key.encode()})
    assert resp.status_code == 422, resp.text
    assert "Idempotency-Key" in resp.json()["detail"]


def test_the_openapi_spec_documents_the_idempotency_key_and_the_kafka_answers(anonymous):
    post = anonymous.get("/openapi.json").json()["paths"]["/orders"]["post"]
    [header] = [p for p in post["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["in"] == "header" and "api-<32 hex>-<index>" in header["description"]
    assert {"503", "504"} <= set(post["responses"])
    assert "nothing of it was written" in post["responses"]["503"]["description"]


def _metric(client, name: str) -> float:
    """A sample of the API's /metrics (0 before it is first recorded)."""
    text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


COMMITTED = 'orderflow_api_kafka_transactions_total{outcome="committed"}'
ABORTED = 'orderflow_api_kafka_transactions_total{outcome="aborted"}'
GROUPED = "orderflow_api_kafka_transaction_requests_sum"  # requests, over every transaction begun


def _orders(token: str, n: int) -> list[dict]:
    return [{"ativo": "PETR4", "quantidade": q + 1, "token": token} for q in range(n)]


def _assert_visible_where_answered(settings, topic: str, partitions: int, answers: list[dict], orders: int) -> None:
    """Every answered record (``orders`` of them: one answer per order sent) is where its 202 said (partition,
    offset) for a read_committed reader, once."""
    committed = read_all(settings.kafka_bootstrap, topic, partitions)
    at = dict(zip([(m.partition(), m.offset()) for m in committed], _order_ids(settings, committed), strict=True))
    answered = [r for answer in answers for r in answer["records"]]
    assert len(answered) == orders and len({r["order_id"] for r in answered}) == orders
    assert all(at.get((r["partition"], r["offset"])) == r["order_id"] for r in answered)
    ids = collections.Counter(at.values())
    assert all(ids[r["order_id"]] == 1 for r in answered)


def test_concurrent_requests_share_transactions_and_each_is_answered_with_its_own_committed_offsets(api):
    requests, in_flight = 64, 16
    topic = api.settings.topics.orders
    with api.client(api.key("ingest")) as client, api.client() as anonymous:
        committed_before, grouped_before = _metric(anonymous, COMMITTED), _metric(anonymous, GROUPED)
        token = f"group-{uuid.uuid4().hex[:8]}"
        with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            answers = list(pool.map(lambda n: client.post("/orders", json=_orders(f"{token}-{n}", 10)),
                                    range(requests)))
        assert [a.status_code for a in answers] == [202] * requests, [a.text for a in answers if a.status_code != 202]
        transactions = _metric(anonymous, COMMITTED) - committed_before
        # Every request went into exactly one committed transaction, and fewer transactions than requests ran.
        assert _metric(anonymous, GROUPED) - grouped_before == requests
        assert transactions < requests, f"{transactions:.0f} transactions for {requests} requests"
    _assert_visible_where_answered(api.settings, topic, api.settings.topic_partitions, [a.json() for a in answers],
                                   requests * 10)
    print(f"{requests} requests, {in_flight} in flight: {transactions:.0f} transactions")


@pytest.fixture
def strict_single_producer_api(api_settings, api_config):
    """The API with ONE transactional producer (so concurrent requests queue and are grouped), producing orders
    to a 2-partition topic of its own whose max.message.bytes the test sets."""
    topic = f"strict-grouped-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": api_settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=15)
    settings = dataclasses.replace(api_settings, topics=dataclasses.replace(api_settings.topics, orders=topic))
    served = ServedApi(settings, dataclasses.replace(api_config, kafka_producers=1)).start()
    yield served, topic
    served.stop()


def test_a_request_the_broker_refuses_fails_alone_not_the_requests_grouped_with_it(strict_single_producer_api):
    """A shared transaction in which the broker refuses one request's record is aborted (nothing of it visible)
    and its requests are retried one by one: the bad one gets 503, its neighbours 202, each once visible."""
    api, topic = strict_single_producer_api
    bootstrap = api.settings.kafka_bootstrap
    small_token, writers = "small-neighbour", 3  # at most 3 small one-order requests share a transaction
    big_token = next(t for t in (f"big-{n}-" + "t" * 110 for n in range(100))
                     if _partition(t.encode(), 2) != _partition(small_token.encode(), 2))
    big = [{"ativo": "VALE3", "quantidade": 4, "token": big_token, "order_id": "big-" + "o" * 190}]
    small = [{"ativo": "PETR4", "quantidade": 1, "token": small_token}]
    [(small_key, small_value)] = [(o["client_token"].encode(), avro_codec(api.settings, "orders").encode(o))
                                  for o in parse_orders(json.dumps(small).encode(), minted_id_prefix="api-" + "0" * 32)]
    [(big_key, big_value)] = [(o["client_token"].encode(), avro_codec(api.settings, "orders").encode(o)) for o in parse_orders(
        json.dumps(big).encode(), minted_id_prefix="api-" + "0" * 32)]
    smalls_batch = RECORD_BATCH_HEADER + writers * (len(small_key) + len(small_value) + RECORD_OVERHEAD)
    big_batch = RECORD_BATCH_HEADER + len(big_key) + len(big_value)
    assert smalls_batch + 40 < big_batch
    _set_max_message_bytes(bootstrap, topic, (smalls_batch + big_batch) // 2)

    stop = threading.Event()
    small_answers: list = []

    def write_smalls():
        with api.client(api.key("ingest")) as client:
            while not stop.is_set():
                small_answers.append(client.post("/orders", json=small))

    with api.client(api.key("ingest")) as client, api.client() as anonymous:
        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            running = [pool.submit(write_smalls) for _ in range(writers)]
            try:
                grouped = False
                for _ in range(10):  # until the big request met the others in a transaction (almost always at once)
                    aborted_before = _metric(anonymous, ABORTED)
                    refused = client.post("/orders", json=big)
                    assert refused.status_code == 503, refused.text
                    assert "too large" in refused.json()["detail"].lower()
                    # Aborted alone: 1; aborted with neighbours and then alone again: 2 (the smalls fit alone).
                    aborted = _metric(anonymous, ABORTED) - aborted_before
                    assert aborted in (1, 2)
                    if aborted == 2:
                        grouped = True
                        break
            finally:
                stop.set()
                for future in running:
                    future.result()

    assert small_answers and {a.status_code for a in small_answers} == {202}, \
        [a.text for a in small_answers if a.status_code != 202]
    assert grouped, "the big request never shared a transaction with the small ones"
    answers = [a.json() for a in small_answers]
    _assert_visible_where_answered(api.settings, topic, 2, answers, len(answers) * len(small))
    committed_ids = _order_ids(api.settings, read_all(bootstrap, topic, 2))
    assert len(committed_ids) == len(answers) and big[0]["order_id"] not in committed_ids
    # The neighbours of the aborted shared transaction were written in it too (a read_uncommitted reader sees
    # those aborted copies), then committed by their retry alone: a read_committed reader sees each once.
    written = collections.Counter(_order_ids(api.settings, read_all(bootstrap, topic, 2, isolation="read_uncommitted")))
    assert any(written[i] == 2 for i in committed_ids)
