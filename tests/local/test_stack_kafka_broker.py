"""The local Kafka broker is a real, on-disk KRaft node: records and committed offsets survive a restart
(clean SIGTERM and SIGKILL), and the orders pipeline resumes from its group's committed offsets.

This module restarts its broker, so it runs on a stack of its own rather than the session's.
"""
from __future__ import annotations

import signal

import psycopg
import pytest
from apache_beam.metrics.metric import MetricsFilter

from orderflow import bootstrap, refdata
from orderflow.io.kafka_offsets import PartitionReader
from orderflow.model import sample_assets
from orderflow.pipelines import orders
from orderflow_dev.generate.orders import generate, produce
from tests.support.kafka_testing import produce as produce_raw
from tests.support.orders_scenario import DAY, dynamodb_volumes, expected_outcome, read_topic


def _restart_broker(stack, sig) -> None:
    assert stack.stop("kafka", sig=sig) == "stopped"
    assert stack.status()["kafka"] == "down"
    assert stack.up()["kafka"] == "started"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_every_record_survives_a_broker_restart(own_stack, sig):
    stack, settings = own_stack
    topic = f"survive-{sig.name.lower()}"
    bootstrap.create_topics(settings.kafka_bootstrap, [topic], 4)
    values = {f"v{i}".encode() for i in range(5000)}
    produce_raw(settings.kafka_bootstrap, topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5000)])

    _restart_broker(stack, sig)

    found = [value for _, _, value, _, _ in (m for p in range(4) for m in _read(settings, topic, p))]
    assert len(found) == len(values)
    assert set(found) == values


def _read(settings, topic, partition):
    from tests.support.kafka_testing import read_partition

    return read_partition(settings.kafka_bootstrap, topic, partition)


def _run_orders(settings, group):
    # An alarm rule that never fires: a bounded run that resumes mid-topic has not seen the earlier orders' windows (a
    # streaming runner restores window state from its checkpoint); orders and volumes must be exact.
    options = ["--bounded", "--orders_start=committed", f"--orders_group_id={group}", f"--trade_days={DAY}",
               '--alarm_rules=[{"id": "never", "scope": "all", "window": "day", "threshold": "1e15"}]',
               "--orders_batch_size=250"]
    result = orders.run(options, settings=settings)
    [read] = result.metrics().query(MetricsFilter().with_name("records").with_namespace("ReadFromKafka"))["counters"]
    return read.committed


def test_orders_pipeline_resumes_from_committed_offsets_after_a_broker_kill(own_stack):
    stack, settings = own_stack
    group = "orders-resume"
    prices = sample_assets.sample_prices(DAY)
    refdata.load_reference_data(settings, DAY, prices)
    records = list(generate(3000, seed=11, day=DAY, timezone=settings.exchange_timezone))
    first, second = records[:1800], records[1800:]
    expected = expected_outcome(records, prices)

    produce(settings.kafka_bootstrap, settings.topics.orders, first)
    assert _run_orders(settings, group) == len(first)

    _restart_broker(stack, signal.SIGKILL)
    # The group's commits are on disk too: every partition's committed offset is its end.
    with PartitionReader(settings.kafka_bootstrap, group) as reader:
        for partition in range(settings.topic_partitions):
            assert reader.committed_offset(settings.topics.orders, partition) == reader.end_offset(
                settings.topics.orders, partition)

    produce(settings.kafka_bootstrap, settings.topics.orders, second)
    # The second run starts at the committed offsets: it reads only what was produced after the restart.
    assert _run_orders(settings, group) == len(second)

    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == expected["unique"]
        by_client = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE trade_day = %s GROUP BY 1", (DAY,))}
    assert by_client == expected["volumes"]
    assert dynamodb_volumes(settings, DAY) == expected["volumes"]
    malformed = sum(expected["reasons"].values())
    assert len(read_topic(settings, settings.topics.orders_dead_letter)) == malformed
