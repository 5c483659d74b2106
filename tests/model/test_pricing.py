"""trading_days: the days whose reference data a run loads (pricing itself: tests/transforms/test_price_orders.py)."""
from __future__ import annotations

import dataclasses
import datetime

from orderflow.config import Settings
from orderflow.model.pricing import trading_days

# Two zones without daylight saving whose offsets are known: at any instant the date in one of them differs from
# UTC's (UTC+14 from 10:00 UTC on, UTC-11 before 11:00 UTC), so "today" taken in UTC cannot pass for theirs.
FAR_EAST, FAR_WEST = ("Pacific/Kiritimati", 14), ("Pacific/Pago_Pago", -11)


def _local_date(hours: int) -> datetime.date:
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)).date()


def test_trading_days_default_to_today_in_the_exchange_zone_and_lookback():
    utc_today = datetime.datetime.now(datetime.timezone.utc).date()
    zone, hours = FAR_EAST if _local_date(FAR_EAST[1]) != utc_today else FAR_WEST
    settings = dataclasses.replace(Settings(), exchange_timezone=zone)
    while True:  # the expected date from the zone's offset by hand, read on both sides of the call (midnight)
        before = _local_date(hours)
        days = trading_days(settings, None, 2)
        if _local_date(hours) == before:
            break
    assert days == [str(before - datetime.timedelta(days=n)) for n in (2, 1, 0)]
    assert trading_days(settings, ["2026-01-02"], 5) == ["2026-01-02"]
