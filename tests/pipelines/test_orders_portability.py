"""Portability check of the orders pipeline: its portable proto, and a run through Beam's PortableRunner
(in-process job service, SDK worker over the Fn API) on small bounded input from the real local stack.

Input, expectations and the sink checks are the orders end-to-end test's (shared in
tests/support/orders_scenario.py), on 1,000 generated orders instead of 10,000: what must hold is the same.
"""
from __future__ import annotations

import collections

import pytest

from orderflow.pipelines import orders as orders_pipeline
from orderflow.portability import run_portable
from tests.support.orders_scenario import check_state, expected_alarms, pipeline_args, prepare_scenario, read_topic

N = 1_000


@pytest.fixture(scope="module")
def portable_run(module_settings):
    settings = module_settings
    s = prepare_scenario(settings, N, seed=7)  # DAY's scenario: the end-to-end test's expectations are for it

    def build(pipeline, options):
        orders_pipeline.build(pipeline, options, settings)

    # check=False: run through the Fn API whatever the static Flink check says; that check has its own test.
    run = run_portable(build, pipeline_args(s.rules), check=False)
    return settings, s.records, s.expected, s.rules, s.phones, run


def test_orders_pipeline_runs_portably_with_exact_results(portable_run):
    settings, records, expected, rules, phones, run = portable_run

    assert run.state == "DONE"
    check_state(settings, expected, expected_alarms(expected, rules), phones)
    priced = read_topic(settings, settings.topics.priced_orders)
    dead = read_topic(settings, settings.topics.orders_dead_letter)
    assert len(priced) + len(dead) == N
    reasons = collections.Counter(dict(headers)["dlq.reason"].decode() for *_, headers in dead)
    assert reasons == expected["reasons"]
    # Beam counters come back from the SDK worker through the job service.
    assert run.counter("records_in") == N
    assert run.counter("orders_priced") == len(priced)
    assert run.counter("postgres_inserted") == expected["unique"]


def test_orders_graph_has_an_sdk_environment_and_stateful_parts(portable_run):
    *_, run = portable_run
    assert run.graph["environments"] == ["beam:env:embedded_python_loopback:v1"]
    assert run.graph["leaf_urns"]["beam:transform:group_by_key:v1"] >= 1
    assert run.graph["leaf_urns"]["beam:transform:pardo:v1"] > 10


def test_orders_graph_is_readable_by_flink(portable_run):
    # Alarms use standard FixedWindows/SlidingWindows per rule: nothing Flink cannot rebuild in Java (an
    # earlier custom AlarmWindows WindowFn was flagged here and replaced).
    *_, run = portable_run
    assert run.graph["problems"] == []
