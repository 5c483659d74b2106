"""Ports of a second local stack beside a developer's: ``make stack-up`` and ``python -m orderflow_dev.local`` on the
default ports moved by an offset (``--port-offset``, ``ORDERFLOW_LOCAL_PORT_OFFSET``), the first offset whose ports
are all free, so that a stack on the default ports is left alone."""
from __future__ import annotations

import dataclasses
import socket

from orderflow_dev.local.stack import StackPorts


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def stack_ports(ports: StackPorts) -> dict[str, int]:
    return {f.name: getattr(ports, f.name) for f in dataclasses.fields(StackPorts)}


def free_port_offset(*others: int) -> int:
    """The first offset (of 1,000 to 20,000 by 1,000) at which every port of the stack, and each of ``others`` (default
    ports of what runs beside it, e.g. the demo's API), is free."""
    for offset in range(1000, 21000, 1000):
        ports = [*stack_ports(StackPorts.offset(offset)).values(), *(port + offset for port in others)]
        if all(port_free(port) for port in ports):
            return offset
    raise AssertionError("no port offset with every port free")
