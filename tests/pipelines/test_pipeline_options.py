"""Both pipelines run as a user runs them: ``python -m orderflow.pipelines.<name>`` with settings from the
environment (``orders_settings`` / ``presence_settings``), and the options that override them.

The environment points the endpoints and input topics the options override at nothing (a closed port, a
topic that does not exist), so a run that ignored an option would fail or read nothing; its results are read
back from the real stores. The reference data comes from ``python -m orderflow.refdata load`` without
``--file`` (the built-in sample prices), the orders from ``python -m orderflow_dev.generate orders``.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import uuid
from zoneinfo import ZoneInfo

import port_for
import psycopg
import pytest
import redis
from confluent_kafka import Producer

from orderflow.clients import avro_codec
from orderflow.config import settings_environment
from orderflow.model import pricing, sample_assets
from orderflow_dev.generate.orders import generate
from tests.support.orders_scenario import expected_outcome

ORDERS = 300
# Zones far from the exchange's: the test takes the first where the last three hours are all on today's date.
ZONES = ("Asia/Tokyo", "Europe/London", "America/Los_Angeles")


def _zone_with_the_last_hours_on_one_day() -> ZoneInfo:
    """A zone whose last three hours (and the minutes the run takes) do not cross its midnight: a window that
    did would be split over two days, and the hand-computed day totals below assume one."""
    for name in ZONES:
        now = dt.datetime.now(ZoneInfo(name))
        if 4 <= now.hour <= 22:
            return ZoneInfo(name)
    raise AssertionError(f"no zone of {ZONES} is between 04:00 and 23:00 now")


def _run(argv: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


@pytest.fixture(scope="module")
def environment(module_settings) -> dict[str, str]:
    return {**os.environ, **settings_environment(module_settings)}


@pytest.fixture(scope="module")
def misdirected(environment) -> dict[str, str]:
    """The environment with the endpoints and input topics the options override pointing at nothing."""
    nowhere = port_for.select_random()
    return {**environment, "ORDERFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{nowhere}",
            "ORDERFLOW_POSTGRES_DSN": f"postgresql://orderflow@127.0.0.1:{nowhere}/nowhere",
            "ORDERFLOW_REDIS_URL": f"redis://127.0.0.1:{nowhere}/0",
            "ORDERFLOW_TOPIC_ORDERS": "no-such-topic", "ORDERFLOW_TOPIC_KEEPALIVE": "no-such-topic",
            "ORDERFLOW_TOPIC_AVAILABILITY": "no-such-topic"}


def test_orders_from_the_command_line_with_endpoint_options_and_the_lookback(module_settings, environment,
                                                                            misdirected, make_topic):
    # A past trading day within --refdata_lookback_days=3 of today (no --trade_days: the default days).
    day = pricing.today(module_settings) - dt.timedelta(days=2)
    loaded = _run(["-m", "orderflow.refdata", "load", "--day", str(day)], environment)  # no --file: the samples
    assert f"{day}: {len(sample_assets.sample_prices(day))} assets" in loaded.stdout
    topic = make_topic("options-orders")
    produced = _run(["-m", "orderflow_dev.generate", "orders", "--n", str(ORDERS), "--seed", "13", "--day", str(day),
                     "--topic", topic, "--no-progress"], environment)
    assert f"produced {ORDERS} records for {day} to {topic}" in produced.stdout
    records = list(generate(ORDERS, seed=13, day=day, timezone=module_settings.exchange_timezone))
    expected = expected_outcome(records, sample_assets.sample_prices(day), module_settings.exchange_timezone)

    done = _run(["-m", "orderflow.pipelines.orders", "--bounded", f"--orders_topic={topic}",
                 f"--orders_postgres_dsn={module_settings.postgres_dsn}",
                 f"--orders_kafka_bootstrap={module_settings.kafka_bootstrap}", "--refdata_lookback_days=3",
                 "--orders_batches_per_transaction=1", "--orders_batch_size=50", "--alarm_rules=[]"], misdirected)
    assert done.stdout.splitlines()[-1].startswith(f"orders pipeline done: {ORDERS:,} records, ")
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        by_client = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE trade_day = %s GROUP BY 1", (day,))}
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == expected["unique"]
    assert by_client == expected["volumes"]  # priced with the sample prices the CLI loaded


def _minute(ts: dt.datetime) -> dt.datetime:
    return ts.replace(second=0, microsecond=0)


def test_presence_from_the_command_line_with_its_rule_and_endpoint_options(module_settings, misdirected,
                                                                          make_topic):
    """Opening hours in a far zone (Tokyo, else London or Los Angeles: one where the window does not cross
    midnight) that opened 3 hours ago and closed an hour ago, a 10-minute keep-alive timeout, 4 status shards,
    intervals at each session's end, and the default ``--as_of`` (now): the day's window is over, so each
    restaurant's offline time is known by hand."""
    zone = _zone_with_the_last_hours_on_one_day()
    opens = _minute(dt.datetime.now(zone) - dt.timedelta(hours=3))
    closes = opens + dt.timedelta(hours=2)
    at = [int((opens + dt.timedelta(minutes=m)).timestamp() * 1000) for m in range(120)]
    pings = {"tk-early": at[:60], "tk-always": at}  # early: pings for the first hour only
    expected = {"tk-early": (120 - 59 - 10) * 60, "tk-always": 0}  # connected until 10 min after its last ping
    keepalive_topic, availability_topic = make_topic("options-keepalive"), make_topic("options-availability")
    codec = avro_codec(module_settings, "keepalive")
    producer = Producer({"bootstrap.servers": module_settings.kafka_bootstrap})
    for rid, times in pings.items():
        for t in times:
            producer.produce(keepalive_topic, key=rid.encode(), timestamp=t,
                             value=codec.encode({"restaurant_id": rid, "sent_at": t}))
    assert producer.flush(30) == 0
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"

    done = _run(["-m", "orderflow.pipelines.presence", "--bounded", f"--keepalive_topic={keepalive_topic}",
                 f"--availability_topic={availability_topic}", "--keepalive_timeout_seconds=600",
                 f"--opening_hours={opens:%H:%M}-{closes:%H:%M}", f"--presence_timezone={zone.key}",
                 "--finalize_each_session=true", "--status_shards=4",
                 f"--presence_postgres_dsn={module_settings.postgres_dsn}",
                 f"--presence_redis_url={module_settings.redis_url}", f"--presence_redis_prefix={prefix}",
                 f"--presence_kafka_bootstrap={module_settings.kafka_bootstrap}"], misdirected)
    assert f": {sum(map(len, pings.values())):,} records, " in done.stdout
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily "
                            "WHERE restaurant_id LIKE 'tk-%'").fetchall()
    assert {(rid, day): seconds for rid, day, seconds in rows} == {
        (rid, opens.date()): seconds for rid, seconds in expected.items()}
    hot = redis.Redis.from_url(module_settings.redis_url)
    assert {k.decode() for k in hot.scan_iter(match=f"{prefix}*")} == {f"{prefix}{rid}" for rid in pings}
    assert int(hot.hget(f"{prefix}tk-early", "last_keepalive_ms")) == at[59]


@pytest.mark.parametrize("pipeline, named", [
    ("orders", {"--orders_batch_size": "10000", "--orders_group_id": "orderflow-orders",
                "--refdata_lookback_days": "1", "--bounded": "False", "--drain_timeout_seconds": "30.0"}),
    ("presence", {"--keepalive_timeout_seconds": None, "--bounded": "False", "--drain_timeout_seconds": "30.0"}),
])
def test_help_lists_every_option_with_its_default_as_a_user_types_it(pipeline, named):
    """``python -m orderflow.pipelines.<name> --help``, as the README sends newcomers there: the pipeline's own
    options first with their help and defaults, then Beam's (the runner's among them); nothing runs."""
    done = subprocess.run([sys.executable, "-m", f"orderflow.pipelines.{pipeline}", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    own, _, beams = done.stdout.partition(": all\n")
    assert beams, done.stdout[:2000]
    # Each option's entry: its line ("  --name METAVAR") and the help lines under it, wrapping undone.
    entries = {block.split()[0]: " ".join(block.split())
               for block in re.split(r"\n(?=  -)", own) if block.startswith("  --")}
    for option, default in named.items():
        assert option in entries, option
        assert len(entries[option].split()) > 3, entries[option]  # a help text, not the name alone
        if default is not None:
            assert f"(default: {default})" in entries[option], entries[option]
    assert "--runner" in beams and "--prism_location" in beams and "(default:" in beams
    assert "Traceback" not in done.stderr
