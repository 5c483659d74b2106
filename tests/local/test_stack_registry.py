"""The schema registry of the local stack (Apicurio, kafkasql storage): loopback only, schemas kept in the stack's
Kafka across a restart, stopped before the broker."""
from __future__ import annotations

import pathlib

from orderflow.clients import schema_registry


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6, hex decoded)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


# 127.0.0.1 as /proc/net shows it: little-endian in tcp, an IPv4-mapped IPv6 address in tcp6.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def test_the_registry_listens_on_loopback_only(own_stack):
    stack, _ = own_stack
    for port in (stack.ports.registry, stack.ports.registry_management):
        addresses = _listening_addresses(port)
        assert addresses and addresses <= LOOPBACK, (port, addresses)


def test_schemas_survive_a_restart_and_down_stops_the_registry_before_the_broker(own_stack):
    stack, settings = own_stack
    registry = schema_registry(settings)
    subjects = registry.subjects()
    assert f"{settings.topics.orders}-value" in subjects  # bootstrap registered the repository's schemas
    ids = {subject: registry.client.get_latest_version(subject).schema_id for subject in subjects}
    assert stack.stop("registry") == "stopped"
    stack.up()
    after = schema_registry(settings)  # a new client: nothing cached
    assert {subject: after.client.get_latest_version(subject).schema_id for subject in after.subjects()} == ids
    down = stack.down()
    assert list(down)[0] == "registry" and down["registry"] == "stopped"
    # A clean Quarkus shutdown (SIGTERM answered), not the SIGKILL a hung one gets after the timeout.
    assert "apicurio-registry-app stopped in" in stack.log_path("registry").read_text()
