"""ReferenceDataCache over real memcached + DynamoDB: loaded once, refreshed when old, reloaded on a miss at most
every miss_reload_seconds (a clock the test moves)."""
from __future__ import annotations

import dataclasses
import datetime
from decimal import Decimal

import pytest

from orderflow import refdata
from orderflow.io.reference_data_cache import ReferenceData

DAY = datetime.date(2026, 10, 5)  # a day no other test module loads (memcached is shared)
NEXT = DAY + datetime.timedelta(days=1)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_refreshes_when_old_and_reloads_on_a_miss_at_most_every_interval(module_settings):
    refdata.load_reference_data(module_settings, DAY, {"WEGE3": ("W-05", Decimal("40.00"))})
    clock = Clock()
    cache = ReferenceData(module_settings, days=(str(DAY), str(NEXT)), refresh_seconds=60,
                          miss_reload_seconds=10).open(clock)
    assert cache.current() == {str(DAY): {"WEGE3": ("W-05", Decimal("40.00"))}}

    # The next day is listed and a price changes: the snapshot stays as loaded until a reload.
    refdata.load_reference_data(module_settings, NEXT, {"WEGE3": ("W-06", Decimal("41.00"))})
    refdata.load_reference_data(module_settings, DAY, {"WEGE3": ("W-05", Decimal("40.50"))})
    clock.now += 5
    assert str(NEXT) not in cache.current()
    assert cache.reload_after_miss() is False  # 5 s since the load: not yet
    clock.now += 5
    assert cache.reload_after_miss() is True
    assert cache.current() == {str(DAY): {"WEGE3": ("W-05", Decimal("40.50"))},
                               str(NEXT): {"WEGE3": ("W-06", Decimal("41.00"))}}

    refdata.load_reference_data(module_settings, NEXT, {"WEGE3": ("W-06", Decimal("42.00"))})
    clock.now += 59
    assert cache.current()[str(NEXT)]["WEGE3"][1] == Decimal("41.00")  # 59 s old: kept
    clock.now += 1
    assert cache.current()[str(NEXT)]["WEGE3"][1] == Decimal("42.00")  # 60 s old: refreshed


def test_bounded_snapshot_is_loaded_once_and_a_first_load_failure_is_an_error(module_settings):
    refdata.load_reference_data(module_settings, DAY, {"VALE3": ("V-05", Decimal("60.00"))})
    clock = Clock()
    cache = ReferenceData(module_settings, days=(str(DAY),)).open(clock)
    first = cache.current()
    refdata.load_reference_data(module_settings, DAY, {"VALE3": ("V-05", Decimal("61.00"))})
    clock.now += 10**6
    assert cache.current() is first  # refresh_seconds=None: never refreshed

    unreachable = dataclasses.replace(module_settings, memcached_address="127.0.0.1:9")
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises, pricing must not start without data
        ReferenceData(unreachable, days=(str(DAY),)).open(clock).current()
