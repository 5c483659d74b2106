"""The orders pipeline's command line as an operator runs it: a bounded run ends with its summary (records,
priced, duplicates, dead letters by reason) and no warning (the streaming summary: test_presence_command_line)."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from orderflow.config import settings_environment
from tests.support.orders_scenario import DAY, prepare_scenario, read_topic

N = 400


@pytest.fixture(scope="module")
def scenario(module_settings):
    return prepare_scenario(module_settings, N, seed=5)


def _command(settings, rules, *extra) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "orderflow.pipelines.orders", f"--trade_days={DAY}",
            f"--alarm_rules={json.dumps(rules)}", "--orders_batch_size=100", *extra]
    return argv, {**os.environ, **settings_environment(settings)}


def test_a_bounded_run_ends_with_its_summary_and_no_warning(scenario, module_settings):
    argv, env = _command(module_settings, scenario.rules, "--bounded")
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    kinds = collections.Counter(r.kind for r in scenario.records)
    reasons = scenario.expected["reasons"]
    dead = sum(reasons.values())
    assert len(read_topic(module_settings, module_settings.topics.priced_orders)) == N - dead
    by_reason = ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items()))
    assert run.stdout.splitlines()[-1] == (
        f"orders pipeline done: {N:,} records, {N - dead:,} priced, {kinds['duplicate']:,} duplicates, 0 replayed, "
        f"{len(scenario.alarms):,} alarms, {dead:,} dead letters ({by_reason})")
    # The alarms' Flatten of fixed- and sliding-window branches made Beam warn on every run.
    assert "same window" not in run.stderr and "WARNING" not in run.stderr, run.stderr[-3000:]
