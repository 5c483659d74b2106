"""The SMS outbox: an alarm recorded once, its messages sent once through SNS, across a crash in between."""
from __future__ import annotations

import datetime
import random
from decimal import Decimal

import psycopg

from orderflow.clients import aws_client
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
