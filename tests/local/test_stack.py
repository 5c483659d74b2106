import os
import subprocess

import port_for

from orderflow.local import LocalStack, StackPorts
from orderflow.local.roundtrip import run_roundtrips


def test_roundtrip_through_every_service(module_settings):
    rows = run_roundtrips(module_settings)
    assert [r.service for r in rows] == ["kafka", "postgres", "redis", "memcached", "dynamodb", "sns"]
    failed = [(r.service, r.detail) for r in rows if not r.ok]
    assert failed == []


def test_second_up_reuses_the_running_services(stack):
    pids_before = {name: (stack.root / "run" / f"{name}.pid").read_text() for name in stack.services}
    states = stack.up()
    assert set(states.values()) == {"running"}
    pids_after = {name: (stack.root / "run" / f"{name}.pid").read_text() for name in stack.services}
    assert pids_after == pids_before
    assert set(stack.status().values()) == {"ready"}


def _pids_of(root) -> list[int]:
    return [int(p.read_text()) for p in (root / "run").glob("*.pid")]


def test_down_stops_only_what_it_started(tmp_path):
    ports = StackPorts(redis=port_for.select_random(), memcached=port_for.select_random())
    bystander = subprocess.Popen(["sleep", "60"])  # a process that is not the stack's
    small = LocalStack(tmp_path, ports, only=("redis", "memcached"))
    try:
        assert small.up() == {"redis": "started", "memcached": "started"}
        pids = _pids_of(tmp_path)
        assert len(pids) == 2
        assert set(small.down().values()) == {"stopped"}
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
        assert bystander.poll() is None
        assert set(small.status().values()) == {"down"}
        assert set(small.down().values()) == {"not running"}
    finally:
        bystander.kill()
        small.down()


def test_a_taken_port_is_reported_with_the_service_name(tmp_path, stack):
    taken = LocalStack(tmp_path, StackPorts(redis=stack.ports.redis), only=("redis",))
    try:
        taken.up()
    except Exception as exc:  # noqa: BLE001
        assert "redis" in str(exc) and str(stack.ports.redis) in str(exc)
    else:
        raise AssertionError("up() on a taken port must fail")
