"""server.py's guard on uvicorn: the pinned uvicorn still has the protocol members the guard relies on (an
upgrade that drops one fails here by name, before test_security.py's behaviour tests fail less clearly), and
each in-process server gets its own limits and connection count."""
from __future__ import annotations

import asyncio
import importlib.metadata
import pathlib
import re

import h11
import uvicorn
from uvicorn.server import ServerState

from orderflow.api import server
from orderflow.config import ApiConfig

SETUP_PY = pathlib.Path(__file__).resolve().parents[2] / "setup.py"


def test_uvicorn_is_the_version_setup_py_pins():
    pinned = re.search(r'"uvicorn==([^"]+)"', SETUP_PY.read_text()).group(1)
    assert importlib.metadata.version("uvicorn") == pinned


def test_the_pinned_uvicorns_h11_protocol_has_every_member_the_guard_uses():
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=lambda scope, receive, send: None, http=server.guarded_protocol(ApiConfig()))
        config.load()
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        assert isinstance(protocol, server.GuardedH11Protocol)
        missing = [name for name in server.UVICORN_MEMBERS if not hasattr(protocol, name)]
        assert not missing, f"uvicorn's H11Protocol no longer has {missing}: the header timeout and limit break"
        assert isinstance(protocol.conn, h11.Connection) and protocol.conn.their_state is h11.IDLE
        assert callable(protocol.on_response_complete)
    finally:
        loop.close()


def test_each_server_has_its_own_limits_and_connection_count():
    small, large = ApiConfig(max_connections=2), ApiConfig(max_connections=200)
    first, second = server.guarded_protocol(small), server.guarded_protocol(large)
    assert (first.limits, second.limits) == (small, large)
    assert first.open_connections is not second.open_connections
    assert first.open_connections is not server.GuardedH11Protocol.open_connections
    assert server.uvicorn_config(None, small).http is not server.uvicorn_config(None, small).http
