"""The API's log as ``python -m orderflow.api serve`` writes it: one JSON object per line with the fields an
operator filters on, and no API key or dashboard token in it, even when a client puts one in a URL."""
from __future__ import annotations

import json

import httpx
import port_for

from orderflow.api.auth import create_key, dashboard_token
from orderflow_dev.demo.api import start_detached
from orderflow_dev.local.processes import DetachedProcess


def test_api_log_lines_are_json_with_fields_and_no_secrets(api_settings, tmp_path):
    root = str(tmp_path)
    try:
        url, _ = start_detached(api_settings, root, port=port_for.select_random())
        _, key = create_key(api_settings.postgres_dsn, ["read"], name="log-test")
        token, _ = dashboard_token(key, 600)
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/restaurants/status", params={"ids": "r-1"}, headers={"X-API-Key": key}).status_code == 200
            assert http.get("/dashboard/events", params={"key": key}).status_code == 400  # a key in a URL: refused
            assert http.get(f"/restaurants/status?ids=r-1&token={token}").status_code == 401
            assert http.post("/dashboard/session", headers={"X-Dashboard-Token": token}).status_code == 200
            assert http.get("/orders/no-such-order", headers={"Authorization": f"Bearer {key}"}).status_code == 404
    finally:
        DetachedProcess("api", root).stop()
    text = DetachedProcess("api", root).log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("== ")]  # "== starting" marks
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message", "process_name"} <= r.keys() for r in records)
    assert {r["process_name"] for r in records} == {"api"}
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert {(r["method"], r["status"]) for r in access} >= {("GET", 200), ("GET", 400), ("GET", 401), ("POST", 200),
                                                             ("GET", 404)}
    assert any(r["path"] == "/dashboard/events?key=[redacted]" for r in access)
    # The random parts whole (the key's after "of_<id>_", the token's mac after "odt_<id>_<expiry>_": base64url,
    # itself possibly holding "_"), and no 12 characters of them (72 bits: never in a log by chance) either,
    # so a partly redacted secret is caught too.
    key_secret, token_mac = key.split("_", 2)[2], token.split("_", 3)[3]
    assert len(key_secret) == len(token_mac) == 43  # 32 bytes in base64url, no padding
    for secret in (key, token, key_secret, token_mac):
        assert secret not in text
    for secret in (key_secret, token_mac):  # (the key id and the expiry are not secret: they may be logged)
        assert not [secret[i:i + 12] for i in range(len(secret) - 11) if secret[i:i + 12] in text], secret
