"""``python -m orderflow_dev.local up|status|down`` as ``make stack-up`` / ``stack-status`` / ``stack-down`` run it, in a
root of its own and on the default ports moved by ``--port-offset`` (the first offset whose ports are all free, so
a developer's ``make stack-up`` stack on the default ports is left alone); ``up --no-bootstrap`` starts the services
and creates nothing in them; ``status`` exits 3 when a service is down.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from orderflow.config import Topics
from orderflow_dev.local.stack import StackPorts
from tests.support.ports import free_port_offset, port_free, stack_ports


def _local(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow_dev.local", *args], capture_output=True, text=True,
                          timeout=timeout)


def _states(output: str) -> dict[str, tuple[str, int]]:
    """``{service: (state, port)}`` from the command's table."""
    return {m[1]: (m[2], int(m[3])) for m in re.finditer(r"^(\w+)\s+([\w ]+?)\s+127\.0\.0\.1:(\d+)\s+log:", output, re.M)}


@pytest.mark.needs_stack  # python -m orderflow_dev.local up: a whole stack
def test_up_status_down_and_status_exit_code_3(tmp_path):
    offset = free_port_offset()
    ports = stack_ports(StackPorts.offset(offset))
    default = StackPorts()
    assert all(port == getattr(default, name) + offset for name, port in ports.items())
    base = pathlib.Path(os.environ.get("ORDERFLOW_TEST_STACK_DIR", ".local"))
    base.mkdir(parents=True, exist_ok=True)
    root = tempfile.mkdtemp(prefix="test-cli-stack-", dir=base)
    services = {name: port for name, port in ports.items() if name not in ("kafka_controller", "registry_management")}
    try:
        dsn = f"postgresql://orderflow@127.0.0.1:{ports['postgres']}/orderflow"
        default_topics = {getattr(Topics(), f.name) for f in dataclasses.fields(Topics)}

        def topics() -> set[str]:
            return set(AdminClient({"bootstrap.servers": f"127.0.0.1:{ports['kafka']}"}).list_topics(timeout=10).topics)

        bare = _local("up", "--no-bootstrap", "--root", root, f"--port-offset={offset}", timeout=240)
        assert bare.returncode == 0, bare.stdout + bare.stderr[-3000:]
        assert _states(bare.stdout) == {name: ("started", port) for name, port in services.items()}, bare.stdout
        # --no-bootstrap: the services run, and nothing was created in them.
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
        assert not default_topics & topics()

        up = _local("up", "--root", root, f"--port-offset={offset}", timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        assert _states(up.stdout) == {name: ("running", port) for name, port in services.items()}, up.stdout

        status = _local("status", "--root", root, f"--port-offset={offset}")
        assert status.returncode == 0, status.stdout
        assert _states(status.stdout) == {name: ("ready", port) for name, port in services.items()}
        # up bootstrapped the stack at its own endpoints: migrations and topics are there.
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0
        assert default_topics <= topics()

        down = _local("down", "--root", root, f"--port-offset={offset}")
        assert down.returncode == 0, down.stdout + down.stderr[-3000:]
        assert _states(down.stdout) == {name: ("stopped", port) for name, port in services.items()}

        after = _local("status", "--root", root, f"--port-offset={offset}")
        assert after.returncode == 3, after.stdout
        assert _states(after.stdout) == {name: ("down", port) for name, port in services.items()}
        assert all(port_free(port) for port in ports.values())
    finally:
        _local("down", "--root", root, f"--port-offset={offset}")
        shutil.rmtree(root, ignore_errors=True)


def test_mqtt_credentials_issues_accounts_the_running_broker_accepts_at_once(stack):
    import asyncio

    from orderflow_dev.generate.mqtt_fleet import Refused, RestaurantConnection

    ids = [f"cli-{n}-{os.getpid()}" for n in (1, 2)]
    issued = _local("mqtt-credentials", "--root", str(stack.root), *ids)
    assert issued.returncode == 0, issued.stderr
    passwords = dict(line.split() for line in issued.stdout.splitlines())
    assert set(passwords) == set(ids) and len(set(passwords.values())) == 2

    async def connect(restaurant_id: str, password: str) -> None:
        connection = RestaurantConnection(restaurant_id, password)
        await connection.connect("127.0.0.1", stack.ports.mosquitto)
        await connection.disconnect()

    for restaurant_id, password in passwords.items():
        asyncio.run(connect(restaurant_id, password))  # no restart: the broker reloaded its password file
    again = _local("mqtt-credentials", "--root", str(stack.root), ids[0])
    assert again.returncode == 0
    with pytest.raises(Refused):  # a new password replaces the old one
        asyncio.run(connect(ids[0], passwords[ids[0]]))
    asyncio.run(connect(ids[0], again.stdout.split()[1]))
    refused = _local("mqtt-credentials", "--root", str(stack.root), "a/b")
    assert refused.returncode == 2 and "not a restaurant id" in refused.stderr
