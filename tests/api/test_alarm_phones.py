"""Alarm phones managed without SQL: ``/alarm-phones`` (scope ``admin``) and ``python -m orderflow.api phones``;
what they register is what the alarm recorder queues SMS for."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal

import psycopg
import pytest

from orderflow.io.sns_alarms import record_alarms
from orderflow.model.alarms import Alarm


@pytest.fixture(scope="module")
def admin(api):
    with api.client(api.key("admin")) as client:
        yield client


def test_only_an_admin_key_manages_phones(api, reader, anonymous):
    assert anonymous.get("/alarm-phones").status_code == 401
    assert reader.get("/alarm-phones").status_code == 403
    resp = reader.put("/alarm-phones/+5511900000099", json={})
    assert resp.status_code == 403 and "admin" in resp.json()["detail"]
    with api.client(api.key("read", "ingest")) as everything_but_admin:
        assert everything_but_admin.delete("/alarm-phones/+5511900000099").status_code == 403


def test_register_update_list_and_remove(admin):
    resp = admin.put("/alarm-phones/+5511900000001", json={})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"phone": "+5511900000001", "client_token": None, "active": True}
    resp = admin.put("/alarm-phones/+5511900000001", json={"client_token": "alice", "active": False})
    assert resp.status_code == 200 and resp.json()["client_token"] == "alice"
    phones = admin.get("/alarm-phones").json()["phones"]
    assert {"phone": "+5511900000001", "client_token": "alice", "active": False} in phones
    assert admin.delete("/alarm-phones/+5511900000001").status_code == 204
    assert admin.delete("/alarm-phones/+5511900000001").status_code == 404
    assert all(p["phone"] != "+5511900000001" for p in admin.get("/alarm-phones").json()["phones"])


@pytest.mark.parametrize("phone, body, words", [
    ("5511900000001", {}, "phone"),                       # no +
    ("+55abc", {}, "phone"),
    ("+5511900000001", {"client_token": "a/b"}, "client_token"),
    ("+5511900000001", {"active": "yes"}, "active"),
    ("+5511900000001", {"email": "x@y"}, "email: Extra inputs are not permitted"),
])
def test_bad_phones_get_422(admin, phone, body, words):
    resp = admin.put(f"/alarm-phones/{phone}", json=body)
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["detail"]


def test_registered_phones_are_the_ones_alarms_are_queued_for(api_settings, admin):
    assert admin.put("/alarm-phones/+5511900000002", json={}).status_code == 201
    assert admin.put("/alarm-phones/+5511900000003", json={"client_token": "bob"}).status_code == 201
    assert admin.put("/alarm-phones/+5511900000004", json={"active": False}).status_code == 201
    start = dt.datetime(2026, 3, 2, 13, tzinfo=dt.timezone.utc)
    with psycopg.connect(api_settings.postgres_dsn) as conn:
        record_alarms(conn, [Alarm("phones-test", "bob", start, start + dt.timedelta(minutes=5), Decimal(10), Decimal(1))])
        queued = {r[0] for r in conn.execute("SELECT phone FROM sms_outbox WHERE rule_id = 'phones-test'")}
    assert queued == {"+5511900000002", "+5511900000003"}  # every-alarm phone and bob's; not the inactive one


def _cli(settings, *args):
    env = {**os.environ, "ORDERFLOW_POSTGRES_DSN": settings.postgres_dsn}
    return subprocess.run([sys.executable, "-m", "orderflow.api", "phones", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_phones_cli(api_settings, admin):
    done = _cli(api_settings, "add", "+5521900000005", "--client", "carol")
    assert done.returncode == 0, done.stderr
    assert "registered +5521900000005: alarms of client carol" in done.stdout
    assert {"phone": "+5521900000005", "client_token": "carol", "active": True} in admin.get("/alarm-phones").json()["phones"]
    assert "updated" in _cli(api_settings, "add", "+5521900000005", "--inactive").stdout
    listed = _cli(api_settings, "list").stdout
    assert "+5521900000005" in listed and "inactive" in listed
    assert _cli(api_settings, "remove", "+5521900000005").returncode == 0
    missing = _cli(api_settings, "remove", "+5521900000005")
    assert missing.returncode == 1 and "not registered" in missing.stderr
    bad = _cli(api_settings, "add", "21900000005")
    assert bad.returncode == 2 and "E.164" in bad.stderr
