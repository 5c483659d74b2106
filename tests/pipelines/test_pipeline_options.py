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
from confluent_kafka import Consumer, Producer

from orderflow.clients import avro_codec
from orderflow.config import settings_environment
from orderflow.model import pricing, sample_assets
from orderflow_dev.generate.orders import generate
from tests.support.commands import stop_as_kill
from tests.support.kafka_testing import produce, read_partition
from tests.support.orders_scenario import expected_outcome
from tests.support.waiting import wait_for

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


BACKLOG, FETCH = 60_000, 10_000  # records waiting; the most one poll of a read takes (kafka_read: max(10,000, batch))


def _commits(bootstrap: str, group: str, topic: str) -> list[int]:
    """The offsets ``group`` committed for partition 0 of ``topic``, in the order it committed them: each commit is a
    record of Kafka's ``__consumer_offsets`` (key: version 0 or 1, group, topic, partition; value: version, offset)."""
    def string(data: bytes, at: int) -> tuple[str, int]:
        size = int.from_bytes(data[at:at + 2], "big")
        return data[at + 2:at + 2 + size].decode(), at + 2 + size

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-offsets-reader"})
    try:
        partitions = len(consumer.list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"].partitions)
    finally:
        consumer.close()
    offsets = []
    for partition in range(partitions):
        for _, key, value, _, _ in read_partition(bootstrap, "__consumer_offsets", partition):
            if value is None or int.from_bytes(key[:2], "big") not in (0, 1):
                continue  # a tombstone, or a group's metadata
            committer, at = string(key, 2)
            committed_topic, at = string(key, at)
            if (committer, committed_topic, int.from_bytes(key[at:at + 4], "big")) == (group, topic, 0):
                offsets.append(int.from_bytes(value[2:10], "big", signed=True))
    return offsets


def test_orders_max_read_seconds_sets_how_much_of_a_backlog_one_read_takes(module_settings, environment, make_topic):
    """``--orders_max_read_seconds`` as a user passes it to the streaming orders pipeline (Prism), over a backlog of
    60,000 records on one partition (undecodable: dead letters, cheap to process). Each read's records are committed
    at the end of its bundle, so the group's successive commits (Kafka's own record of them) show how much one read
    took: with 0, one poll (10,000 at most) per read; with 600, a read goes on while full polls keep coming, so one
    commit takes 30,000 or more at once. The default (1 s) cannot give both: a pipeline that ignored the option would
    read 10,000 or fewer in a second in one run and 30,000 or more in the other."""
    from orderflow_dev import PRISM_BINARY
    from tests.support.waiting import START_TIMEOUT

    assert PRISM_BINARY.is_file(), f"{PRISM_BINARY} is missing: `make prism` builds it"
    topic, dead_letters = make_topic("max-read", partitions=1), make_topic("max-read-dlq", partitions=1)
    produce(module_settings.kafka_bootstrap, topic, [(b"k", b"not an order %d" % n) for n in range(BACKLOG)],
            partition=0)
    advances = {}
    for seconds in (0, 600):
        group = f"max-read-{seconds}-{uuid.uuid4().hex[:8]}"
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "orderflow.pipelines.orders", f"--orders_topic={topic}", f"--orders_group_id={group}",
             f"--orders_max_read_seconds={seconds}", "--alarm_rules=[]", "--progress_interval_seconds=0"],
            env={**environment, "ORDERFLOW_TOPIC_ORDERS_DLQ": dead_letters}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            def committed(pipeline=pipeline, group=group) -> bool:
                assert pipeline.poll() is None, pipeline.communicate()[1][-3000:]
                return BACKLOG in _commits(module_settings.kafka_bootstrap, group, topic)

            wait_for(committed, START_TIMEOUT + 300, f"the backlog committed with --orders_max_read_seconds={seconds}")
        finally:
            _, err = stop_as_kill(pipeline)
        assert pipeline.returncode == 0, err[-3000:]
        commits = _commits(module_settings.kafka_bootstrap, group, topic)
        advances[seconds] = [b - a for a, b in zip([0, *commits], commits, strict=False) if b > a]
    print(f"\ncommits' advances over {BACKLOG:,} records: {advances}")
    assert sum(advances[0]) == BACKLOG and max(advances[0]) <= FETCH and len(advances[0]) >= BACKLOG // FETCH
    assert sum(advances[600]) == BACKLOG and max(advances[600]) >= 3 * FETCH


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
