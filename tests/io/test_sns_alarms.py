"""The SMS outbox: an alarm recorded once, its messages sent once through SNS, across a crash in between."""
from __future__ import annotations

import datetime
import os
import random
import subprocess
import sys
from decimal import Decimal

import psycopg

from orderflow.clients import aws_client
from orderflow.config import settings_environment
from orderflow.io.sns_alarms import record_alarms, relay_sms_outbox
from orderflow.model.alarms import Alarm
from tests.support.sns_testing import sent_sms

T0 = datetime.datetime(2026, 11, 18, 12, 0, tzinfo=datetime.timezone.utc)


def test_outbox_survives_a_crash_between_recording_and_sending(module_settings):
    dsn = module_settings.postgres_dsn
    phone = f"+5521{random.randint(10**8, 10**9 - 1)}"
    start = T0 + datetime.timedelta(days=3)
    alarm = Alarm("crash-rule", "*", start, start + datetime.timedelta(minutes=10), Decimal("7"), Decimal("5"))
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL)", (phone,))
        assert record_alarms(conn, [alarm])[0] == 1
        # "Crash": nothing sent yet. A second recording of the same window queues nothing new.
        assert record_alarms(conn, [alarm._replace(total=Decimal("9"))]) == (0, 0)
        sns = aws_client(module_settings, "sns")
        assert relay_sms_outbox(conn, sns) >= 1
        assert relay_sms_outbox(conn, sns) == 0
    assert [p for p, _ in sent_sms(module_settings.sns_endpoint_url, {phone})] == [phone]


def test_the_relay_run_by_hand_sends_what_is_pending_once(module_settings):
    """``python -m orderflow.io.sns_alarms``, as an operator runs it after an SNS outage, with the settings in its
    environment: every pending message is sent, to its phones, and a second run finds nothing left."""
    dsn = module_settings.postgres_dsn
    phones = {f"+5521{random.randint(10**8, 10**9 - 1)}" for _ in range(2)}
    start = T0 + datetime.timedelta(days=5)
    alarm = Alarm("by-hand", "*", start, start + datetime.timedelta(minutes=10), Decimal("8"), Decimal("5"))
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            for phone in phones:
                conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL)", (phone,))
        assert record_alarms(conn, [alarm])[0] == 1
        pending = conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone()[0]
    assert pending >= len(phones)  # ours, and any other phone registered by this module's tests
    env = {**os.environ, **settings_environment(module_settings)}

    def relay():
        done = subprocess.run([sys.executable, "-m", "orderflow.io.sns_alarms"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert relay() == f"sent {pending} pending SMS\n"
    sms = sent_sms(module_settings.sns_endpoint_url, phones)
    assert sorted(phone for phone, _ in sms) == sorted(phones)
    assert all("orderflow alarm by-hand: all clients traded 8 >= 5" in message for _, message in sms)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    assert relay() == "sent 0 pending SMS\n"
    assert len(sent_sms(module_settings.sns_endpoint_url, phones)) == len(phones)
