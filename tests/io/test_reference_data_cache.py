"""ReferenceDataCache over real memcached + DynamoDB: loaded once, refreshed when old, reloaded on a miss at most
every miss_reload_seconds (a clock the test moves); one cache per worker process; a first load that rides out
an outage of its store."""
from __future__ import annotations

import dataclasses
import datetime
import pickle
import shutil
import threading
import time
from decimal import Decimal

import port_for
import pytest
from mirakuru import TCPExecutor

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
    started = time.monotonic()
    with pytest.raises(ConnectionError):  # retried for retry_seconds, then raised: pricing never starts without data
        ReferenceData(unreachable, days=(str(DAY),), retry_seconds=1.0).open(clock).current()
    assert time.monotonic() - started >= 1.0


def test_the_first_load_rides_out_an_outage_of_its_store(module_settings):
    # memcached is down when the first load starts and comes up 2 s later, empty, then gets the day's codes.
    port = port_for.select_random()
    settings = dataclasses.replace(module_settings, memcached_address=f"127.0.0.1:{port}")
    memcached = TCPExecutor([shutil.which("memcached"), "-l", "127.0.0.1", "-p", str(port), "-u", "root"],
                            host="127.0.0.1", port=port, timeout=30)

    def come_back():
        time.sleep(2)
        memcached.start()
        refdata.load_reference_data(settings, DAY, {"ITUB4": ("I-05", Decimal("33.10"))})

    restore = threading.Thread(target=come_back)
    restore.start()
    try:
        started = time.monotonic()
        snapshot = ReferenceData(settings, days=(str(DAY),), retry_seconds=60).open().current()
        waited = time.monotonic() - started
    finally:
        restore.join()
        memcached.stop()
    assert snapshot == {str(DAY): {"ITUB4": ("I-05", Decimal("33.10"))}}
    assert waited >= 2


def test_one_cache_per_worker_process_loaded_once_for_every_copy_and_thread(module_settings):
    refdata.load_reference_data(module_settings, DAY, {"BBAS3": ("B-05", Decimal("27.00"))})
    source = ReferenceData(module_settings, days=(str(DAY),), refresh_seconds=3600)
    # Beam gives each DoFn instance its own unpickled copy of the source: they must find the same cache.
    copies = [pickle.loads(pickle.dumps(source)) for _ in range(8)]
    assert {id(copy.open()) for copy in copies} == {id(source.open())}
    assert ReferenceData(module_settings, days=(str(DAY),)).open() is not source.open()  # another source

    fresh = ReferenceData(module_settings, days=(str(DAY),), refresh_seconds=3600)
    barrier = threading.Barrier(8)
    snapshots = []

    def price():
        barrier.wait()
        snapshots.append(pickle.loads(pickle.dumps(fresh)).open().current())

    threads = [threading.Thread(target=price) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(snapshots) == 8 and len({id(s) for s in snapshots}) == 1  # one load, not eight
