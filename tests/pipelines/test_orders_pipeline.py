"""End to end on the real local stack: 10,000 orders (5% duplicates, 2% malformed, four formats) through
the bounded orders pipeline, checked against an independent computation; then the same replay again."""
from __future__ import annotations

import collections

import psycopg
import pytest
from apache_beam.metrics.metric import MetricsFilter

from orderflow.pipelines import orders as orders_pipeline
from orderflow.pipelines.summary import counters as run_counters
from tests.support.orders_scenario import check_state, pipeline_args, prepare_scenario, read_topic

N = 10_000
SOURCE_FORMAT = {"json": "JSON", "rest": "REST_PROXY", "csv": "CSV", "avro": "AVRO"}  # generator -> stored


@pytest.fixture(scope="module")
def scenario(module_settings):
    settings = module_settings
    s = prepare_scenario(settings, N, seed=42)
    result = orders_pipeline.run(pipeline_args(s.rules), settings=settings)
    return settings, s.records, s.expected, s.rules, s.alarms, s.phones, result


def test_each_input_format_and_each_duplicate_comes_through_the_pipeline(scenario):
    """Per input model, the orders stored are the unique valid orders generated in it; the pipeline counts
    every generated duplicate as one; both alarm rules fired (the generator's rates: test_orders_generator)."""
    settings, records, _, _, _, _, result = scenario
    meant = collections.Counter(SOURCE_FORMAT[r.fmt] for r in records if r.kind == "order")
    with psycopg.connect(settings.postgres_dsn) as conn:
        stored = dict(conn.execute("SELECT source_format, count(*) FROM orders GROUP BY 1").fetchall())
        fired = dict(conn.execute("SELECT rule_id, count(*) FROM alarms GROUP BY 1").fetchall())
    assert stored == meant and len(stored) == 4
    assert run_counters(result)["orders/postgres_duplicates"] == sum(r.kind == "duplicate" for r in records) > 0
    assert set(fired) == {"e2e-client-day", "e2e-all-1h"}


def test_sinks_hold_exactly_the_unique_valid_orders_and_alarms_fire_once(scenario):
    settings, _, expected, _, alarms, phones, _ = scenario
    check_state(settings, expected, alarms, phones)


def test_every_record_is_priced_or_dead_lettered_with_its_reason(scenario):
    settings, records, expected, _, _, _, result = scenario
    priced = read_topic(settings, settings.topics.priced_orders)
    dead = read_topic(settings, settings.topics.orders_dead_letter)
    assert len(priced) + len(dead) == N
    assert len(dead) == sum(expected["reasons"].values())
    reasons = collections.Counter(dict(headers)["dlq.reason"].decode() for *_, headers in dead)
    assert reasons == expected["reasons"]
    # Beam metrics count each stage and each reason.
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    assert counters["records_in"] == N
    assert counters["orders_priced"] == len(priced)
    assert counters["postgres_inserted"] == expected["unique"]
    for reason, count in expected["reasons"].items():
        assert counters[f"dead_letter_{reason}"] == count


def test_same_bounded_replay_again_changes_nothing(scenario):
    settings, _, expected, rules, alarms, phones, _ = scenario
    result = orders_pipeline.run(pipeline_args(rules), settings=settings)
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    assert counters.get("postgres_inserted", 0) == 0
    assert counters["postgres_replayed"] == expected["unique"]
    check_state(settings, expected, alarms, phones)

