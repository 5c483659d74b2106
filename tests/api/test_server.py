"""server.py's guard on uvicorn: the pinned uvicorn and httptools are installed, uvicorn's httptools protocol
still has the members the guard relies on (an upgrade that drops one fails here by name, before
test_security.py's behaviour tests fail less clearly), and each in-process server gets its own limits and
connection count."""
from __future__ import annotations

import asyncio
import importlib.metadata
import pathlib
import re

import uvicorn
from uvicorn.server import ServerState

from orderflow.api import server
from orderflow.config import ApiConfig

SETUP_PY = pathlib.Path(__file__).resolve().parents[2] / "setup.py"


def test_uvicorn_and_httptools_are_the_versions_setup_py_pins():
    for package in ("uvicorn", "httptools"):
        pinned = re.search(rf'"{package}==([^"]+)"', SETUP_PY.read_text()).group(1)
        assert importlib.metadata.version(package) == pinned, package


def test_the_pinned_uvicorns_httptools_protocol_has_every_member_the_guard_uses():
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=lambda scope, receive, send: None, http=server.guarded_protocol(ApiConfig()))
        config.load()
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        assert isinstance(protocol, server.GuardedHttpToolsProtocol)
        missing = [name for name in server.UVICORN_MEMBERS if not hasattr(protocol, name)]
        assert not missing, f"uvicorn's HttpToolsProtocol no longer has {missing}: the header limits break"
        assert protocol.cycle is None  # no request yet: what the header timeout reads as "none began"
        # The parser calls the protocol back: the guard's overrides are what it calls.
        for callback in ("on_message_begin", "on_url", "on_header", "on_headers_complete"):
            assert getattr(type(protocol), callback) is getattr(server.GuardedHttpToolsProtocol, callback)
    finally:
        loop.close()


def test_each_server_has_its_own_limits_and_connection_count():
    small, large = ApiConfig(max_connections=2), ApiConfig(max_connections=200)
    first, second = server.guarded_protocol(small), server.guarded_protocol(large)
    assert (first.limits, second.limits) == (small, large)
    assert first.open_connections is not second.open_connections
    assert first.open_connections is not server.GuardedHttpToolsProtocol.open_connections
    assert server.uvicorn_config(None, small).http is not server.uvicorn_config(None, small).http
