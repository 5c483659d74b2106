"""``make demo-replay``, ``make demo``, ``make stack-status`` and ``make stack-down`` run as a user types them, in a
stack directory of their own (``ORDERFLOW_LOCAL_ROOT``) on the default ports moved by a free offset
(``ORDERFLOW_LOCAL_PORT_OFFSET``), so a developer's own ``make stack-up`` stack is left alone; ``make setup`` inside
them does nothing (the first line either prints is ``make stack-up``'s command). The sizes are the demo's options
(``ARGS``), small here. What they print is checked against what only a working system produces, recomputed here: the
replay's orders summary against the generated session's intent, its ranking against the plan; the live demo's order
in vitor's volume at today's price, the restaurant set unavailable and the MQTT restaurant killed offline for those
reasons, the feed's orders stored. ``make stack-down`` stops everything they started."""
from __future__ import annotations

import datetime as dt
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from decimal import Decimal

import psycopg
import pytest

from orderflow.config import ENVIRONMENT, load_settings
from orderflow.model import pricing, sample_assets
from orderflow_dev.demo.api import DEFAULT_PORT
from orderflow_dev.generate.keepalive import make_plan
from orderflow_dev.local.processes import detached_processes
from orderflow_dev.local.stack import LocalStack, StackPorts
from tests.support.orders_scenario import demo_session
from tests.support.ports import free_port_offset, port_free, stack_ports

REPO = pathlib.Path(__file__).resolve().parents[2]
ORDERS, SEED = 2_000, 1  # this seed's session fires both kinds of the demo's alarms
RESTAURANTS, MINUTES = 100, 60
LIVE = "--restaurants 50 --orders-per-second 5 --mqtt-restaurants 20"
MAKE_TIMEOUT = 900  # a hang bound: make's targets end by themselves (the demo waits 120 s at most per effect)


def _make(target: str, env: dict[str, str], args: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["make", target, *([f"ARGS={args}"] if args else [])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=MAKE_TIMEOUT)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def local_stack():
    """``(env, stack)``: the environment of a user's shell naming a stack directory and a port offset of its own (no
    make of ours around it, no ORDERFLOW_* setting of the session), and the stack it names. ``make stack-down``
    afterwards, and every port free again."""
    offset = free_port_offset(DEFAULT_PORT)
    base = pathlib.Path(os.environ.get("ORDERFLOW_TEST_STACK_DIR", REPO / ".local"))
    base.mkdir(parents=True, exist_ok=True)
    root = tempfile.mkdtemp(prefix="test-make-demo-", dir=base)
    settings_variables = {variable.name for variable in ENVIRONMENT}
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS") and k not in settings_variables}
    env.update(ORDERFLOW_LOCAL_ROOT=root, ORDERFLOW_LOCAL_PORT_OFFSET=str(offset))
    stack = LocalStack(root, StackPorts.offset(offset))
    try:
        yield env, stack
    finally:
        down = _make("stack-down", env)
        try:
            _ok(down)
            assert detached_processes(root) == [], down.stdout  # every process of the demo stopped
            assert set(stack.status().values()) == {"down"}, down.stdout
            assert all(port_free(port) for port in [*stack_ports(stack.ports).values(), DEFAULT_PORT + offset])
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _first_line(out: str) -> str:
    return out.splitlines()[0] if out else ""


@pytest.mark.needs_stack  # make demo-replay / make demo: a stack of their own, Prism, the make setup tools
def test_make_demo_replay_prints_the_session_and_the_ranking_the_generators_planned(local_stack):
    env, stack = local_stack
    settings = load_settings(stack.environment())
    yesterday = {pricing.today(settings) - dt.timedelta(days=1)}  # read before and after: midnight
    out = _ok(_make("demo-replay", env, f"--orders {ORDERS} --seed {SEED} --replay-restaurants {RESTAURANTS} "
                                        f"--minutes {MINUTES}"))
    assert _first_line(out) == ".venv/bin/python -m orderflow_dev.local up", out[:2000]  # make setup: nothing to do
    yesterday.add(pricing.today(settings) - dt.timedelta(days=1))

    # Orders: yesterday's generated session, as the generator meant it (tests.support.orders_scenario).
    day = dt.date.fromisoformat(re.search(rf"produced {ORDERS:,} records for (\S+):", out).group(1))
    assert day in yesterday, out
    kinds, expected, alarms = demo_session(ORDERS, SEED, day, settings.exchange_timezone)
    assert (f"{kinds['order']:,} orders, {kinds['duplicate']:,} duplicates, {kinds['malformed']:,} malformed"
            in out), out
    assert re.search(rf"pipeline \(bounded, whole topic\) in [\d.]+s: {ORDERS:,} records, "
                     rf"{ORDERS - sum(expected['reasons'].values()):,} priced, {expected['unique']:,} new orders, "
                     rf"{kinds['duplicate']:,} duplicates\n", out), out
    reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(expected["reasons"].items()))
    assert f"dead letters by reason: {reasons}\n" in out, out
    top = sorted(expected["volumes"].items(), key=lambda kv: (-kv[1][0], kv[0]))[:5]
    printed = re.findall(r"^  (\S+)\s+([\d.]+) BRL\s+(\d+) orders$", out, re.M)
    assert [(client, Decimal(total), int(count)) for client, total, count in printed] == [
        (client, total, count) for client, (total, count) in top], out
    assert len(alarms) > 0 and f"alarms recorded: {len(alarms)}, SMS sent through SNS: {len(alarms)}\n" in out, out

    # Presence: the ranking of the plan the generator made for the printed start (make_plan is deterministic).
    generated = re.search(rf"generated ([\d,]+) keep-alives and ([\d,]+) availability changes of {RESTAURANTS:,} "
                          r"restaurants, (\S+) -> (\S+)\n", out)
    assert generated, out
    plan = make_plan(RESTAURANTS, dt.datetime.fromisoformat(generated.group(3)), MINUTES)
    planned = {}
    for (restaurant, _), seconds in plan.expected().items():
        planned[restaurant] = planned.get(restaurant, 0) + seconds
    ranked = sorted(planned.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert ranked[0][1] > 0
    rows = re.findall(r"^\s+\d+\s+(rest-\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [(restaurant, float(minutes)) for restaurant, minutes, _ in rows] == [
        (restaurant, round(seconds / 60, 1)) for restaurant, seconds in ranked if seconds > 0], out
    api = f"http://127.0.0.1:{DEFAULT_PORT + int(env['ORDERFLOW_LOCAL_PORT_OFFSET'])}"
    assert re.search(rf"^API started on {api} ", out, re.M), out  # on the moved port, not 18080


@pytest.mark.needs_stack  # make demo: a stack of its own, both pipelines on Prism, the feed, MQTT, the API
def test_make_demo_streams_what_it_prints_then_stack_status_lists_it_running(local_stack):
    env, stack = local_stack
    started = dt.datetime.now(dt.timezone.utc)
    out = _ok(_make("demo", env, LIVE))
    assert _first_line(out) == ".venv/bin/python -m orderflow_dev.local up", out[:2000]  # make setup: nothing to do
    settings = load_settings(stack.environment())

    # vitor's one order today, at today's price of WEGE3 (the sample prices, by hand): 100 of them.
    order = re.search(r"vitor's order \(REST Proxy v2 request\) -> priced and in her volume after [\d.]+s: "
                      r"(\d+) orders today, ([\d.]+) BRL\n", out)
    assert order, out
    days = {pricing.today(settings) - dt.timedelta(days=d) for d in (0, 1)}  # the order may cross midnight
    assert int(order.group(1)) == 1
    assert Decimal(order.group(2)) in {100 * sample_assets.sample_prices(day)["WEGE3"][1] for day in days}, out
    unavailable = re.search(r"rest-00042 set UNAVAILABLE \(HOLIDAYS\) -> its status after [\d.]+s: (\w+) (\[.*\])\n", out)
    assert unavailable and unavailable.group(1) == "offline" and "'unavailable'" in unavailable.group(2), out
    killed = re.search(r"mqtt-demo \(MQTT\) connection killed -> its status after [\d.]+s: (\w+) (\[.*\])\n", out)
    assert killed and killed.group(1) == "offline" and "'disconnected'" in killed.group(2), out
    assert f"dashboard: http://127.0.0.1:{DEFAULT_PORT + int(env['ORDERFLOW_LOCAL_PORT_OFFSET'])}/dashboard#token=" in out
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE client_token = 'vitor' AND trade_day = ANY(%s)",
                            (sorted(days),)).fetchone()[0] == 1
        # The feed's orders stream through too.
        assert conn.execute("SELECT count(*) FROM orders WHERE client_token <> 'vitor' AND inserted_at >= %s",
                            (started,)).fetchone()[0] > 0

    status = _make("stack-status", env)
    assert status.returncode == 0, status.stdout + status.stderr  # 3 when a service or a process is down
    for name in ("orders", "presence", "feed", "bridge", "mqtt-feed", "api"):
        assert re.search(rf"^{re.escape(name)}\s+running\s+pid \d+", status.stdout, re.M), status.stdout
