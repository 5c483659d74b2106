"""The API under a broker that goes away: it answers 503 (nothing written) and /healthz names Kafka while
the broker is down or stalled, endpoints that don't use Kafka stay fast, and ingest works again within
seconds once the broker is back, without restarting the API.

This module stops and stalls its broker, so it runs on a stack of its own rather than the session's.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import pathlib
import signal
import time
import uuid

import pytest

from orderflow.config import ApiConfig
from orderflow.local.stack import read_pid
from orderflow.model.avro import AvroCodec
from tests.support.kafka_check import read_all
from tests.support.served_api import ServedApi

PRODUCE_TIMEOUT = 3.0
RECOVERY_SECONDS = 10.0  # from the broker being ready again to the first POST answered 202
RECOVERING_API_PRODUCERS = 2


@pytest.fixture(scope="module")
def recovering_api(own_stack):
    stack, settings = own_stack
    served = ServedApi(settings, ApiConfig(produce_timeout_seconds=PRODUCE_TIMEOUT,
                                           kafka_producers=RECOVERING_API_PRODUCERS)).start()
    yield stack, served
    served.stop()


def _post(client, token: str, n: int = 5):
    orders = [{"ativo": "PETR4", "quantidade": i + 1, "token": token} for i in range(n)]
    return client.post("/orders", json=orders, headers={"Idempotency-Key": str(uuid.uuid4())})


def _unique_token(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _while_kafka_is_gone(writer, reader, token: str) -> None:
    """What must hold while the broker is unreachable; the POSTs (of ``token``) are all answered 503."""
    health = reader.get("/healthz")
    assert health.status_code == 503, health.text
    assert health.json()["failing"] == ["kafka"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(_post, writer, token) for _ in range(8)]
        time.sleep(0.5)  # the POSTs are now waiting for Kafka (up to PRODUCE_TIMEOUT)
        alarms = reader.get("/alarms")
        answered_first = [f.done() for f in waiting]
        answers = [f.result() for f in waiting]
    assert alarms.status_code == 200
    # Not queued behind the POSTs that wait for Kafka: answered while every one of them still waits.
    assert not any(answered_first), "GET /alarms was answered only after POSTs that waited for Kafka"
    assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
    assert all("nothing of them was written" in a.json()["detail"] for a in answers)


def _recovers(client, since: float) -> float:
    """Seconds from ``since`` to the first POST answered 202 (failing the test after RECOVERY_SECONDS)."""
    while True:
        resp = _post(client, _unique_token("recovered"))
        if resp.status_code == 202:
            return time.monotonic() - since
        assert resp.status_code in (503, 504), resp.text
        assert time.monotonic() - since < RECOVERY_SECONDS, f"still {resp.status_code}: {resp.text}"


def _visible_tokens(settings) -> collections.Counter:
    """Orders per client token that a read_committed reader (the pipelines) gets."""
    codec = AvroCodec("order")
    return collections.Counter(
        codec.decode(m.value())["client_token"]
        for m in read_all(settings.kafka_bootstrap, settings.topics.orders, settings.topic_partitions))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_ingest_recovers_from_a_broker_restart(recovering_api, sig):
    stack, api = recovering_api
    accepted, refused = _unique_token("accepted"), _unique_token("refused")
    with api.client(api.key("ingest")) as writer, api.client(api.key("read")) as reader:
        assert _post(writer, accepted).status_code == 202

        assert stack.stop("kafka", sig=sig) == "stopped"
        _while_kafka_is_gone(writer, reader, refused)

        assert stack.up()["kafka"] == "started"
        took = _recovers(writer, time.monotonic())
        assert reader.get("/healthz").status_code == 200
    visible = _visible_tokens(api.settings)
    assert visible[accepted] == 5 and visible[refused] == 0
    print(f"{sig.name}: first 202 {took:.1f}s after the broker was ready")


def _stall(pid: int) -> None:
    """SIGSTOP, returning once every thread of the broker is stopped (state T), not merely signalled."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while any(pathlib.Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
              for task in os.listdir(f"/proc/{pid}/task")):
        assert time.monotonic() < deadline, "the broker did not stop"
        time.sleep(0.01)


def test_ingest_recovers_from_a_broker_stall_and_writes_nothing_it_answered_503(recovering_api):
    stack, api = recovering_api
    pid = read_pid(stack.root / "run" / "kafka.pid")
    refused = _unique_token("stalled")
    with api.client(api.key("ingest")) as writer, api.client(api.key("read")) as reader:
        # The broker was restarted by the tests before: wait until the pool's producers all answer again (a
        # loaded machine once gave a 503 here, a producer still re-initialising its transactions).
        for _ in range(RECOVERING_API_PRODUCERS):
            _recovers(writer, time.monotonic())
        _stall(pid)
        try:
            _while_kafka_is_gone(writer, reader, refused)
        finally:
            os.kill(pid, signal.SIGCONT)
        took = _recovers(writer, time.monotonic())
        assert reader.get("/healthz").status_code == 200
    assert _visible_tokens(api.settings)[refused] == 0
    print(f"stall: first 202 {took:.1f}s after the broker resumed")
