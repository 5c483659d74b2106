"""The streaming orders pipeline SIGKILLed mid-stream (with Prism, its process group) and started again resumes
from its group's committed offsets: exact totals in Postgres and DynamoDB, and the alarm's SMS sent once.

"Mid-stream" does not depend on the machine's speed: as in ``tests/pipelines/test_orders_rerun.py``, a deferred
trigger (test instrumentation in the module's own database) holds every commit of this test's orders once the
alarm's commit is in, on an advisory lock the test holds. The run is killed while a commit waits there."""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from orderflow.model import pricing, sample_assets
from tests.support.orders_scenario import dynamodb_volumes
from tests.support.sns_testing import relay_tick_passed, sent_sms
from tests.support.waiting import START_TIMEOUT, wait_for

N = 600            # orders produced at RATE/s while the pipeline streams, dies and comes back
RATE = 100
CLIENTS = [f"restart-{i}" for i in range(8)]
ASSETS = ["PETR4", "VALE3", "ITUB4", "WEGE3", "SBSP3"]
GROUP = "orderflow-orders"
GATE_LOCK = 4243  # the advisory lock the held commits wait on
HOLD_COMMITS_AFTER_THE_ALARM = f"""
CREATE FUNCTION hold_commits_after_the_alarm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM alarms WHERE xmin <> pg_current_xact_id()::xid) THEN  -- another one fired it
        PERFORM pg_advisory_xact_lock_shared({GATE_LOCK});
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER hold_commits_after_the_alarm AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.client_token LIKE 'restart-%') EXECUTE FUNCTION hold_commits_after_the_alarm();
"""
RELEASE_GATE = "DROP TRIGGER hold_commits_after_the_alarm ON orders; DROP FUNCTION hold_commits_after_the_alarm()"


def _orders_count(settings) -> int:
    with psycopg.connect(settings.postgres_dsn) as conn:
        return conn.execute("SELECT count(*) FROM orders WHERE client_token = ANY(%s)", (CLIENTS,)).fetchone()[0]


def _committed(settings) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": GROUP})
    try:
        parts = [TopicPartition(settings.topics.orders, p) for p in range(settings.topic_partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30) if tp.offset >= 0}
    finally:
        consumer.close()


def _held_commits(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
                        (GATE_LOCK,)).fetchone()[0]


def test_killed_mid_stream_resumes_from_committed_offsets_exactly(run_pipeline, live_settings):
    settings = live_settings
    day = pricing.today(settings)
    prices = sample_assets.sample_prices(day)
    suffix = uuid.uuid4().hex[:6]
    # restart-0 buys a hundred times more than the others: only its daily total crosses the threshold.
    orders = [(f"restart-{suffix}-{i}", CLIENTS[i % len(CLIENTS)], ASSETS[i % len(ASSETS)],
               (1 + i % 7) * (100 if i % len(CLIENTS) == 0 else 1)) for i in range(N)]
    expected = collections.defaultdict(lambda: [Decimal(0), 0])
    for _, token, asset, quantity in orders:
        expected[token][0] += prices[asset][1] * quantity
        expected[token][1] += 1
    # restart-0 crosses its daily threshold within the first third of the orders; the kill comes after.
    threshold = sum(prices[a][1] * q for _, t, a, q in orders[:200] if t == CLIENTS[0])
    rules = [{"id": "restart-day", "scope": "client", "window": "day", "threshold": str(threshold)}]
    phone = f"+5521{int(uuid.uuid4().int % 10**9):09d}"
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, %s)", (phone, CLIENTS[0]))

    args = ("--outbox_relay_seconds=1", f"--alarm_rules={json.dumps(rules)}", f"--orders_group_id={GROUP}",
            "--orders_batch_size=50")
    pipeline = run_pipeline("orders", *args)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    warmup = f"restart-{suffix}-warmup"
    producer.produce(settings.topics.orders, json.dumps(
        {"ativo": "VALE3", "quantidade": 1, "token": "warmup", "order_id": warmup}).encode())
    producer.flush(30)

    def warm():
        with psycopg.connect(settings.postgres_dsn) as conn:
            return conn.execute("SELECT 1 FROM orders WHERE order_id = %s", (warmup,)).fetchone()

    wait_for(warm, START_TIMEOUT, "the first order priced", pipeline)

    def produce_steadily(producer):
        for order_id, token, asset, quantity in orders:
            producer.produce(settings.topics.orders, json.dumps(
                {"ativo": asset, "quantidade": quantity, "token": token, "order_id": order_id}).encode())
            producer.poll(0)
            time.sleep(1 / RATE)
        producer.flush(30)

    gate = psycopg.connect(settings.postgres_dsn, autocommit=True)
    gate.execute(HOLD_COMMITS_AFTER_THE_ALARM)
    gate.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))
    feeder = threading.Thread(target=produce_steadily, args=(producer,))
    feeder.start()
    wait_for(lambda: sent_sms(settings.sns_endpoint_url, {phone}), START_TIMEOUT, "the alarm's SMS before the kill",
             pipeline)
    # The run is stuck at a commit after the alarm's: mid-stream, whatever the machine's speed.
    wait_for(lambda: _held_commits(gate), START_TIMEOUT, "a commit held at the gate", pipeline)
    pgid = pipeline.pid
    pipeline.kill()  # SIGKILL to the process group: the pipeline and its Prism job server
    # The killed run's session waiting at the gate ends with it (a backend waiting on a lock does not notice its
    # client is gone); then the gate goes.
    gate.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                 " AND NOT granted", (GATE_LOCK,))
    stored_at_kill, committed_at_kill = _orders_count(settings), _committed(settings)
    gate.execute(RELEASE_GATE)
    gate.close()  # and its advisory lock with it
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # nothing of the group survived, Prism included
    status = subprocess.run([sys.executable, "-m", "orderflow_dev.local", "status", "--root", str(pipeline.root)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 3 and re.search(r"^orders\s+dead\s", status.stdout, re.M), status.stdout
    feeder.join()
    del producer  # before the stack stops: its threads would keep reconnecting
    assert 0 < stored_at_kill < N, f"not a mid-stream kill: {stored_at_kill} of {N} stored"
    assert sum(committed_at_kill.values()) > 0, "nothing was committed before the kill"

    restarted = run_pipeline("orders", *args)
    _, took = wait_for(lambda: _orders_count(settings) == N, START_TIMEOUT, f"all {N} orders stored after the restart",
                       restarted, interval=0.5)
    print(f"\nkilled with {stored_at_kill}/{N} orders stored; after the restart all stored in {took:.1f} s")
    # It resumed where the killed run's finalized bundles had committed, not from the start of the topic.
    resumed = {int(p): int(o) for p, o in re.findall(
        re.escape(settings.topics.orders) + r"/(\d+) starts at offset (\d+) \(committed\)",
        restarted.log_path.read_text().rsplit("starting orders", 1)[-1])}
    assert resumed == committed_at_kill

    with psycopg.connect(settings.postgres_dsn) as conn:
        by_client = {t: (total, n) for t, total, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE client_token = ANY(%s)"
            " AND trade_day = %s GROUP BY 1", (CLIENTS, day))}
        alarms = conn.execute("SELECT rule_id, scope FROM alarms").fetchall()
    assert by_client == {t: tuple(v) for t, v in expected.items()}

    def dynamodb_exact():
        volumes = dynamodb_volumes(settings, day)
        return all(volumes.get(t) == tuple(v) for t, v in expected.items())

    wait_for(dynamodb_exact, 60, "DynamoDB volumes equal to Postgres", restarted)
    assert alarms == [("restart-day", CLIENTS[0])]
    relay_tick_passed(settings, "the restart", 60, restarted)  # a second SMS would be sent by then
    assert len(sent_sms(settings.sns_endpoint_url, {phone})) == 1
