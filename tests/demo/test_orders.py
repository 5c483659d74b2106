"""The ``make demo`` orders step on the test stack: its summary and every store it fills (PostgreSQL, DynamoDB,
the alarms and their SMS) against the generated session's intent, recomputed here, never the demo's own
numbers."""
from __future__ import annotations

import datetime
import re
import zoneinfo

import psycopg

from orderflow_dev.demo.orders import demo
from tests.support.orders_scenario import SLIDE_PERIOD, SLIDE_SIZE, demo_session, dynamodb_volumes
from tests.support.sns_testing import sent_sms

N, SEED = 2_000, 1  # this seed's session fires both kinds of the demo's alarms (2 client days, 9 windows)
DEMO_PHONE = "+5511900000001"  # the demo registers it for every scope


def test_the_summary_and_the_stores_match_the_generated_session(module_settings, capsys):
    zone = zoneinfo.ZoneInfo(module_settings.exchange_timezone)
    yesterday = {datetime.datetime.now(zone).date() - datetime.timedelta(days=1)}  # read before and after: midnight
    sms_before = len(sent_sms(module_settings.sns_endpoint_url, {DEMO_PHONE}))
    demo(module_settings, n=N, seed=SEED)
    yesterday.add(datetime.datetime.now(zone).date() - datetime.timedelta(days=1))
    out = capsys.readouterr().out
    day = datetime.date.fromisoformat(re.search(r"produced 2,000 records for (\S+):", out).group(1))
    assert day in yesterday, out

    kinds, expected, alarms = demo_session(N, SEED, day, module_settings.exchange_timezone)
    assert (f"{kinds['order']:,} orders, {kinds['duplicate']:,} duplicates, {kinds['malformed']:,} malformed"
            in out), out
    reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(expected["reasons"].items()))
    assert f"dead letters by reason: {reasons}\n" in out, out

    # The demo's rules, evaluated by hand (demo_session).
    assert SLIDE_SIZE == 3600 and SLIDE_PERIOD == 900  # the demo's sliding window, which expected_outcome assumes
    assert {rule for rule, _, _ in alarms} == {"demo-client-day", "demo-all-1h"}  # the check covers both kinds

    with psycopg.connect(module_settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == expected["unique"]
        stored = set(conn.execute("SELECT rule_id, scope, window_start FROM alarms").fetchall())
    assert stored == alarms
    assert dynamodb_volumes(module_settings, day) == expected["volumes"]
    assert f"alarms recorded: {len(alarms)}, SMS sent through SNS: {len(alarms)}\n" in out, out
    assert len(sent_sms(module_settings.sns_endpoint_url, {DEMO_PHONE})) - sms_before == len(alarms)
