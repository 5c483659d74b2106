"""Commands users type, run as subprocesses with settings from the environment, each checked by its effect on
the session's stack: ``python -m orderflow.bootstrap``, ``python -m orderflow.replay run|offsets|dump|reset --avro``
(orders and presence, from a time, with the fallback), ``python -m orderflow_dev.generate keepalive|orders|feed``
with their options, and ``make setup`` run again."""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
import zoneinfo

import psycopg
import pytest
import redis
from confluent_kafka.admin import AdminClient

from orderflow import bootstrap, clients
from orderflow.config import Topics, settings_environment
from orderflow_dev.generate.keepalive import make_plan
from tests.support.commands import stop_as_kill
from tests.support.kafka_testing import produce, read_partition
from tests.support.presence_timeline import planned_keepalives
from tests.support.waiting import wait_for


def _command(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


def _count(bootstrap_servers: str, topic: str, partitions: int) -> int:
    return sum(len(read_partition(bootstrap_servers, topic, p)) for p in range(partitions))


@pytest.fixture
def empty_database(stack_settings):
    from pytest_postgresql.janitor import DatabaseJanitor

    dbname = "t_" + uuid.uuid4().hex[:12]
    port = int(stack_settings.postgres_dsn.rsplit(":", 1)[1].split("/")[0])
    janitor = DatabaseJanitor(user="orderflow", host="127.0.0.1", port=port, dbname=dbname)
    janitor.init()
    yield f"postgresql://orderflow@127.0.0.1:{port}/{dbname}"
    janitor.drop()


def _bootstrap_settings(stack_settings, database: str):
    """Settings naming a database, topics, tables and an SNS topic that do not exist yet."""
    suffix = uuid.uuid4().hex[:8]
    return dataclasses.replace(
        stack_settings, postgres_dsn=database, topic_partitions=3,
        topics=Topics(**{f.name: f"boot-{f.name}-{suffix}" for f in dataclasses.fields(Topics)}),
        prices_table=f"boot-prices-{suffix}", client_volume_table=f"boot-volume-{suffix}",
        alarm_sns_topic=f"boot-alarms-{suffix}")


def _outputs(stdout: str) -> dict[str, str]:
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in stdout.splitlines()
            if line.split(None, 1)[0] in ("migrations", "topics", "dynamodb_tables")}


def test_bootstrap_creates_everything_it_is_configured_with_once(stack_settings, empty_database):
    settings = _bootstrap_settings(stack_settings, empty_database)
    env = settings_environment(settings)

    first = _command("orderflow.bootstrap", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    with psycopg.connect(empty_database) as conn:
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert applied == [p.name for p in bootstrap.migration_files()]
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    assert {topic: len(metadata.topics[topic].partitions) for topic in bootstrap.all_topics(settings)} == dict.fromkeys(
        bootstrap.all_topics(settings), 3)
    pages = clients.aws_client(settings, "dynamodb").get_paginator("list_tables").paginate()
    assert {settings.prices_table, settings.client_volume_table} <= {name for page in pages for name in page["TableNames"]}
    arns = [t["TopicArn"] for t in clients.aws_client(settings, "sns").list_topics()["Topics"]]
    assert any(arn.endswith(f":{settings.alarm_sns_topic}") for arn in arns)
    assert f":{settings.alarm_sns_topic}" in first.stdout

    second = _command("orderflow.bootstrap", env=env)  # nothing left to create
    assert second.returncode == 0, second.stderr[-3000:]
    assert _outputs(second.stdout) == {"migrations": "[]", "topics": "[]", "dynamodb_tables": "[]"}


def test_two_bootstraps_at_once_apply_each_migration_once(stack_settings, empty_database):
    """Two ``python -m orderflow.bootstrap`` started together on an empty database: both wait on the migrator's
    advisory lock (held here until both are seen waiting, so they race for real), then one applies every
    migration and the other finds them applied; both succeed, and the topics and tables are created once."""
    settings = _bootstrap_settings(stack_settings, empty_database)
    env = {**os.environ, **settings_environment(settings)}
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (bootstrap._MIGRATION_LOCK,))
        both = [subprocess.Popen([sys.executable, "-m", "orderflow.bootstrap"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            wait_for(lambda: holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (bootstrap._MIGRATION_LOCK,)).fetchone()[0] == 2, 120, "both bootstraps waiting on the lock")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (bootstrap._MIGRATION_LOCK,))
        done = [(process.communicate(timeout=300), process.returncode) for process in both]
    assert [code for _, code in done] == [0, 0], [err[-3000:] for (_, err), _ in done]
    applied = sorted((_outputs(out)["migrations"] for (out, _), _ in done), key=len)
    assert applied == ["[]", str([path.name for path in bootstrap.migration_files()])]
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    assert [name for (name,) in rows] == [path.name for path in bootstrap.migration_files()]
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    assert {topic: len(metadata.topics[topic].partitions) for topic in bootstrap.all_topics(settings)} == dict.fromkeys(
        bootstrap.all_topics(settings), 3)
    pages = clients.aws_client(settings, "dynamodb").get_paginator("list_tables").paginate()
    assert {settings.prices_table, settings.client_volume_table} <= {name for page in pages for name in page["TableNames"]}


T0 = int(dt.datetime(2026, 3, 10, 15, tzinfo=dt.timezone.utc).timestamp() * 1000)  # 12:00 in São Paulo


@pytest.fixture(scope="module")
def keepalives(module_settings):
    """Keep-alives of 'before' (at T0) and 'after' (an hour later), and one undecodable record, on the
    module's keep-alive topic."""
    keepalive = clients.avro_codec(module_settings, "keepalive")
    records = [(b"before", keepalive.encode({"restaurant_id": "before", "sent_at": T0}), T0),
               (b"after", keepalive.encode({"restaurant_id": "after", "sent_at": T0 + 3_600_000}), T0 + 3_600_000),
               (b"corrupt", b"not avro", T0 + 3_600_000)]
    produce(module_settings.kafka_bootstrap, module_settings.topics.keepalive, records, partition=0)
    return records


def test_replay_run_starts_the_pipeline_at_a_time_then_offsets_show_its_group(module_settings, keepalives):
    env = settings_environment(module_settings)
    group, prefix = f"replay-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    since = dt.datetime.fromtimestamp((T0 + 1_800_000) / 1000, dt.timezone.utc).isoformat()  # between the two
    run = _command("orderflow.replay", "run", "presence", "--from", since, "--group", group, "--",
                   f"--presence_redis_prefix={prefix}", f"--as_of={T0 + 7_200_000}", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "presence: DONE" in run.stdout
    assert "1 keep-alives" in run.stdout and "1 dead letters (avro_bad_magic 1)" in run.stdout
    hot = redis.Redis.from_url(module_settings.redis_url)
    assert {k.decode() for k in hot.scan_iter(match=f"{prefix}*")} == {f"{prefix}after"}  # not 'before'

    offsets = _command("orderflow.replay", "offsets", "--group", group, "--topic", module_settings.topics.keepalive,
                       env=env)
    assert offsets.returncode == 0, offsets.stderr[-3000:]
    rows = {row["partition"]: row for row in map(json.loads, offsets.stdout.splitlines())}
    assert sorted(rows) == list(range(module_settings.topic_partitions))
    # The bounded run committed its group's position at the end of what it read: nothing left behind.
    assert {p: (r["committed"], r["log_start"], r["end"], r["lag"]) for p, r in rows.items()} == {
        0: (3, 0, 3, 0), **{p: (None, 0, 0, 0) for p in range(1, module_settings.topic_partitions)}}


def test_dump_with_avro_decodes_values_and_names_the_undecodable(module_settings, keepalives, tmp_path):
    out = tmp_path / "keepalives.jsonl"
    done = _command("orderflow.replay", "dump", "--topic", module_settings.topics.keepalive, "--from", "earliest",
                    "--avro", "restaurant_keepalive", "--output", str(out), env=settings_environment(module_settings))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["offset"])
    assert [(r["partition"], r["offset"], r["key"], r["timestamp_ms"]) for r in rows] == [
        (0, i, key.decode(), ts) for i, (key, _, ts) in enumerate(keepalives)]
    def utc(ms):  # the schema's timestamp-millis, decoded, then written as text
        return str(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc))

    assert [r["value"] for r in rows[:2]] == [{"restaurant_id": "before", "sent_at": utc(T0)},
                                              {"restaurant_id": "after", "sent_at": utc(T0 + 3_600_000)}]
    assert rows[2]["value"] == "not avro" and "value_error" in rows[2]


def test_generate_keepalive_writes_its_plan_to_kafka_and_its_expectation_to_a_file(module_settings, tmp_path):
    settings = dataclasses.replace(module_settings, topics=dataclasses.replace(
        module_settings.topics, keepalive=f"gen-keepalive-{uuid.uuid4().hex[:8]}",
        availability=f"gen-availability-{uuid.uuid4().hex[:8]}"))
    bootstrap.create_topics(settings.kafka_bootstrap, [settings.topics.keepalive, settings.topics.availability],
                            settings.topic_partitions)
    expected_file = tmp_path / "expected.json"
    done = _command("orderflow_dev.generate", "keepalive", "--restaurants", "20", "--minutes", "30",
                    "--end", "2026-03-11T01:30:00", "--interval", "60", "--seed", "3", "--corrupt", "2",
                    "--expected", str(expected_file), "--no-progress", env=settings_environment(settings))
    assert done.returncode == 0, done.stderr[-3000:]
    plan = make_plan(20, dt.datetime(2026, 3, 11, 1, 0), 30, interval_s=60, seed=3)  # naive = UTC, as the CLI
    keepalives = sum(count for count, _ in planned_keepalives(plan).values())  # not the generator's own loop
    summary = json.loads(done.stdout.splitlines()[0])
    assert (summary["keepalives"], summary["changes"], summary["corrupt"]) == (keepalives, len(plan.changes), 2)
    written = json.loads(expected_file.read_text())["expected_unexplained_seconds"]
    assert written == {f"{rid}/{day}": seconds for (rid, day), seconds in plan.expected().items()}
    assert _count(settings.kafka_bootstrap, settings.topics.keepalive, settings.topic_partitions) == keepalives + 2
    assert _count(settings.kafka_bootstrap, settings.topics.availability, settings.topic_partitions) == len(
        plan.changes)


def test_replaying_a_day_that_fired_alarms_sends_no_second_sms_and_changes_no_total(module_settings):
    from orderflow import refdata
    from orderflow.model import sample_assets
    from orderflow_dev.generate.orders import encode_order
    from tests.support.sns_testing import sent_sms

    env = settings_environment(module_settings)
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    day = yesterday.astimezone(zoneinfo.ZoneInfo(module_settings.exchange_timezone)).date()
    prices = sample_assets.sample_prices(day)
    refdata.load_reference_data(module_settings, day, prices)
    phone = f"+5531{uuid.uuid4().int % 10**9:09d}"
    with psycopg.connect(module_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL)", (phone,))
    at_ms = int(yesterday.timestamp() * 1000)
    # 'rp-a' crosses 1,000 yesterday with its third order; 'rp-b' stays under it.
    orders = [("rp-a", 4), ("rp-b", 1), ("rp-a", 4), ("rp-a", 4)]
    price = prices["PETR4"][1]
    records = [(client.encode(), encode_order("json", f"rp-{i}", client, "PETR4", int(1000 / price / 3) + qty, at_ms + i),
                at_ms + i) for i, (client, qty) in enumerate(orders)]
    produce(module_settings.kafka_bootstrap, module_settings.topics.orders, records, partition=0)
    rules = '--alarm_rules=[{"id": "rp-day", "scope": "client", "window": "day", "threshold": "1000"}]'

    def state():
        with psycopg.connect(module_settings.postgres_dsn) as conn:
            return (conn.execute("SELECT rule_id, scope, total FROM alarms ORDER BY 1, 2").fetchall(),
                    conn.execute("SELECT scope, total FROM alarm_window_totals ORDER BY 1").fetchall(),
                    conn.execute("SELECT client_token, total, order_count FROM client_daily_volume ORDER BY 1").fetchall())

    first = _command("orderflow.replay", "run", "orders", "--from", "earliest", "--", rules, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    alarms, totals, volumes = state()
    assert [(r, s) for r, s, _ in alarms] == [("rp-day", "rp-a")] and len(sent_sms(
        module_settings.sns_endpoint_url, {phone})) == 1
    since = (yesterday - dt.timedelta(hours=1)).isoformat()
    again = _command("orderflow.replay", "run", "orders", "--from", since, "--group", "rp-again", "--", rules, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 records" in again.stdout and "0 alarms" in again.stdout
    assert state() == (alarms, totals, volumes)
    assert len(sent_sms(module_settings.sns_endpoint_url, {phone})) == 1


def test_replay_run_orders_from_a_time_applies_the_validation_limits_it_is_given(module_settings, make_topic):
    """``replay run orders --from <time>`` over a topic with one order before that time and five after it, with
    ``--order_max_quantity``, ``--order_max_event_age_days`` and ``--order_max_event_lead_hours`` lowered: the
    order before the time is not read; of the rest, the quantity over the maximum and the event times too old and
    too far ahead are dead letters with their reasons, and the order at exactly the maximum is priced. With the
    defaults (10^12, 3,660 days, 24 hours) all five would pass the edge validation."""
    from orderflow import refdata
    from orderflow.model import pricing, sample_assets
    from orderflow_dev.generate.orders import encode_order

    env = settings_environment(module_settings)
    today = pricing.today(module_settings)
    days = (today - dt.timedelta(days=1), today)  # a run across the exchange's midnight finds either day
    for day in days:
        refdata.load_reference_data(module_settings, day, sample_assets.sample_prices(day))
    topic = make_topic("replay-orders", partitions=1)
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    minute, hour, day_ms = 60_000, 3_600_000, 86_400_000
    since_ms = now_ms - 7 * minute
    orders = [  # (id, quantity, event time in the payload, Kafka timestamp)
        ("ro-before", 10, now_ms - 10 * minute, now_ms - 10 * minute),   # before --from: never read
        ("ro-ok", 10, now_ms - 5 * minute, now_ms - 5 * minute),
        ("ro-too-many", 1001, now_ms - 5 * minute, now_ms - 5 * minute + 1),
        ("ro-too-old", 10, now_ms - 3 * day_ms, now_ms - 5 * minute + 2),  # older than 2 days
        ("ro-too-far", 10, now_ms + 2 * hour, now_ms - 5 * minute + 3),    # more than 1 hour ahead
        ("ro-at-max", 1000, now_ms - 5 * minute, now_ms - 5 * minute + 4),
    ]
    records = [(b"ro-client", encode_order("rest", order_id, "ro-client", "PETR4", quantity, event_ms), ts)
               for order_id, quantity, event_ms, ts in orders]
    produce(module_settings.kafka_bootstrap, topic, records, partition=0)
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.timezone.utc).isoformat()

    run = _command("orderflow.replay", "run", "orders", "--from", since, "--group", f"ro-{uuid.uuid4().hex[:8]}",
                   "--", f"--orders_topic={topic}", f"--trade_days={days[0]},{days[1]}", "--alarm_rules=[]",
                   "--order_max_quantity=1000", "--order_max_event_age_days=2", "--order_max_event_lead_hours=1",
                   env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "orders: DONE" in run.stdout
    assert ("5 records, 2 priced" in run.stdout
            and "3 dead letters (event_time_out_of_range 2, quantity_out_of_range 1)" in run.stdout), run.stdout
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        stored = conn.execute("SELECT order_id, quantity FROM orders WHERE order_id LIKE 'ro-%%' ORDER BY 1").fetchall()
    assert stored == [("ro-at-max", 1000), ("ro-ok", 10)]
    sent = {value for _, value, _ in records}
    dead = {json.loads(value)["records"][0]["value"]["id"]: dict(headers)["dlq.reason"].decode()
            for p in range(module_settings.topic_partitions)
            for _, _, value, _, headers in read_partition(module_settings.kafka_bootstrap,
                                                          module_settings.topics.orders_dead_letter, p)
            if value in sent}
    assert dead == {"ro-too-many": "quantity_out_of_range", "ro-too-old": "event_time_out_of_range",
                    "ro-too-far": "event_time_out_of_range"}


def _topics_environment(settings, make_topic, *names: str) -> tuple[dict[str, str], dict[str, str]]:
    """The settings' environment with the given topics (``orders``, ``keepalive``, ``availability``) on new ones."""
    topics = {name: make_topic(f"gen-{name}", partitions=2) for name in names}
    env = {**settings_environment(settings), **{f"ORDERFLOW_TOPIC_{name.upper()}": topic
                                                for name, topic in topics.items()}}
    return env, topics


def _all_records(bootstrap: str, topic: str) -> list:
    return [record for p in range(2) for record in read_partition(bootstrap, topic, p)]


def test_generate_orders_with_its_rates_formats_and_clients(module_settings, make_topic):
    """``generate orders --duplicate-rate 0.3 --malformed-rate 0.2 --formats csv,rest --clients 4``: read back
    and parsed by the pipeline's own edge validation (not the generator), about 30% of the records repeat an
    earlier one byte for byte, about 20% are refused, every order is CSV or a REST Proxy request, and every
    order is from one of four clients (the defaults: 5%, 2%, all four formats, 500 clients)."""
    from orderflow.model.orders import InvalidOrder, parse_orders
    from orderflow.model.pricing import today

    env, topics = _topics_environment(module_settings, make_topic, "orders")
    day = today(module_settings) - dt.timedelta(days=2)
    done = _command("orderflow_dev.generate", "orders", "--n", "400", "--seed", "11", "--day", str(day),
                    "--duplicate-rate", "0.3", "--malformed-rate", "0.2", "--formats", "csv,rest", "--clients", "4",
                    "--no-progress", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"produced 400 records for {day} to {topics['orders']}" in done.stdout
    records = _all_records(module_settings.kafka_bootstrap, topics["orders"])
    assert len(records) == 400
    seen, repeats, refused, orders = set(), 0, 0, []
    for offset, _, value, timestamp_ms, _ in sorted(records, key=lambda r: r[3]):
        if value in seen:
            repeats += 1
            continue
        seen.add(value)
        try:
            orders.append((value, parse_orders(value, source=f"t/0/{offset}", timestamp_ms=timestamp_ms)))
        except InvalidOrder:
            refused += 1
    assert 0.2 * 400 <= repeats <= 0.4 * 400, repeats
    # Malformed records with an unknown asset pass the edge (the reference data refuses them): a lower bound.
    assert 0.1 * 400 <= refused <= 0.25 * 400, refused
    rest = [parsed for value, parsed in orders if value.startswith(b'{"records"')]
    csv = [parsed for value, parsed in orders if not value.startswith(b"{")]
    assert rest and csv and len(rest) + len(csv) == len(orders)  # no plain JSON, no Avro
    assert {order["source_format"] for _, parsed in orders for order in parsed} == {"CSV", "REST_PROXY"}
    assert {order["client_token"] for _, parsed in orders for order in parsed} <= {
        f"client-{i:04d}" for i in range(4)}


def test_generate_feed_with_its_options_stops_by_itself(module_settings, make_topic):
    """``generate feed --seconds 3`` stops by itself, having produced to the topics of its environment what it
    counted: orders from the ``--clients`` only, keep-alives from the ``--restaurants`` only, each restaurant pinging
    every ``--interval`` second (twice or more in 3 s; once at most at the default 30 s),
    ``--silent-per-minute`` restaurants never pinging (20, or up to 40 across a minute's turn: the default is
    5), an availability change on every tick at ``--availability-changes-per-minute 2400`` (the default is 6, a
    change every 10 s). The same ``--seed`` silences the same restaurants; another seed, others."""
    import ast

    def feed(seed: int) -> tuple[dict, dict, set[str]]:
        env, topics = _topics_environment(module_settings, make_topic, "orders", "keepalive", "availability")
        done = _command("orderflow_dev.generate", "feed", "--seconds", "3", "--orders-per-second", "40", "--clients", "3",
                        "--restaurants", "50", "--interval", "1", "--silent-per-minute", "20",
                        "--availability-changes-per-minute", "2400", "--seed", str(seed), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        counts = ast.literal_eval(done.stderr.rsplit("feed stopped: ", 1)[1].strip())
        written = {name: _all_records(module_settings.kafka_bootstrap, topic) for name, topic in topics.items()}
        assert {name: len(records) for name, records in written.items()} == {
            "orders": counts["orders"], "keepalive": counts["keepalives"], "availability": counts["changes"]}
        assert {key.decode() for _, key, _, _, _ in written["orders"]} <= {f"client-{i:04d}" for i in range(3)}
        pings = collections.Counter(key.decode() for _, key, _, _, _ in written["keepalive"])
        restaurants = {f"rest-{i:05d}" for i in range(1, 51)}
        # A restaurant silenced at a minute's turn during the run may have pinged once before it: the most.
        assert set(pings) <= restaurants and max(pings.values()) >= 2, pings
        silent = restaurants - set(pings)
        assert 20 <= len(silent) <= 40, silent
        assert counts["changes"] >= 3  # one per tick: 12 ticks of 0.25 s in 3 s, fewer on a busy machine
        return counts, pings, silent

    _, _, first = feed(5)
    _, _, again = feed(5)
    _, _, other = feed(6)
    # Each run silences 20 at its start (the seed's draw), and 20 more if a minute turns during it.
    assert len(first & again) >= 20 and len(first & other) < 20


def test_replay_reset_and_dump_start_the_partitions_not_named_at_the_fallback(module_settings, make_topic, tmp_path):
    """``replay reset --to <topic>:0=2 --fallback latest`` as a subprocess commits offset 2 on partition 0 and the
    end on the others (read back with Kafka's admin client); a dump from the group's committed offsets then
    writes partition 0's records from offset 2 only. ``dump --from <topic>:1=1 --fallback latest`` writes
    partition 1's records from offset 1 only; with the default fallback (earliest) every other record too."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    env = settings_environment(module_settings)
    topic = make_topic("replay-reset", partitions=3)
    sizes = {0: 5, 1: 4, 2: 3}
    for partition, size in sizes.items():
        produce(module_settings.kafka_bootstrap, topic, [(b"k", f"p{partition}-{i}".encode(), T0 + i)
                                                         for i in range(size)], partition=partition)
    group = f"reset-{uuid.uuid4().hex[:8]}"
    reset = _command("orderflow.replay", "reset", "--group", group, "--topic", topic, "--to", f"{topic}:0=2",
                     "--fallback", "latest", env=env)
    assert reset.returncode == 0, reset.stderr[-3000:]
    assert reset.stdout.splitlines() == [f"set {group} {topic}/0 -> 2", f"set {group} {topic}/1 -> 4",
                                         f"set {group} {topic}/2 -> 3"]
    admin = AdminClient({"bootstrap.servers": module_settings.kafka_bootstrap})
    [listed] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [
        TopicPartition(topic, p) for p in sizes])]).values()
    assert {tp.partition: tp.offset for tp in listed.result().topic_partitions} == {0: 2, 1: 4, 2: 3}

    def dumped(*position: str) -> list[str]:
        out = tmp_path / f"dump-{uuid.uuid4().hex[:6]}.jsonl"
        done = _command("orderflow.replay", "dump", "--topic", topic, *position, "--output", str(out), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return sorted(json.loads(line)["value"] for line in out.read_text().splitlines())

    assert dumped("--from", "committed", "--group", group) == ["p0-2", "p0-3", "p0-4"]
    assert dumped("--from", f"{topic}:1=1", "--fallback", "latest") == ["p1-1", "p1-2", "p1-3"]
    assert dumped("--from", f"{topic}:1=1") == sorted(
        [f"p0-{i}" for i in range(5)] + ["p1-1", "p1-2", "p1-3"] + [f"p2-{i}" for i in range(3)])


def test_make_setup_a_second_time_does_nothing(stack):
    """``make setup`` after the set-up this session ran on (the stack fixture needs it): it prints nothing and
    touches none of what it installs (each step's stamp file or binary keeps its modification time)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    installed = [root / path for path in (
        ".venv/.installed", ".local/jars/.resolved", ".local/apicurio/.resolved", ".local/node/.installed",
        "orderflow/api/static/vendor/.installed", ".local/bin/prism", ".local/bin/kustomize", ".local/bin/promtool")]
    before = {path: path.stat().st_mtime_ns for path in installed}
    # As a user types it: not a sub-make of `make test` (whose MAKELEVEL makes make print its directory).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    again = subprocess.run(["make", "setup"], cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout, again.stderr) == ("", "")
    assert {path: path.stat().st_mtime_ns for path in installed} == before


def test_replay_run_orders_streaming_from_a_time_with_a_reference_data_refresh(module_settings, make_topic):
    """``replay run orders --from <time> --stream -- --refdata_refresh_seconds=2``, as a subprocess on Prism: the
    order stamped before the time is never read, the one after it is priced; a price changed while it streams
    prices the next order once the snapshot is older than 2 s (with the default 300 s the old price would stay);
    SIGTERM drains it (exit 0) with the group's offset committed at the end of what it read."""
    from decimal import Decimal

    from orderflow import refdata
    from orderflow.model import pricing
    from orderflow_dev import PRISM_BINARY
    from orderflow_dev.generate.orders import encode_order
    from tests.support.waiting import START_TIMEOUT

    assert PRISM_BINARY.is_file(), f"{PRISM_BINARY} is missing: `make prism` builds it"
    today = pricing.today(module_settings)
    days = (today - dt.timedelta(days=1), today)  # an order across the exchange's midnight finds either day
    asset, code = "RFSH3", f"RFSH3-{uuid.uuid4().hex[:6]}"
    for day in days:
        refdata.load_reference_data(module_settings, day, {asset: (code, Decimal("10"))}, merge=True)
    topic = make_topic("replay-stream", partitions=1)
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)

    def order(order_id: str, at_ms: int):
        return [(b"rs", encode_order("json", order_id, "rs-client", asset, 3, at_ms), at_ms)]

    produce(module_settings.kafka_bootstrap, topic, order("rs-before", now_ms - 120_000), partition=0)
    since = dt.datetime.fromtimestamp((now_ms - 60_000) / 1000, dt.timezone.utc).isoformat()
    produce(module_settings.kafka_bootstrap, topic, order("rs-after", now_ms - 30_000), partition=0)
    group = f"rs-{uuid.uuid4().hex[:8]}"
    replay = subprocess.Popen(
        [sys.executable, "-m", "orderflow.replay", "run", "orders", "--from", since, "--group", group, "--stream",
         "--", f"--orders_topic={topic}", f"--trade_days={days[0]},{days[1]}", "--alarm_rules=[]",
         "--refdata_refresh_seconds=2"],
        env={**os.environ, **settings_environment(module_settings)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)

    def stored() -> dict[str, Decimal]:
        assert replay.poll() is None, replay.communicate()[1][-3000:]
        with psycopg.connect(module_settings.postgres_dsn) as conn:
            return dict(conn.execute("SELECT order_id, total FROM orders WHERE order_id LIKE 'rs-%%'").fetchall())

    try:
        wait_for(lambda: "rs-after" in stored(), START_TIMEOUT, "the order after --from priced")
        # The snapshot that priced rs-after was loaded before this change.
        for day in days:
            refdata.load_reference_data(module_settings, day, {asset: (code, Decimal("20"))}, merge=True)
        time.sleep(2.5)  # --refdata_refresh_seconds is the feature: the snapshot is now older than it
        produce(module_settings.kafka_bootstrap, topic, order("rs-changed", now_ms), partition=0)
        wait_for(lambda: "rs-changed" in stored(), 60, "the order after the price change priced")
        assert stored() == {"rs-after": Decimal("30"), "rs-changed": Decimal("60")}  # 3 x 10, then 3 x 20
    finally:
        _, err = stop_as_kill(replay)
    assert replay.returncode == 0, err[-3000:]
    offsets = _command("orderflow.replay", "offsets", "--group", group, "--topic", topic,
                       env=settings_environment(module_settings))
    assert [(r["committed"], r["end"]) for r in map(json.loads, offsets.stdout.splitlines())] == [(3, 3)]
