"""End to end on the real local stack: 10,000 orders (5% duplicates, 2% malformed, four formats) through
the bounded orders pipeline, checked against an independent computation; then the same replay again."""
from __future__ import annotations

import collections

import pytest
from apache_beam.metrics.metric import MetricsFilter

from orderflow.pipelines import orders as orders_pipeline
from tests.pipelines.orders_scenario import check_state, pipeline_args, prepare_scenario, read_topic

N = 10_000


@pytest.fixture(scope="module")
def scenario(module_settings):
    settings = module_settings
    s = prepare_scenario(settings, N, seed=42)
    result = orders_pipeline.run(pipeline_args(s.rules), settings=settings)
    return settings, s.records, s.expected, s.rules, s.alarms, s.phones, result


def test_formats_rates_and_alarms_are_meaningful(scenario):
    _, records, expected, _, alarms, _, _ = scenario
    kinds = collections.Counter(r.kind for r in records)
    assert {r.fmt for r in records if r.kind == "order"} == {"json", "rest", "csv", "avro"}
    assert 400 < kinds["duplicate"] < 600 and 150 < kinds["malformed"] < 250
    assert expected["unique"] == kinds["order"]
    assert {rule for rule, _, _ in alarms} == {"e2e-client-day", "e2e-all-1h"}


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

