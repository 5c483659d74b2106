"""A Python process with no network, for the commands that promise to open no connection (``run_flink.sh
--dry-run``): ``no_network_environment(directory)`` is an environment whose interpreters load a
``sitecustomize`` with an audit hook (PEP 578) that fails every socket connection, datagram and name look-up
with ``NetworkForbidden``. The test's environment holds the guard, not the package under test."""
from __future__ import annotations

import os
import pathlib

# The audit events of the socket module's ways out (https://docs.python.org/3/library/audit_events.html).
FORBIDDEN_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo")

_SITECUSTOMIZE = '''\
import sys


class NetworkForbidden(RuntimeError):
    pass


def _refuse(event, args, forbidden=frozenset({events!r})):
    if event in forbidden:
        raise NetworkForbidden(f"tried to reach the network: {{event}} {{args}}")


sys.addaudithook(_refuse)
'''


def no_network_environment(directory: pathlib.Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process' environment) with ``directory`` first on PYTHONPATH, holding the
    guarding ``sitecustomize.py``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(events=FORBIDDEN_EVENTS))
    environ = dict(os.environ if base is None else base)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), environ.get("PYTHONPATH")]))
    return environ
