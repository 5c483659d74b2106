"""The API as an operator runs it: ``python -m orderflow.api serve --workers 2`` configured by the ``ORDERFLOW_*``
and ``ORDERFLOW_API_*`` variables, ``keys revoke`` against its key cache (a non-zero cache time, as deployed),
``stop`` of the detached API ``make demo`` starts; and /healthz with PostgreSQL down."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import httpx
import port_for
import pytest

from orderflow.api.auth import create_key
from orderflow.api.demo import start_detached
from orderflow.config import settings_environment
from orderflow.local.processes import DetachedProcess
from orderflow.local.stack import process_alive
from tests.support.served_api import ServedApi

CACHE_SECONDS = 15


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
    """``serve --workers 2`` in a subprocess, limits and the key cache from ORDERFLOW_API_* variables."""
    port = port_for.select_random()
    env = {**os.environ, **settings_environment(api_settings), "ORDERFLOW_API_MAX_IDS": "3",
           "ORDERFLOW_API_MAX_ORDERS": "2", "ORDERFLOW_API_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
           "ORDERFLOW_API_KEEP_ALIVE": "60", "ORDERFLOW_API_AUTH_FAILURES_PER_MINUTE": "100000"}
    process = subprocess.Popen([sys.executable, "-m", "orderflow.api", "serve", "--port", str(port), "--workers", "2"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
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


def test_stop_ends_the_detached_api_of_make_demo(api_settings, tmp_path):
    port = port_for.select_random()
    url, state = start_detached(api_settings, root=str(tmp_path), port=port)
    assert state == "started"
    pid = DetachedProcess("api", tmp_path).pid
    assert httpx.get(f"{url}/healthz", timeout=10).status_code in (200, 503)
    stopped = _api_cli(api_settings, "stop", "--root", str(tmp_path))
    assert stopped.returncode == 0 and re.fullmatch(r"api\s+stopped", stopped.stdout.strip()), stopped.stdout
    assert not process_alive(pid)  # (a zombie until this process, its parent, reaps it)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    again = _api_cli(api_settings, "stop", "--root", str(tmp_path))
    assert again.returncode == 0 and re.fullmatch(r"api\s+not running", again.stdout.strip()), again.stdout


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
