"""A bounded orders run killed midway (SIGKILL, in a subprocess), then rerun: exact totals, one SMS each.

"Midway" does not depend on the machine's speed: a deferred trigger (test instrumentation in the module's own
database) holds every commit of orders after the first committed one on an advisory lock this test holds. The
run is killed while a commit waits there, after its transaction wrote the daily volumes to DynamoDB.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg

from orderflow.config import settings_environment
from tests.support.orders_scenario import DAY, check_state, dynamodb_volumes, prepare_scenario

N = 30_000
GATE_LOCK = 4242  # the advisory lock the held commits wait on
HOLD_COMMITS_AFTER_THE_FIRST = f"""
CREATE TABLE kill_gate (xid xid8 PRIMARY KEY);
CREATE FUNCTION hold_later_commits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kill_gate VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    IF EXISTS (SELECT 1 FROM kill_gate WHERE xid <> pg_current_xact_id()) THEN  -- another one committed
        PERFORM pg_advisory_xact_lock_shared({GATE_LOCK});
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER hold_later_commits AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hold_later_commits();
"""
RELEASE_GATE = "DROP TRIGGER hold_later_commits ON orders; DROP FUNCTION hold_later_commits(); DROP TABLE kill_gate"


def _environment(settings) -> dict[str, str]:
    return {**os.environ, **settings_environment(settings)}


def _run(settings, rules, day) -> subprocess.Popen:
    argv = [sys.executable, "-m", "orderflow.pipelines.orders", "--bounded", f"--trade_days={day}",
            f"--alarm_rules={json.dumps(rules)}", "--orders_batch_size=200"]
    return subprocess.Popen(argv, env=_environment(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _held_commits(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
                        (GATE_LOCK,)).fetchone()[0]


def test_killed_midway_then_rerun_is_exact(module_settings):
    settings = module_settings
    day = DAY  # the helpers check this day; this module has its own database, topics and tables
    s = prepare_scenario(settings, N, seed=99)
    expected, rules, alarms, phones = s.expected, s.rules, s.alarms, s.phones

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as gate:
        gate.execute(HOLD_COMMITS_AFTER_THE_FIRST)
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))
        first = _run(settings, rules, day)
        deadline = time.monotonic() + 300
        try:
            while not _held_commits(gate):  # the run is stuck at a commit: midway, whatever the speed
                assert first.poll() is None, first.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "no commit of the first run reached the gate in 300 s"
                time.sleep(0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        # The killed run's server sessions (one waiting at the gate) end with it; then the gate goes.
        gate.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        written_before_kill = gate.execute("SELECT count(*) FROM orders").fetchone()[0]
        # The held transaction had written its clients' volumes to DynamoDB: it is ahead of Postgres now.
        assert sum(n for _, n in dynamodb_volumes(settings, day).values()) > written_before_kill
        gate.execute(RELEASE_GATE)
        gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_LOCK,))
    assert 0 < written_before_kill < expected["unique"]

    second = _run(settings, rules, day)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output.decode()[-3000:]
    check_state(settings, expected, alarms, phones)
