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
import re
import signal
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from orderflow.clients import avro_codec
from orderflow.config import ApiConfig
from orderflow_dev.local.stack import read_pid
from tests.support.kafka_check import read_all, read_at
from tests.support.served_api import ServedApi

PRODUCE_TIMEOUT = 3.0
# From the broker being ready again to the first POST answered 202 (printed with -s): only an API that
# never recovers exceeds it (docs/testing.md, "Bounds that stay").
RECOVERY_SECONDS = 60.0
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


def _healthy_then_every_post_accepted(reader, writer, since: float) -> float:
    """Seconds from ``since`` to /healthz answering 200 (failing after RECOVERY_SECONDS); from then on no client
    may get a 503: a burst of concurrent POSTs (more than the pool's producers, so every producer serves some,
    stale ones included) is answered 202 each."""
    while (health := reader.get("/healthz")).status_code != 200:
        assert time.monotonic() - since < RECOVERY_SECONDS, f"/healthz still {health.status_code}: {health.text}"
        time.sleep(0.1)
    took = time.monotonic() - since
    with concurrent.futures.ThreadPoolExecutor(4 * RECOVERING_API_PRODUCERS) as pool:
        answers = list(pool.map(lambda _: _post(writer, _unique_token("healthy")), range(4 * RECOVERING_API_PRODUCERS)))
    assert [a.status_code for a in answers] == [202] * len(answers), [a.text for a in answers if a.status_code != 202]
    return took


def _every_producer_answers(client) -> None:
    """Waits until each of the pool's producers has committed a POST again: after an earlier test's broker
    restart, a producer may still be re-initialising its transactions (a loaded machine once gave a 503 on
    the first POST of the next test)."""
    for _ in range(RECOVERING_API_PRODUCERS):
        _recovers(client, time.monotonic())


def _visible_tokens(settings) -> collections.Counter:
    """Orders per client token that a read_committed reader (the pipelines) gets."""
    codec = avro_codec(settings, "orders")
    return collections.Counter(
        codec.decode(m.value())["client_token"]
        for m in read_all(settings.kafka_bootstrap, settings.topics.orders, settings.topic_partitions))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_ingest_recovers_from_a_broker_restart(recovering_api, sig):
    stack, api = recovering_api
    accepted, refused = _unique_token("accepted"), _unique_token("refused")
    with api.client(api.key("ingest")) as writer, api.client(api.key("read")) as reader:
        _every_producer_answers(writer)
        assert _post(writer, accepted).status_code == 202

        assert stack.stop("kafka", sig=sig) == "stopped"
        _while_kafka_is_gone(writer, reader, refused)

        assert stack.up()["kafka"] == "started"
        took = _healthy_then_every_post_accepted(reader, writer, time.monotonic())
    visible = _visible_tokens(api.settings)
    assert visible[accepted] == 5 and visible[refused] == 0
    print(f"{sig.name}: /healthz 200 {took:.1f}s after the broker was ready, then every POST 202")


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
        _every_producer_answers(writer)
        _stall(pid)
        try:
            _while_kafka_is_gone(writer, reader, refused)
        finally:
            os.kill(pid, signal.SIGCONT)
        took = _recovers(writer, time.monotonic())
        assert reader.get("/healthz").status_code == 200
    assert _visible_tokens(api.settings)[refused] == 0
    print(f"stall: first 202 {took:.1f}s after the broker resumed")


def _metric(client, sample: str) -> float:
    """A sample of the API's /metrics (0 before it is first recorded)."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def _aborted(client) -> float:
    return _metric(client, 'orderflow_api_kafka_transactions_total{outcome="aborted"}')


def _several_producing() -> float:
    """Transactions of several requests begun whose records are not all acknowledged yet. Read from the served API's
    registry (it runs in this process) rather than /metrics, whose scrape checks Kafka, which may be stalled."""
    return REGISTRY.get_sample_value("orderflow_api_kafka_transactions_producing", {"requests": "several"}) or 0.0


def _stalled_round(api, pid: int, token: str, writers: int) -> tuple[list, bool]:
    """Writers post (``token``) while the broker is healthy; once the API reports a transaction of several requests
    producing (a positive signal that writers queue behind the producers), the broker stalls. If a transaction of
    several requests is still producing with the broker stopped, it cannot reach its commit: the system is at the
    known point (else this round is answered and the caller tries another). The writers stop; the broker resumes
    once each has its answer. Returns the answers and whether the round reached the point."""
    stop = threading.Event()
    answers: list = []

    def write():
        with api.client(api.key("ingest")) as client:
            while not stop.is_set():
                answers.append(_post(client, token))

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        running = [pool.submit(write) for _ in range(writers)]
        try:
            deadline = time.monotonic() + 60  # only writers that never get going exceed it
            while not _several_producing():
                assert time.monotonic() < deadline, "no transaction of several requests in 60 s of 12 writers"
                assert not any(f.done() for f in running), [f.result() for f in running if f.done()]
                time.sleep(0.002)  # a poll, not a wait for time to pass: leaves the GIL to the API and the writers
            _stall(pid)
            try:
                held = _several_producing()  # the broker is stopped: what produces now is never acknowledged
            finally:
                stop.set()
                for future in running:  # each in-flight request ends by its deadline (and the commit's)
                    future.result()
        finally:
            stop.set()
            os.kill(pid, signal.SIGCONT)
    return answers, held


def test_a_shared_transaction_the_broker_stalls_in_answers_503_to_every_request_in_it(recovering_api):
    """Requests grouped in one transaction share its fate: the broker stalls while writers keep RECOVERING_API_
    PRODUCERS busy with shared transactions, at a known point (a transaction of several requests producing with the
    broker stopped: the API's ``orderflow_api_kafka_transactions_producing``); every request of a transaction that
    fails gets 503 and none of their records becomes visible, while every 202 is visible."""
    stack, api = recovering_api
    pid = read_pid(stack.root / "run" / "kafka.pid")
    token = _unique_token("grouped-stall")
    answers: list = []
    with api.client(api.key("ingest")) as writer, api.client(api.key("read")) as reader:
        # Each round stalls the broker after a positive signal; it counts once the API reports, with the broker
        # stopped, a transaction of several requests still producing (the known point; else another round).
        rounds = 0
        while rounds < 20:
            rounds += 1
            _every_producer_answers(writer)
            aborted_before = _aborted(reader)
            round_answers, held = _stalled_round(api, pid, token, writers=12)
            _recovers(writer, time.monotonic())
            aborted = _aborted(reader) - aborted_before
            answers += round_answers
            # 503s of requests that were in a transaction (the others waited for a producer past their deadline)
            in_failed = [a for a in round_answers if a.status_code == 503
                         and re.search(r"not acknowledged|records refused", a.json()["detail"])]
            if held:
                break
        assert held, "in 20 rounds, never a transaction of several requests producing once the broker stopped"
        # The held transaction of several requests was aborted, and each of its requests answered 503.
        assert len(in_failed) > aborted >= 1, f"{len(in_failed)} requests in {aborted:.0f} aborted transactions"

    statuses = collections.Counter(a.status_code for a in answers)
    assert set(statuses) <= {202, 503, 504}, [a.text for a in answers if a.status_code not in (202, 503, 504)]
    assert all("nothing of them was written" in a.json()["detail"] for a in answers if a.status_code == 503)
    visible = _visible_tokens(api.settings)[token]
    # 5 orders per request: every 202 visible, nothing of a 503; a 504 (the stall met a commit) may be either.
    assert 5 * statuses[202] <= visible <= 5 * (statuses[202] + statuses[504]), (visible, statuses)
    print(f"grouped stall: {dict(statuses)}, {len(in_failed)} requests in {aborted:.0f} aborted transactions "
          f"(round {rounds})")


def test_a_keepalive_while_the_broker_is_gone_is_answered_504_and_keepalives_are_written_once_it_is_back(recovering_api):
    """Keep-alives go without a transaction (``KafkaSink.produce_record``): one the broker never acknowledged may
    have been written, so it is answered 504 with that reason (a transaction would be aborted: 503), within the
    produce timeout; once the broker is back, keep-alives are answered 202 again, and each 202 is in the topic."""
    stack, api = recovering_api
    restaurant = f"r-{uuid.uuid4().hex[:8]}"
    path = f"/restaurants/{restaurant}/keepalive"
    with api.client(api.key("ingest")) as writer:
        before = writer.post(path)
        assert before.status_code == 202, before.text

        assert stack.stop("kafka", sig=signal.SIGKILL) == "stopped"
        asked = time.monotonic()
        gone = writer.post(path)
        took = time.monotonic() - asked
        assert gone.status_code == 504, gone.text
        assert "may have been written" in gone.json()["detail"]
        assert PRODUCE_TIMEOUT - 0.5 < took < PRODUCE_TIMEOUT + 5, took  # the produce timeout bounds it

        assert stack.up()["kafka"] == "started"
        since = time.monotonic()
        while (after := writer.post(path)).status_code != 202:
            assert after.status_code in (503, 504), after.text
            assert time.monotonic() - since < RECOVERY_SECONDS, f"still {after.status_code}: {after.text}"
        again = writer.post(path)
        assert again.status_code == 202, again.text
    for answer in (before, after, again):
        body = answer.json()
        msg = read_at(api.settings.kafka_bootstrap, body["topic"], body["partition"], body["offset"])
        assert msg.key() == restaurant.encode()
    print(f"keep-alive: 504 after {took:.1f}s with the broker gone, 202 {time.monotonic() - since:.1f}s after it was back")
