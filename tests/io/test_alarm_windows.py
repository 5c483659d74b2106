"""Alarm windows kept in Postgres: exact totals, a crossing fires once in the transaction of the orders that
cross, replays and restarts change nothing, and a redeployed rule set is computed from the stored orders."""
from __future__ import annotations

import datetime
import random
import zoneinfo
from decimal import Decimal

import apache_beam as beam
import psycopg
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from orderflow.clients import aws_endpoint
from orderflow.io.alarm_windows import AlarmWindows
from orderflow.io.postgres_orders import OrdersWriter, WriteOrdersToPostgres
from orderflow.io.sns_alarms import RelaySmsOutbox
from orderflow.model.alarms import AlarmRule
from tests.support.sns_testing import sent_sms

UTC = datetime.timezone.utc
SAO_PAULO = datetime.timezone(datetime.timedelta(hours=-3))
T0 = datetime.datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # on the 10-minute grid
ZONE = "America/Sao_Paulo"


def _order(order_id, client, total, seconds_after_t0, source=None, t0=T0):
    when = t0 + datetime.timedelta(seconds=seconds_after_t0)
    return {"order_id": order_id, "client_token": client, "asset": "WEGE3", "quantity": 1, "pricing_code": "W",
            "price": Decimal(total), "total": Decimal(total), "event_time": when,
            "trade_day": when.astimezone(SAO_PAULO).date(), "source_format": "JSON",
            "source": source or f"t/0/{order_id}#0"}


def _alarms(dsn, like="%"):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT rule_id, scope, window_start, total FROM alarms WHERE rule_id LIKE %s"
                            " ORDER BY 1, 2, 3", (like,)).fetchall()


def _totals(dsn, rule_id):
    with psycopg.connect(dsn) as conn:
        return dict(((s, w), t) for s, w, t in conn.execute(
            "SELECT scope, window_start, total FROM alarm_window_totals WHERE rule_id = %s", (rule_id,)))


@pytest.fixture
def phone(module_settings):
    number = f"+5511{random.randint(10**8, 10**9 - 1)}"
    with psycopg.connect(module_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL)", (number,))
    return number


def test_a_window_fires_once_in_the_transaction_whose_orders_cross_it(module_settings):
    dsn = module_settings.postgres_dsn
    rules = [AlarmRule("tx-day", "client", Decimal("50"))]
    writer = OrdersWriter(dsn, max_batches=1, alarm_windows=AlarmWindows(rules, ZONE))
    writer.start()
    writer.write([_order("x1", "ana", "30", 1)])
    assert _alarms(dsn, "tx-%") == [] and writer.alarms_fired == 0
    writer.write([_order("x2", "ana", "19.99", 2), _order("x1", "ana", "30", 1, "t/1/5#0")])  # x1 again: a duplicate
    assert _alarms(dsn, "tx-%") == []
    # A transaction that crosses and then fails leaves nothing: no total, no alarm.
    writer.max_batches = 2
    writer.write([_order("x3", "ana", "5", 3)])
    writer.rollback()
    assert _alarms(dsn, "tx-%") == [] and sum(_totals(dsn, "tx-day").values()) == Decimal("49.99")
    writer.write([_order("x3", "ana", "5", 3)])
    writer.commit()
    day_start = datetime.datetime(2026, 11, 18, 3, tzinfo=UTC)
    assert _alarms(dsn, "tx-%") == [("tx-day", "ana", day_start, Decimal("54.99"))]
    assert writer.alarms_fired == 1
    # The same orders once more (a replay after a crash): nothing is inserted, so nothing is added or fired.
    writer.max_batches = 1
    writer.write([_order("x1", "ana", "30", 1), _order("x2", "ana", "19.99", 2), _order("x3", "ana", "5", 3),
                  _order("x4", "ana", "1", 4)])
    assert _totals(dsn, "tx-day") == {("ana", day_start): Decimal("55.99")}
    assert len(_alarms(dsn, "tx-%")) == 1 and writer.alarms_fired == 1
    writer.close()


def test_a_redeployed_rule_set_is_computed_from_the_stored_orders(module_settings, phone):
    dsn = module_settings.postgres_dsn
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    t0 = now - datetime.timedelta(minutes=20)
    first = [AlarmRule("re-day", "client", Decimal("100"))]
    writer = OrdersWriter(dsn, max_batches=1, alarm_windows=AlarmWindows(first, ZONE))
    writer.start()
    writer.write([_order(f"r{i}", "bia", "10", 60 * i, t0=t0) for i in range(8)])  # bia: 80 today, under 100
    writer.close()
    assert _alarms(dsn, "re-%") == []

    # Redeployed with a lower threshold and a new sliding rule over all clients: both already crossed.
    second = [AlarmRule("re-day", "client", Decimal("75")), AlarmRule("re-30m", "all", Decimal("60"), "sliding", 1800, 600)]
    windows = AlarmWindows(second, ZONE)
    with psycopg.connect(dsn) as conn:
        changed, fired, queued = windows.sync(conn, now=now)
    assert changed == ["re-30m"]  # re-day's windows did not change: its totals are kept as they are
    sliding = _totals(dsn, "re-30m")
    # Every 30-minute window on the 10-minute grid holds exactly the orders of its stretch, as summed by hand.
    for (scope, start), total in sliding.items():
        expected = sum(Decimal(10) for i in range(8) if start <= t0 + datetime.timedelta(minutes=i)
                       < start + datetime.timedelta(minutes=30))
        assert (scope, total) == ("*", expected)
    crossed = {start for (_, start), total in sliding.items() if total >= 60}
    assert crossed, "no sliding window reached 60: the check proves nothing"
    assert {(r, s, w) for r, s, w, _ in _alarms(dsn, "re-%")} == (
        {("re-day", "bia", _day_start(now))} | {("re-30m", "*", w) for w in crossed})
    assert fired == 1 + len(crossed) and queued == fired  # one SMS per alarm to the one phone

    # Started again with the same rules: nothing to compute, nothing fires twice.
    with psycopg.connect(dsn) as conn:
        assert AlarmWindows(second, ZONE).sync(conn, now=now) == ([], 0, 0)
    # A rule dropped and added again later is computed again: orders stored while it was gone count.
    with psycopg.connect(dsn) as conn:
        AlarmWindows(second[:1], ZONE).sync(conn, now=now)
    writer = OrdersWriter(dsn, max_batches=1, alarm_windows=AlarmWindows(second[:1], ZONE))
    writer.write([_order("r-late", "caio", "10", 60 * 9, t0=t0)])
    writer.close()
    with psycopg.connect(dsn) as conn:
        assert AlarmWindows(second, ZONE).sync(conn, now=now)[0] == ["re-30m"]
    assert sum(_totals(dsn, "re-30m").values()) == sum(sliding.values()) + 3 * Decimal(10)


def _day_start(now: datetime.datetime) -> datetime.datetime:
    local = now.astimezone(SAO_PAULO)
    return datetime.datetime(local.year, local.month, local.day, tzinfo=SAO_PAULO).astimezone(UTC)


def _streaming():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def test_duplicates_counted_once_and_each_window_fires_once_with_one_sms_per_phone(module_settings):
    dsn = module_settings.postgres_dsn
    phones = {f"+5511{random.randint(10**8, 10**9 - 1)}" for _ in range(3)}
    all_phone, ana_phone, bia_phone = sorted(phones)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token, active) VALUES (%s, NULL, true), "
                     "(%s, 'ana-d', true), (%s, 'bia-d', true), ('+5511000000000', NULL, false)",
                     (all_phone, ana_phone, bia_phone))
        # The module's other tests left orders that these new rules would be computed over (and fire on).
        conn.execute("TRUNCATE orders, client_daily_volume")
    rules = [AlarmRule("all-10m-dup", "all", Decimal("100"), "sliding", 600, 600),
             AlarmRule("client-day-dup", "client", Decimal("50"))]
    at = Timestamp(int(T0.timestamp()))
    # 'ana-d' sends 40 twice (a duplicate delivered by another record): counted once, she stays at 40 < 50.

    def stream():
        return (TestStream()
                .advance_watermark_to(at)
                .add_elements([[_order("d1", "ana-d", "40", 10, "t/0/1#0"), _order("d2", "bia-d", "30", 20)]])
                .add_elements([[_order("d1", "ana-d", "40", 10, "t/1/9#0"), _order("d3", "bia-d", "25", 30)]])
                .add_elements([[_order("d4", "caio-d", "10", 40)]])
                .advance_watermark_to_infinity())

    def run():
        with TestPipeline(options=_streaming()) as p:
            written = p | stream() | WriteOrdersToPostgres(dsn, alarm_windows=AlarmWindows(rules, ZONE))
            _ = ((written.sms_queued, p | beam.Create([None])) | beam.Flatten()
                 | RelaySmsOutbox(module_settings.postgres_dsn, aws_endpoint(module_settings, "sns")))

    run()
    # all clients in [0, 600): 40 + 30 + 25 + 10 = 105, crossed by caio's order; bia's day: 55; ana's: 40.
    assert [(r, s, t) for r, s, _, t in _alarms(dsn, "%-dup")] == [
        ("all-10m-dup", "*", Decimal("105")), ("client-day-dup", "bia-d", Decimal("55"))]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    sms = sent_sms(module_settings.sns_endpoint_url, phones)
    # all_phone gets both alarms, bia's phone gets hers, ana's phone none; the inactive phone none.
    assert sorted(phone for phone, _ in sms) == sorted([all_phone, all_phone, bia_phone])
    assert any("client bia-d traded 55 >= 50" in message for _, message in sms)

    run()  # the same stream again (a replay): nothing new is recorded or sent
    assert len(sent_sms(module_settings.sns_endpoint_url, phones)) == 3
    assert len(_alarms(dsn, "%-dup")) == 2


def test_a_day_window_holds_the_orders_of_its_first_and_last_millisecond_in_sao_paulo(module_settings):
    """Through the sink: orders at exactly 00:00:00.000 and 23:59:59.999 of a day in São Paulo (trading day from
    ``price_order``, as the pipeline prices them) land in that day's stored window, whose start is local midnight
    (03:00 UTC), and together cross its threshold; the orders at the previous day's 23:59:59.999 and the next
    day's 00:00:00.000 land in their own windows and cross nothing."""
    from orderflow.model.pricing import price_order

    zone = zoneinfo.ZoneInfo(ZONE)
    dsn = module_settings.postgres_dsn

    def priced(order_id, total, *local):
        when = datetime.datetime(*local, tzinfo=zone)
        snapshot = {str(when.astimezone(zone).date()): {"WEGE3": ("W", Decimal(total))}}
        order = {"order_id": order_id, "client_token": "mid", "asset": "WEGE3", "quantity": 1, "event_time": when,
                 "source_format": "JSON", "source": f"t/0/{order_id}#0"}
        return price_order(order, snapshot, zone)

    orders = [priced("m-before", "40", 2026, 11, 9, 23, 59, 59, 999000),
              priced("m-first", "30", 2026, 11, 10, 0, 0, 0, 0),
              priced("m-last", "20", 2026, 11, 10, 23, 59, 59, 999000),
              priced("m-next", "45", 2026, 11, 11, 0, 0, 0, 0)]
    writer = OrdersWriter(dsn, max_batches=1,
                          alarm_windows=AlarmWindows([AlarmRule("mid-day", "client", Decimal("50"))], ZONE))
    writer.start()
    writer.write(orders)
    writer.close()

    def midnight(day):
        return datetime.datetime(2026, 11, day, 3, tzinfo=UTC)

    assert _totals(dsn, "mid-day") == {("mid", midnight(9)): Decimal("40"), ("mid", midnight(10)): Decimal("50"),
                                       ("mid", midnight(11)): Decimal("45")}
    assert _alarms(dsn, "mid-%") == [("mid-day", "mid", midnight(10), Decimal("50"))]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT window_end FROM alarms WHERE rule_id = 'mid-day'").fetchone() == (midnight(11),)
