"""The API as an operator runs it: ``python -m orderflow.api serve --workers 2`` configured by the ``ORDERFLOW_*``
and ``ORDERFLOW_API_*`` variables, ``keys revoke`` against its key cache (a non-zero cache time, as deployed);
and /healthz with PostgreSQL down."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import port_for
import pytest

from orderflow.api.auth import create_key
from orderflow.config import settings_environment
from tests.support.served_api import ServedApi

CACHE_SECONDS = 15
SERVE_HOST = "127.0.0.2"  # loopback too (127.0.0.0/8), but not the default 127.0.0.1: --host must be obeyed


def _api_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow.api", *args], env={**os.environ, **settings_environment(
        settings)}, capture_output=True, text=True, timeout=60)


def _children(pid: int) -> list[int]:
    return [int(child) for task in pathlib.Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _wait_answering(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stderr.read()[-3000:]
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not answer"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(api_settings):
    """``serve --host 127.0.0.2 --workers 2`` in a subprocess (another loopback address than the default
    127.0.0.1), limits and the key cache from ORDERFLOW_API_* variables."""
    port = port_for.select_random()
    env = {**os.environ, **settings_environment(api_settings), "ORDERFLOW_API_MAX_IDS": "3",
           "ORDERFLOW_API_MAX_ORDERS": "2", "ORDERFLOW_API_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
           "ORDERFLOW_API_KEEP_ALIVE": "60", "ORDERFLOW_API_AUTH_FAILURES_PER_MINUTE": "100000"}
    process = subprocess.Popen([sys.executable, "-m", "orderflow.api", "serve", "--host", SERVE_HOST, "--port",
                                str(port), "--workers", "2"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    url = f"http://{SERVE_HOST}:{port}"
    try:
        _wait_answering(url, process)
        yield process, url
    finally:
        process.terminate()  # uvicorn's manager stops its workers on SIGTERM
        process.wait(30)


def test_a_bad_limit_in_the_environment_stops_serve_with_an_error_naming_it():
    """An operator's typo is one line naming each bad variable and exit status 2, not a traceback (and nothing
    is served: nothing here starts a stack)."""
    port = port_for.select_random()
    env = {**os.environ, "ORDERFLOW_API_MAX_IDS": "abc", "ORDERFLOW_API_BODY_TIMEOUT": "30s",
           "ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS": "2m"}
    result = subprocess.run([sys.executable, "-m", "orderflow.api", "serve", "--port", str(port)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for variable, value in [("ORDERFLOW_API_MAX_IDS", "abc"), ("ORDERFLOW_API_BODY_TIMEOUT", "30s"),
                            ("ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS", "2m")]:
        assert f"{variable}={value!r} is not" in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)


def test_serve_runs_the_asked_workers_with_the_limits_of_the_environment(served, api_settings):
    process, url = served
    deadline = time.monotonic() + 30
    while len(workers := [p for p in _children(process.pid)
                          if "spawn_main" in pathlib.Path(f"/proc/{p}/cmdline").read_text()]) < 2:
        assert time.monotonic() < deadline, _children(process.pid)
        time.sleep(0.2)
    assert len(workers) == 2
    key = create_key(api_settings.postgres_dsn, ["read", "ingest"], name="cli-test")[1]
    for _ in range(6):  # new connections: both workers answer with the same limits
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
            resp = client.get("/restaurants/status", params={"ids": "a,b,c,d"})
            assert resp.status_code == 422 and "at most 3 per request" in resp.json()["detail"], resp.text
            resp = client.post("/orders", json=[{"ativo": "PETR4", "quantidade": 1, "token": "t"}] * 3)
            assert resp.status_code == 413, resp.text


def test_serve_listens_on_the_asked_host_only(served):
    """``--host 127.0.0.2``: the API answers there, and nothing listens on the default 127.0.0.1 at its port."""
    _, url = served
    assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url.replace(SERVE_HOST, "127.0.0.1") + "/openapi.json", timeout=10)


def _lookups(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'^orderflow_api_key_lookups_total\{result="(\w+)"\} (\S+)$',
                                                    text, re.M)}


def test_a_key_is_answered_from_the_cache_and_refused_once_revoked_and_expired(served, api_settings):
    _, url = served
    key_id, key = create_key(api_settings.postgres_dsn, ["read"], name="cache-test")
    # One keep-alive connection: one worker, whose cache and counters these are.
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        before = _lookups(client)
        for _ in range(5):
            assert client.get("/alarms").status_code == 200
        after = _lookups(client)
        # Looked up in PostgreSQL once, then answered from memory.
        assert after.get("found", 0) - before.get("found", 0) == 1
        assert after.get("cached", 0) - before.get("cached", 0) == 4

        revoked = _api_cli(api_settings, "keys", "revoke", key_id)
        assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {key_id}", revoked.stderr
        again = _api_cli(api_settings, "keys", "revoke", key_id)
        assert again.returncode == 1 and f"no active key {key_id}" in again.stderr
        # The cache honours the key for up to its time, then the revocation shows.
        deadline = time.monotonic() + CACHE_SECONDS + 60  # only a key never refused exceeds it
        while (resp := client.get("/alarms")).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key still accepted after the cache time"
            time.sleep(0.5)
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]


def test_healthz_names_postgres_when_it_is_down(api_settings, api_config):
    closed = port_for.select_random()
    broken = dataclasses.replace(api_settings, postgres_dsn=f"postgresql://orderflow@127.0.0.1:{closed}/orderflow")
    served = ServedApi(broken, api_config).start()
    try:
        with served.client() as client:
            resp = client.get("/healthz")
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["failing"] == ["postgres"]
        # The pipelines' reports live in Postgres: unreadable, said in the checks, but Postgres is what fails.
        assert body["checks"]["pipelines"].startswith("reports unreadable")
        assert {name: state for name, state in body["checks"].items() if name not in ("postgres", "pipelines")} == {
            "redis": "ok", "kafka": "ok", "dynamodb": "ok"}
    finally:
        served.stop()


# Kafka's default transaction.abort.timed.out.transaction.cleanup.interval.ms (the local stack keeps it): how often
# the coordinator looks for transactions open past their timeout.
TRANSACTION_CLEANUP_INTERVAL = 10.0


def _stable_and_end_offsets(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """Per partition, ``(last stable offset, high watermark)``: a read_committed reader reads up to the first, which
    stays below the second while a transaction is open on the partition."""
    from confluent_kafka import Consumer, TopicPartition

    committed = Consumer({"bootstrap.servers": bootstrap, "group.id": "lso-probe", "isolation.level": "read_committed"})
    everything = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw-probe",
                           "isolation.level": "read_uncommitted"})
    try:
        return [(committed.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1],
                 everything.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]) for p in range(partitions)]
    finally:
        committed.close()
        everything.close()


def test_an_api_killed_mid_transaction_holds_read_committed_readers_until_the_transaction_timeout(api_settings):
    """``serve`` ingesting without pause is frozen (SIGSTOP) until a transaction of its is caught open on the
    orders topic (the last stable offset below the high watermark, and still there a second later), then killed
    (SIGKILL). read_committed readers (the orders pipeline) read nothing past that transaction until the
    coordinator aborts it: within the producers' transaction.timeout.ms (``transaction_timeout_seconds`` of
    ORDERFLOW_API_PRODUCE_TIMEOUT) plus the broker's check interval. Measured in docs/reliability.md."""
    from orderflow.api.kafka_sink import transaction_timeout_seconds

    produce_timeout = 2.0
    bound = transaction_timeout_seconds(produce_timeout) + TRANSACTION_CLEANUP_INTERVAL
    settings, topic = api_settings, api_settings.topics.orders
    port = port_for.select_random()
    env = {**os.environ, **settings_environment(settings), "ORDERFLOW_API_PRODUCE_TIMEOUT": str(produce_timeout)}
    process = subprocess.Popen([sys.executable, "-m", "orderflow.api", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    key = create_key(settings.postgres_dsn, ["ingest"], name="kill-test")[1]
    stop = threading.Event()

    def ingest() -> None:
        orders = [{"ativo": "PETR4", "quantidade": 1, "token": "kill-test"}] * 50
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=5) as client:
            while not stop.is_set():
                try:
                    client.post("/orders", json=orders)
                except httpx.TransportError:
                    pass  # frozen or killed: the request stays unanswered

    def open_transaction() -> bool:
        offsets = _stable_and_end_offsets(settings.kafka_bootstrap, topic, settings.topic_partitions)
        return any(stable < end for stable, end in offsets) and offsets == _stable_and_end_offsets(
            settings.kafka_bootstrap, topic, settings.topic_partitions)

    writers = [threading.Thread(target=ingest, daemon=True) for _ in range(4)]
    try:
        _wait_answering(url, process)
        for writer in writers:
            writer.start()
        freezes = 0
        while True:
            freezes += 1
            assert freezes <= 100, "no transaction caught open in 100 freezes"
            os.killpg(process.pid, signal.SIGSTOP)
            time.sleep(1)  # a commit already on its way to the coordinator completes meanwhile
            if open_transaction():
                break
            os.killpg(process.pid, signal.SIGCONT)
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        process.wait(30)
        held = [end for stable, end in _stable_and_end_offsets(settings.kafka_bootstrap, topic,
                                                               settings.topic_partitions) if stable < end]
        assert held, "the transaction ended before the kill"
        while any(stable < end for stable, end in _stable_and_end_offsets(settings.kafka_bootstrap, topic,
                                                                           settings.topic_partitions)):
            waited = time.monotonic() - killed
            assert waited <= bound, f"read_committed readers still held {waited:.1f}s after the kill"
            time.sleep(0.2)
        waited = time.monotonic() - killed
        print(f"\nread_committed readers held {waited:.1f}s after the kill (bound {bound:.0f}s; {freezes} freezes)")
    finally:
        stop.set()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    for writer in writers:
        writer.join(30)
