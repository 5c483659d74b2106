"""Reference data model on real memcached + DynamoDB: load, read back, CLI."""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from decimal import Decimal

from pymemcache.client.base import Client

from orderflow import refdata
from orderflow.config import settings_environment
from orderflow.io import reference_data_store
from orderflow.model import sample_assets

DAY = datetime.date(2026, 11, 20)


def test_load_then_read_back_with_gaps(module_settings):
    entries = {"WEGE3": ("W-1", Decimal("41.5")), "NOCODE3": (None, None), "NOPRICE3": ("NP-1", None)}
    refdata.load_reference_data(module_settings, DAY, entries)
    client = Client(module_settings.memcached_host_port)
    assert client.get(reference_data_store.assets_key(DAY)) == b'["NOCODE3", "NOPRICE3", "WEGE3"]'
    assert client.get(reference_data_store.pricing_code_key("WEGE3", DAY)) == b"W-1"
    snapshot = reference_data_store.read_reference_data(module_settings, [DAY, datetime.date(1999, 1, 1)])
    assert snapshot == {str(DAY): {"WEGE3": ("W-1", Decimal("41.5")), "NOCODE3": (None, None),
                                   "NOPRICE3": ("NP-1", None)}}


def test_sample_prices_are_deterministic_two_decimal_and_per_day():
    a, b = sample_assets.sample_prices(DAY), sample_assets.sample_prices(DAY)
    assert a == b and len(a) == len(sample_assets.SAMPLE_ASSETS)
    assert all(price.as_tuple().exponent == -2 for _, price in a.values())
    assert sample_assets.sample_prices(DAY + datetime.timedelta(days=1))["WEGE3"][0] == "WEGE3-20261121"


def test_cli_load_and_show(module_settings, tmp_path):
    env = {**os.environ, **settings_environment(module_settings)}
    csv = tmp_path / "prices.csv"
    csv.write_text("asset,price,pricing_code\nZZZZ3,12.345678,ZCODE\nYYYY3,,\n")
    day = "2026-11-19"
    out = subprocess.run([sys.executable, "-m", "orderflow.refdata", "load", "--day", day, "--file", str(csv)],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "2 assets" in out
    shown = subprocess.run([sys.executable, "-m", "orderflow.refdata", "show", "--day", day],
                           env=env, capture_output=True, text=True, check=True).stdout
    assert "ZZZZ3" in shown and "ZCODE" in shown and "12.345678" in shown
    assert reference_data_store.read_reference_data(module_settings, [day])[day]["YYYY3"] == ("YYYY3-20261119", None)


def test_cli_load_says_it_replaces_the_day_and_merge_keeps_the_other_assets(module_settings, tmp_path):
    env = {**os.environ, **settings_environment(module_settings)}
    day = "2026-11-18"

    def load(csv_text: str, *extra: str) -> str:
        csv = tmp_path / "prices.csv"
        csv.write_text(csv_text)
        return subprocess.run([sys.executable, "-m", "orderflow.refdata", "load", "--day", day, "--file", str(csv),
                               *extra], env=env, capture_output=True, text=True, check=True).stdout

    load("AAAA3,1.5\nBBBB3,2.5\n")
    out = load("CCCC3,3.5\n", "--merge")
    assert "merged into the day's asset list: 3 assets listed" in out
    assert set(reference_data_store.read_reference_data(module_settings, [day])[day]) == {"AAAA3", "BBBB3", "CCCC3"}
    out = load("BBBB3,2.75\n", "--merge")  # an update keeps the others too
    assert reference_data_store.read_reference_data(module_settings, [day])[day]["BBBB3"] == ("BBBB3-20261118", Decimal("2.75"))
    assert len(reference_data_store.read_reference_data(module_settings, [day])[day]) == 3

    out = load("DDDD3,4.5\n")  # without --merge: the list is replaced, and the output says what was dropped
    assert "replaced the day's asset list (3 -> 1 assets)" in out
    assert "no longer listed (orders for them become unknown_asset): AAAA3, BBBB3, CCCC3" in out
    assert set(reference_data_store.read_reference_data(module_settings, [day])[day]) == {"DDDD3"}


def _seconds_to_live(host_port: tuple[str, int], key: str) -> int:
    """memcached's remaining time to live of ``key`` (meta get, flag ``t``): -1 when it never expires."""
    with socket.create_connection(host_port, timeout=10) as conn:
        conn.sendall(f"mg {key} t\r\n".encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += conn.recv(4096)
    flags = reply.decode().split()
    assert flags[0] == "HD", reply  # HD: found (EN: missing)
    return int(flags[1].removeprefix("t"))


def test_cli_load_with_expire_seconds_sets_that_time_to_live(module_settings):
    """``load --expire-seconds 3600`` writes the day's asset list and pricing codes with that time to live (read
    back from memcached: at most an hour, more than 59 minutes left); without it they never expire."""
    env = {**os.environ, **settings_environment(module_settings)}
    expiring, kept = "2031-03-04", "2031-03-05"  # days no other test loads
    for day, extra in ((expiring, ["--expire-seconds", "3600"]), (kept, [])):
        subprocess.run([sys.executable, "-m", "orderflow.refdata", "load", "--day", day, *extra], env=env,
                       capture_output=True, text=True, check=True)
    for day, ttl_ok in ((expiring, lambda ttl: 3540 < ttl <= 3600), (kept, lambda ttl: ttl == -1)):
        keys = [reference_data_store.assets_key(day), reference_data_store.pricing_code_key("WEGE3", day)]
        ttls = [_seconds_to_live(module_settings.memcached_host_port, key) for key in keys]
        assert all(map(ttl_ok, ttls)), (day, ttls)
