"""Health, metrics, OpenAPI docs, the keys CLI and the dashboard's JSON/SSE feed, against the real stack."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import port_for

from orderflow.model.presence import AvailabilityChange
from tests.support.served_api import ServedApi


def test_healthz_checks_every_dependency(anonymous):
    resp = anonymous.get("/healthz")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert set(body["checks"]) == {"postgres", "redis", "kafka", "dynamodb"}


def test_healthz_names_the_failing_dependency(api_settings, api_config):
    dead_port = port_for.select_random()
    broken = dataclasses.replace(api_settings, redis_url=f"redis://127.0.0.1:{dead_port}/0",
                                 client_volume_table="no-such-table")
    served = ServedApi(broken, api_config).start()
    try:
        with served.client() as client:
            resp = client.get("/healthz")
            assert resp.status_code == 503
            body = resp.json()
            assert body["failing"] == ["dynamodb", "redis"]
            assert body["checks"]["postgres"] == "ok" and body["checks"]["kafka"] == "ok"
            assert "no-such-table" in body["checks"]["dynamodb"] or "ResourceNotFound" in body["checks"]["dynamodb"]
            # A query whose store is down answers 503 naming it, not a bare 500.
            with served.client(served.key("read")) as reader:
                resp = reader.get("/restaurants/status", params={"ids": "r-1"})
                assert resp.status_code == 503 and resp.json()["detail"].startswith("redis unavailable")
    finally:
        served.stop()


def test_metrics_count_requests_by_route(anonymous, reader):
    reader.get("/orders/metrics-probe")
    text = anonymous.get("/metrics").text
    assert 'orderflow_api_requests_total{method="GET",route="/orders/{order_id:path}",status="404"}' in text
    assert "orderflow_api_request_seconds_bucket" in text


def test_openapi_and_docs(anonymous):
    spec = anonymous.get("/openapi.json").json()
    assert {"/orders", "/restaurants/status", "/reports/offline-ranking", "/healthz"} <= set(spec["paths"])
    assert set(spec["paths"]["/orders"]["post"]["requestBody"]["content"]) >= {"application/json", "text/csv"}
    assert anonymous.get("/docs").status_code == 200


def _cli(settings, *args):
    env = {**os.environ, "ORDERFLOW_POSTGRES_DSN": settings.postgres_dsn}
    return subprocess.run([sys.executable, "-m", "orderflow.api", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_keys_cli_creates_a_working_key_and_refuses_bad_scopes(api, api_settings):
    done = _cli(api_settings, "keys", "create", "--scope", "client:alice", "--scope", "read", "--name", "cli")
    assert done.returncode == 0, done.stderr
    key = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("key:"))
    with api.client(key) as client:
        assert client.get("/alarms").status_code == 200
    import psycopg

    with psycopg.connect(api_settings.postgres_dsn) as conn:
        stored = conn.execute("SELECT key_sha256, scopes FROM api_keys WHERE key_id = %s", (key.split("_")[1],)).fetchone()
    assert key.encode() not in bytes(stored[0]) and len(bytes(stored[0])) == 32  # only the digest is kept
    assert stored[1] == ["client:alice", "read"]
    bad = _cli(api_settings, "keys", "create", "--scope", "superuser")
    assert bad.returncode == 2 and "invalid scope 'superuser'" in bad.stderr
    bad = _cli(api_settings, "keys", "create", "--scope", "client:a/b")  # client tokens are URL-safe
    assert bad.returncode == 2 and "invalid scope 'client:a/b'" in bad.stderr


def test_dashboard_snapshot_and_live_events(api, reader, anonymous, state_store):
    assert anonymous.get("/dashboard").status_code == 200
    assert anonymous.get("/dashboard/snapshot").status_code == 401
    assert anonymous.get("/dashboard/events").status_code == 401
    with api.client(api.key("ingest")) as ingest_only:
        assert ingest_only.get("/dashboard/snapshot").status_code == 403
        assert ingest_only.get("/dashboard/events").status_code == 403
        assert ingest_only.post("/dashboard/session").status_code == 403

    before = reader.get("/dashboard/snapshot").json()
    assert set(before) >= {"status_counts", "offline_ranking", "client_volumes", "day"}
    unavailable_before = before["status_counts"]["offline_reasons"].get("unavailable", 0)

    browser = api.client()  # as the page does: the key once, in a header, for a session cookie
    signed_in = browser.post("/dashboard/session", headers={"X-API-Key": api.key("read")})
    assert signed_in.status_code == 200, signed_in.text
    assert "orderflow_dashboard" in browser.cookies
    with browser.stream("GET", "/dashboard/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = _next_snapshot(lines)
        assert first["status_counts"]["offline_reasons"].get("unavailable", 0) == unavailable_before
        now_ms = int(time.time() * 1000)
        state_store.apply_changes([AvailabilityChange("sse-1", "sse-restaurant", "SET_STATUS", "UNAVAILABLE",
                                                      None, "HOLIDAYS", None, None, now_ms)])
        changed = _next_snapshot(lines)
        assert changed["status_counts"]["offline_reasons"]["unavailable"] == unavailable_before + 1


def test_the_dashboard_counts_restaurants_connected_over_mqtt(reader, state_store):
    before = reader.get("/dashboard/snapshot").json()["status_counts"]
    now_ms = int(time.time() * 1000)
    # Two restaurants connect over MQTT (the bridge's CONNECTED), then one's last will arrives.
    state_store.apply_changes([
        AvailabilityChange.event(f"mqtt-{n}", f"mqtt-dashboard-{n}", "CONNECTED", now_ms - 1000) for n in (1, 2)])
    state_store.apply_changes([AvailabilityChange.event("mqtt-3", "mqtt-dashboard-2", "DISCONNECTED", now_ms)])
    after = reader.get("/dashboard/snapshot").json()["status_counts"]
    assert after["mqtt_connected"] == before["mqtt_connected"] + 1
    assert after["mqtt_disconnected"] == before["mqtt_disconnected"] + 1
    assert after["offline_reasons"]["disconnected"] == before["offline_reasons"].get("disconnected", 0) + 1


def _next_snapshot(lines) -> dict:
    deadline = time.monotonic() + 20
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])
        assert time.monotonic() < deadline, "no snapshot event in time"
    raise AssertionError("event stream ended")
