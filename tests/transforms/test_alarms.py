"""Windowed alarms with TestStream: on-time early firing, late data, duplicates, once per rule and window."""
from __future__ import annotations

import datetime
import random
from decimal import Decimal

import apache_beam as beam
import psycopg
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import FixedWindows, GlobalWindows, IntervalWindow, SlidingWindows
from apache_beam.utils.timestamp import Timestamp

from orderflow.clients import aws_client
from orderflow.io.postgres_orders import WriteOrdersToPostgres
from orderflow.io.sns_alarms import RecordAlarms, RelaySmsOutbox, record_alarms, relay_sms_outbox
from orderflow.transforms.alarms import Alarm, AlarmRule, WindowedAlarms, parse_rules, rule_windows
from tests.support.sns_testing import sent_sms

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # on the 10-minute grid
T0_S = int(T0.timestamp())
RULES = [AlarmRule("all-10m", "all", Decimal("100"), "sliding", 600, 300),
         AlarmRule("client-day", "client", Decimal("50"))]


def _order(order_id, client, total, seconds_after_t0, source=None):
    when = T0 + datetime.timedelta(seconds=seconds_after_t0)
    return {"order_id": order_id, "client_token": client, "asset": "WEGE3", "quantity": 1, "pricing_code": "W",
            "price": Decimal(total), "total": Decimal(total), "event_time": when,
            "trade_day": when.astimezone(datetime.timezone(datetime.timedelta(hours=-3))).date(),
            "source_format": "JSON", "source": source or f"t/0/{order_id}#0"}


def _streaming():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _at(seconds):
    return Timestamp(T0_S + seconds)


def test_parse_rules_and_reject_bad_ones(tmp_path):
    rules = parse_rules('[{"id": "a", "scope": "client", "window": "day", "threshold": "10.5"},'
                        ' {"id": "b", "window": {"size_seconds": 3600, "period_seconds": 600}, "threshold": 7}]')
    assert rules == [AlarmRule("a", "client", Decimal("10.5")), AlarmRule("b", "all", Decimal(7), "sliding", 3600, 600)]
    path = tmp_path / "rules.json"
    path.write_text('[{"id": "c", "window": {"size_seconds": 60}, "threshold": "1"}]')
    assert parse_rules(f"@{path}") == [AlarmRule("c", "all", Decimal(1), "sliding", 60, 60)]
    for bad in ('[{"id": "x", "scope": "team", "threshold": 1}]',
                '[{"id": "x", "window": {"size_seconds": 100, "period_seconds": 30}, "threshold": 1}]',
                '[{"id": "x", "threshold": 0}]', '[{"id": "x", "threshold": 1}, {"id": "x", "threshold": 2}]'):
        with pytest.raises(ValueError):
            parse_rules(bad)


def test_rule_windows_are_standard_and_days_follow_the_exchange_time_zone():
    day_windows = rule_windows(RULES[1], "America/Sao_Paulo")
    assert isinstance(day_windows, FixedWindows)
    # Local noon of 2026-11-18 in São Paulo (UTC-3) is in [03:00 UTC, next 03:00 UTC).
    noon = Timestamp.from_utc_datetime(datetime.datetime(2026, 11, 18, 15, tzinfo=UTC))
    [window] = day_windows.assign(FixedWindows.AssignContext(noon))
    start = Timestamp.from_utc_datetime(datetime.datetime(2026, 11, 18, 3, tzinfo=UTC))
    assert window == IntervalWindow(start, start + 86400)
    sliding = rule_windows(RULES[0], "America/Sao_Paulo")
    assert isinstance(sliding, SlidingWindows)
    assert sorted(w.start for w in sliding.assign(SlidingWindows.AssignContext(_at(320)))) == [_at(0), _at(300)]


def test_alarms_fire_early_once_crossed_and_late_data_does_not_double_count():
    stream = (TestStream()
              .advance_watermark_to(_at(0))
              .add_elements([[_order("1", "ana", "60", 10)]], event_timestamp=_at(10))
              .add_elements([[_order("2", "bia", "30", 320), _order("3", "bia", "20", 330)]], event_timestamp=_at(320))
              .advance_watermark_to(_at(650))
              # Late for [0, 600) but within the allowed lateness (120 s): counted once, in a late pane.
              .add_elements([[_order("4", "caio", "5", 200)]], event_timestamp=_at(200))
              .advance_watermark_to(_at(900))
              # Beyond the allowed lateness of [-300, 300) and [0, 600): dropped there; its day is still open.
              .add_elements([[_order("5", "caio", "500", 100)]], event_timestamp=_at(100))
              .advance_watermark_to_infinity())
    with TestPipeline(options=_streaming()) as p:
        alarms = p | stream | WindowedAlarms(RULES, allowed_lateness_seconds=120)
        # One output for every branch, in the global window: each Alarm names its own window.
        assert isinstance(alarms.windowing.windowfn, GlobalWindows)
        keyed = alarms | beam.Map(lambda a: ((a.rule_id, a.scope, int(a.window_start.timestamp()) - T0_S), a.total))

        def check(actual):
            by_window = {}
            for key, total in actual:
                by_window.setdefault(key, set()).add(total)
            day = 3 * 3600 - 12 * 3600  # the São Paulo day started at 03:00 UTC, T0 is 12:00
            assert set(by_window) == {("all-10m", "*", 0), ("client-day", "ana", day), ("client-day", "bia", day),
                                      ("client-day", "caio", day)}, by_window
            # Fired early at 110 (before the watermark reached the window end), the late pane carries 115: the
            # accumulated total, not 110 + 115; the order beyond the allowed lateness never counted.
            assert by_window[("all-10m", "*", 0)] == {Decimal("110"), Decimal("115")}
            assert by_window[("client-day", "ana", day)] == {Decimal("60")}
            assert by_window[("client-day", "bia", day)] == {Decimal("50")}  # >= threshold fires
            assert max(by_window[("client-day", "caio", day)]) == Decimal("505")

        assert_that(keyed, check)


def test_duplicates_counted_once_and_each_window_fires_once_with_one_sms_per_phone(module_settings):
    dsn = module_settings.postgres_dsn
    phones = {f"+5511{random.randint(10**8, 10**9 - 1)}" for _ in range(3)}
    all_phone, ana_phone, bia_phone = sorted(phones)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token, active) VALUES (%s, NULL, true), "
                     "(%s, 'ana', true), (%s, 'bia', true), ('+5511000000000', NULL, false)",
                     (all_phone, ana_phone, bia_phone))
    rules = [AlarmRule("all-10m-dup", "all", Decimal("100"), "sliding", 600, 600),
             AlarmRule("client-day-dup", "client", Decimal("50"))]
    # 'ana' sends 40 twice (a duplicate delivered by another record): counted once, she stays at 40 < 50.

    def stream():
        return (TestStream()
                .advance_watermark_to(_at(0))
                .add_elements([[_order("d1", "ana", "40", 10, "t/0/1#0"), _order("d2", "bia", "30", 20)]],
                              event_timestamp=_at(10))
                .add_elements([[_order("d1", "ana", "40", 10, "t/1/9#0"), _order("d3", "bia", "25", 30)]],
                              event_timestamp=_at(10))
                .add_elements([[_order("d4", "caio", "10", 40)]], event_timestamp=_at(40))
                .advance_watermark_to_infinity())

    def run():
        with TestPipeline(options=_streaming()) as p:
            owned = (p | stream() | WriteOrdersToPostgres(dsn)).owned
            ticks = owned | WindowedAlarms(rules) | RecordAlarms(dsn)
            _ = (ticks, p | beam.Create([None])) | beam.Flatten() | RelaySmsOutbox(module_settings)

    run()
    with psycopg.connect(dsn) as conn:
        alarms = conn.execute("SELECT rule_id, scope, total FROM alarms WHERE rule_id LIKE '%%-dup' ORDER BY 1, 2").fetchall()
        # all clients in [0, 600): 40 + 30 + 25 + 10 = 105 (not 145); bia's day: 55; ana's day: 40, no alarm.
        assert [(r, s) for r, s, _ in alarms] == [("all-10m-dup", "*"), ("client-day-dup", "bia")]
        assert alarms[0][2] >= Decimal("100") and alarms[0][2] <= Decimal("105")
        assert conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    sms = sent_sms(module_settings.sns_endpoint_url, phones)
    # all_phone gets both alarms, bia's phone gets hers, ana's phone none; the inactive phone none.
    assert sorted(phone for phone, _ in sms) == sorted([all_phone, all_phone, bia_phone])
    assert any("client bia" in message for _, message in sms)

    run()  # the same stream again (a replay): nothing new is recorded or sent
    assert len(sent_sms(module_settings.sns_endpoint_url, phones)) == 3


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
