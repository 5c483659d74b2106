"""What the moto server recorded as sent SMS (moto keeps every Publish to a phone number), and a probe that
proves the running pipeline's SMS relay has drained its outbox since."""
from __future__ import annotations

import json
import urllib.request
import uuid

import psycopg

from tests.support.waiting import wait_for


def sent_sms(sns_endpoint_url: str, phones: set[str] | None = None) -> list[tuple[str, str]]:
    """``(phone, message)`` of every SMS the moto server accepted, optionally only to ``phones``."""
    with urllib.request.urlopen(f"{sns_endpoint_url}/moto-api/data.json", timeout=30) as response:
        data = json.load(response)
    messages = [(m["phone_number"], m["message"]) for m in data.get("sns", {}).get("SMS", [])]
    return [m for m in messages if phones is None or m[0] in phones]


def relay_tick_passed(settings, what: str, timeout: float, pipeline=None) -> None:
    """Waits until the running orders pipeline's SMS relay has drained the outbox once more: a probe message
    queued now (an alarm row of its own and one outbox row to a phone no one else uses) is sent. The relay
    takes every pending row in one tick, so anything a run could still (re)send from the outbox has been sent
    by then: "nothing more is sent" can be asserted on a positive signal rather than after a sleep. The probe's
    rows are deleted afterwards, so the alarms table holds only the pipeline's own."""
    probe = uuid.uuid4()
    phone = f"+5599{probe.int % 10**9:09d}"
    key = (f"probe-{probe.hex[:12]}", "*", "2000-01-01T00:00Z")
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold) VALUES"
                     " (%s, %s, %s, '2000-01-02T00:00Z', 1, 1)", key)
        queued = conn.execute("INSERT INTO sms_outbox (rule_id, scope, window_start, phone, message) VALUES"
                              " (%s, %s, %s, %s, 'relay probe') RETURNING created_at", (*key, phone)).fetchone()[0]

    def drained():
        # Sent, and so is every row queued before it (another relay instance may still be sending one it
        # claimed while this tick skipped it).
        if not sent_sms(settings.sns_endpoint_url, {phone}):
            return False
        with psycopg.connect(settings.postgres_dsn) as conn:
            return conn.execute("SELECT count(*) = 0 FROM sms_outbox WHERE sent_at IS NULL AND created_at <= %s",
                                (queued,)).fetchone()[0]

    try:
        wait_for(drained, timeout, f"a relay tick after {what}", pipeline)
    finally:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM sms_outbox WHERE rule_id = %s", (key[0],))
            conn.execute("DELETE FROM alarms WHERE rule_id = %s", (key[0],))
