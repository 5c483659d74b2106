"""A bounded orders run killed midway (SIGKILL, in a subprocess), then rerun: exact totals, one SMS each."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from orderflow.config import settings_environment
from tests.pipelines.orders_scenario import DAY, check_state, prepare_scenario

N = 30_000


def _environment(settings) -> dict[str, str]:
    return {**os.environ, **settings_environment(settings)}


def _run(settings, rules, day) -> subprocess.Popen:
    argv = [sys.executable, "-m", "orderflow.pipelines.orders", "--bounded", f"--trade_days={day}",
            f"--alarm_rules={json.dumps(rules)}", "--orders_batch_size=200"]
    return subprocess.Popen(argv, env=_environment(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _orders_count(settings) -> int:
    with psycopg.connect(settings.postgres_dsn) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def test_killed_midway_then_rerun_is_exact(module_settings):
    settings = module_settings
    day = DAY  # the helpers check this day; this module has its own database, topics and tables
    s = prepare_scenario(settings, N, seed=99)
    expected, rules, alarms, phones = s.expected, s.rules, s.alarms, s.phones

    first = _run(settings, rules, day)
    deadline = time.monotonic() + 300
    try:
        while _orders_count(settings) == 0:
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run wrote nothing in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    written_before_kill = _orders_count(settings)
    if written_before_kill >= expected["unique"]:
        pytest.fail("the first run finished before it could be killed: not a midway kill")

    second = _run(settings, rules, day)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output.decode()[-3000:]
    check_state(settings, expected, alarms, phones)
    assert 0 < written_before_kill < expected["unique"]
