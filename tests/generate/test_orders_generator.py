"""The order generator: deterministic, the asked rates, and every record is what it claims to be."""
from __future__ import annotations

import collections
import datetime
import zoneinfo

import pytest

from orderflow.model.orders import InvalidOrder, parse_orders
from orderflow_dev.generate.orders import MALFORMED_REASONS, UNKNOWN_ASSET, generate

DAY = datetime.date(2026, 11, 16)


def test_deterministic_for_a_seed():
    assert list(generate(500, seed=3, day=DAY)) == list(generate(500, seed=3, day=DAY))
    assert list(generate(500, seed=3, day=DAY)) != list(generate(500, seed=4, day=DAY))


def test_rates_formats_and_skew():
    records = list(generate(20_000, seed=11, day=DAY))
    kinds = collections.Counter(r.kind for r in records)
    assert 0.045 < kinds["duplicate"] / 20_000 < 0.055
    assert 0.017 < kinds["malformed"] / 20_000 < 0.023
    assert {r.fmt for r in records if r.kind == "order"} == {"json", "rest", "csv", "avro"}
    assert {r.reason for r in records if r.kind == "malformed"} == set(MALFORMED_REASONS)
    clients = collections.Counter(r.client_token for r in records if r.kind == "order")
    top, median = clients.most_common()[0][1], sorted(clients.values())[len(clients) // 2]
    assert top > 10 * median  # skewed clients
    times = [r.timestamp_ms for r in records if r.kind == "order"]
    assert times == sorted(times)
    opening = datetime.datetime(2026, 11, 16, 13, tzinfo=datetime.timezone.utc).timestamp() * 1000  # 10:00 BRT
    assert opening <= times[0] and times[-1] < opening + 8 * 3_600_000


def test_every_record_parses_or_fails_as_announced():
    records = list(generate(3_000, seed=5, day=DAY))
    seen_payloads = {}
    for r in records:
        if r.kind == "malformed" and r.reason != "unknown_asset":
            with pytest.raises(InvalidOrder) as raised:
                parse_orders(r.value, source="t/0/0", timestamp_ms=r.timestamp_ms)
            assert raised.value.reason == r.reason, r
            continue
        [order] = parse_orders(r.value, source="t/0/0", timestamp_ms=r.timestamp_ms)
        assert (order["client_token"], order["quantity"]) == (r.client_token, r.quantity)
        assert order["asset"] == (UNKNOWN_ASSET if r.reason == "unknown_asset" else r.asset)
        assert order["order_id"] == (r.order_id or "t/0/0#0")
        assert int(order["event_time"].timestamp() * 1000) == r.timestamp_ms
        if r.kind == "duplicate":
            assert r.order_id is not None and seen_payloads[r.order_id] == r.value
        elif r.order_id:
            seen_payloads[r.order_id] = r.value


def test_cli_produces_to_the_topic(module_settings):
    import os
    import subprocess
    import sys

    from tests.support.kafka_testing import read_partition

    env = {**os.environ, "ORDERFLOW_KAFKA_BOOTSTRAP": module_settings.kafka_bootstrap,
           "ORDERFLOW_TOPIC_ORDERS": module_settings.topics.orders,
           "ORDERFLOW_SCHEMA_REGISTRY_URL": module_settings.schema_registry_url}
    out = subprocess.run([sys.executable, "-m", "orderflow_dev.generate", "orders", "--n", "300", "--seed", "1",
                          "--day", "2026-11-16", "--no-progress"], env=env, capture_output=True, text=True, check=True)
    assert "produced 300 records for 2026-11-16" in out.stdout
    records = [m for p in range(module_settings.topic_partitions)
               for m in read_partition(module_settings.kafka_bootstrap, module_settings.topics.orders, p)]
    assert len(records) == 300


def test_cli_produces_yesterday_by_default_and_refuses_a_session_not_over(module_settings, monkeypatch, capsys):
    import pytest

    from orderflow.config import settings_environment
    from orderflow.model.pricing import today
    from orderflow_dev.generate.orders import main
    from tests.support.orders_scenario import read_topic

    for variable, value in settings_environment(module_settings).items():
        monkeypatch.setenv(variable, value)
    before = len(read_topic(module_settings, module_settings.topics.orders))
    assert main(["--n", "300", "--no-progress"]) == 0
    yesterday = today(module_settings) - datetime.timedelta(days=1)
    assert f"produced 300 records for {yesterday}" in capsys.readouterr().out
    assert len(read_topic(module_settings, module_settings.topics.orders)) == before + 300
    with pytest.raises(SystemExit):
        main(["--n", "10", "--day", str(today(module_settings)), "--no-progress"])
    assert "would be stamped in the future" in capsys.readouterr().err


def test_near_midnight_records_fall_in_the_first_and_last_local_hour_of_the_day():
    zone = zoneinfo.ZoneInfo("America/Sao_Paulo")
    records = list(generate(1_000, seed=2, day=DAY, near_midnight=20))
    hours = collections.Counter(datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, zone).hour for r in records)
    assert hours[0] >= 10 and hours[23] >= 10  # and duplicates of them
    local_days = {datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, zone).date() for r in records}
    assert local_days == {DAY}
    # 23:00-24:00 in São Paulo is already the next day in UTC.
    late = [r for r in records if datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, zone).hour == 23]
    assert {datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, datetime.timezone.utc).date() for r in late} == {
        DAY + datetime.timedelta(days=1)}
