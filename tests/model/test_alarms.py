"""Alarm rules: parsing, and which windows an order counts in (day windows in the exchange's zone, sliding
windows on the period grid), with expectations written out by hand."""
from __future__ import annotations

import datetime
import zoneinfo
from decimal import Decimal

import pytest

from orderflow.model.alarms import AlarmRule, WindowKey, parse_rules, window_increments, windows_of_slice

UTC = datetime.timezone.utc
SAO_PAULO = zoneinfo.ZoneInfo("America/Sao_Paulo")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def _ms(*args, tz=UTC) -> int:
    return int(datetime.datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_parse_rules_and_reject_bad_ones(tmp_path):
    rules = parse_rules('[{"id": "a", "scope": "client", "window": "day", "threshold": "10.5"},'
                        ' {"id": "b", "window": {"size_seconds": 3600, "period_seconds": 600}, "threshold": 7}]')
    assert rules == [AlarmRule("a", "client", Decimal("10.5")), AlarmRule("b", "all", Decimal(7), "sliding", 3600, 600)]
    path = tmp_path / "rules.json"
    path.write_text('[{"id": "c", "window": {"size_seconds": 60}, "threshold": 1}]')
    assert parse_rules(f"@{path}") == [AlarmRule("c", "all", Decimal(1), "sliding", 60, 60)]
    for bad in ('[{"id": "x", "scope": "desk", "threshold": 1}]', '[{"id": "x", "threshold": 0}]',
                '[{"id": "x", "window": {"size_seconds": 90, "period_seconds": 60}, "threshold": 1}]',
                '[{"id": "x", "threshold": 1}, {"id": "x", "threshold": 2}]', '[{"id": "x", "window": "week", "threshold": 1}]'):
        with pytest.raises(ValueError):
            parse_rules(bad)


def test_a_day_window_runs_from_local_midnight_to_the_next_even_across_a_clock_change():
    day = AlarmRule("d", "client", Decimal(1))
    assert windows_of_slice(day, datetime.date(2026, 12, 6), SAO_PAULO) == [
        (_ms(2026, 12, 6, 3), _ms(2026, 12, 7, 3))]  # São Paulo is UTC-3 all year
    # New York's spring-forward day has 23 hours.
    start, end = windows_of_slice(day, datetime.date(2026, 3, 8), NEW_YORK)[0]
    assert (start, end) == (_ms(2026, 3, 8, 5), _ms(2026, 3, 9, 4)) and end - start == 23 * 3_600_000


def test_a_slice_belongs_to_every_sliding_window_that_covers_it():
    rule = AlarmRule("s", "all", Decimal(1), "sliding", 900, 300)  # 15 min every 5 min
    period = 300_000
    slice_index = _ms(2026, 12, 6, 12, 10) // period  # 12:10-12:15
    # [11:55, 12:10) ends where the slice starts: not one of its windows.
    assert windows_of_slice(rule, slice_index, SAO_PAULO) == [
        (_ms(2026, 12, 6, 12, 0), _ms(2026, 12, 6, 12, 15)),
        (_ms(2026, 12, 6, 12, 5), _ms(2026, 12, 6, 12, 20)),
        (_ms(2026, 12, 6, 12, 10), _ms(2026, 12, 6, 12, 25)),
    ]


def _order(client, total, when):
    return {"client_token": client, "total": Decimal(total), "event_time": when,
            "trade_day": when.astimezone(SAO_PAULO).date()}


def test_increments_sum_each_window_exactly_once_per_order():
    rules = [AlarmRule("day", "client", Decimal(1)), AlarmRule("10m", "all", Decimal(1), "sliding", 600, 600)]
    t = datetime.datetime(2026, 12, 6, 2, 59, 59, 999000, tzinfo=UTC)  # 23:59:59.999 in São Paulo, Dec 5
    orders = [_order("ana", "1.10", t), _order("ana", "2.20", t + datetime.timedelta(milliseconds=1)),
              _order("bia", "3.30", t)]
    day5, day6 = _ms(2026, 12, 5, 3), _ms(2026, 12, 6, 3)
    assert window_increments(rules, orders, "America/Sao_Paulo") == {
        WindowKey("day", "ana", day5, day6): Decimal("1.10"),     # 23:59:59.999 is still Dec 5
        WindowKey("day", "ana", day6, day6 + 86_400_000): Decimal("2.20"),  # 00:00:00.000 is Dec 6
        WindowKey("day", "bia", day5, day6): Decimal("3.30"),
        WindowKey("10m", "*", _ms(2026, 12, 6, 2, 50), _ms(2026, 12, 6, 3)): Decimal("4.40"),
        WindowKey("10m", "*", _ms(2026, 12, 6, 3), _ms(2026, 12, 6, 3, 10)): Decimal("2.20"),
    }


def test_an_order_at_the_first_and_the_last_millisecond_of_a_local_day_counts_in_that_day():
    """Orders priced by ``price_order`` (which takes the trading day in the exchange's zone) at exactly 00:00:00.000
    and 23:59:59.999 in São Paulo count in that day's window, and one at the next 00:00:00.000 in the next day's:
    written out by hand in UTC (São Paulo is UTC-3, so each local midnight is 03:00 UTC)."""
    from orderflow.model.pricing import price_order

    def priced(client, quantity, when):
        day = when.astimezone(SAO_PAULO).date()
        snapshot = {str(day): {"WEGE3": ("W", Decimal("1.5"))}}
        order = {"client_token": client, "asset": "WEGE3", "quantity": quantity, "event_time": when}
        return price_order(order, snapshot, SAO_PAULO)

    first = datetime.datetime(2026, 12, 5, 0, 0, 0, 0, tzinfo=SAO_PAULO)
    last = datetime.datetime(2026, 12, 5, 23, 59, 59, 999000, tzinfo=SAO_PAULO)
    next_first = datetime.datetime(2026, 12, 6, 0, 0, 0, 0, tzinfo=SAO_PAULO)
    before = datetime.datetime(2026, 12, 4, 23, 59, 59, 999000, tzinfo=SAO_PAULO)
    orders = [priced("ana", 2, first), priced("ana", 4, last), priced("ana", 8, next_first), priced("ana", 16, before)]
    assert [o["trade_day"] for o in orders] == [datetime.date(2026, 12, 5), datetime.date(2026, 12, 5),
                                                datetime.date(2026, 12, 6), datetime.date(2026, 12, 4)]
    rule = AlarmRule("day", "client", Decimal(1))
    assert window_increments([rule], orders, "America/Sao_Paulo") == {
        WindowKey("day", "ana", _ms(2026, 12, 4, 3), _ms(2026, 12, 5, 3)): Decimal("24"),   # 16 x 1.5
        WindowKey("day", "ana", _ms(2026, 12, 5, 3), _ms(2026, 12, 6, 3)): Decimal("9"),    # (2 + 4) x 1.5
        WindowKey("day", "ana", _ms(2026, 12, 6, 3), _ms(2026, 12, 7, 3)): Decimal("12"),   # 8 x 1.5
    }
