"""Serving the API with uvicorn, with the connection limits uvicorn lacks, and secrets kept out of logs.

uvicorn's h11 protocol has an idle timeout between requests but none while a request's headers arrive,
and no cap on connections: a client trickling header bytes holds a connection (and its memory) forever,
and a thousand of them are all kept. ``GuardedH11Protocol`` adds:

- a header timeout: a request line and its headers must arrive within ``header_timeout_seconds`` of the
  request's first byte (or of the connection opening); otherwise ``408`` and the connection is closed;
- a connection limit: a connection beyond ``max_connections`` (per worker process) is answered ``503``
  and closed at once.

The body has its own deadline (``body_timeout_seconds``), enforced in ``ApiMiddleware`` where the body is
read. Both servers (``python -m orderflow.api serve`` and the tests' in-process server) are configured by
``uvicorn_config`` / ``serve`` here, so they run with the same protocol and limits.

uvicorn has no public setting for either limit: ``limit_concurrency`` answers 503 only once a request has
arrived (a connection that never sends one is kept), ``timeout_keep_alive`` runs only between requests, and
``h11_max_incomplete_event_size`` bounds the headers' size, not their time. So this subclasses uvicorn's
h11 protocol, using its documented asyncio.Protocol methods plus three members of uvicorn's own: ``conn`` (the
h11 connection, whose ``their_state`` says whether a request's headers are in), ``on_response_complete`` and
``loop``. uvicorn is pinned in setup.py, and tests/api/test_server.py fails on a version whose protocol lacks
them, before test_security.py's behaviour tests would.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from orderflow.config import ApiConfig, load_api_config

PROTOCOL = "orderflow.api.server:GuardedH11Protocol"
# The members of uvicorn's H11Protocol (beyond asyncio.Protocol's) this module relies on.
UVICORN_MEMBERS = ("conn", "on_response_complete", "loop", "transport", "logger")


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection limit (see the module docstring).

    The limits are ``limits`` (a subclass per ``ApiConfig``: ``guarded_protocol``) or, in the worker
    processes of ``serve``, the environment's (``load_api_config``), as the app's own are. Each class counts
    its own open connections (per worker process).
    """

    limits: ApiConfig | None = None
    open_connections: set[GuardedH11Protocol] = set()

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits or load_api_config()
        self.header_timeout_seconds = limits.header_timeout_seconds
        self.max_connections = limits.max_connections
        self._header_timer = None
        self._bytes_since_request = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.open_connections.add(self)
        if len(self.open_connections) > self.max_connections:
            self.logger.warning("Refused a connection: %d open, the limit is %d", len(self.open_connections) - 1,
                                self.max_connections)
            transport.write(_raw_response(503, "Service Unavailable",
                                          "the server is at its connection limit: retry shortly"))
            transport.close()
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_request += len(data)
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            # Still waiting for a request's headers: the clock runs from its first byte.
            self._arm_header_timer()
        else:
            self._cancel_header_timer()
            self._bytes_since_request = 0

    def connection_lost(self, exc) -> None:
        self.open_connections.discard(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._bytes_since_request = 0
        super().on_response_complete()  # arms uvicorn's keep-alive timer until the next request's first byte

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._bytes_since_request:  # a request started but its headers did not arrive in time
            self.transport.write(_raw_response(408, "Request Timeout",
                                               f"request headers not received within {self.header_timeout_seconds:g}s"))
        self.transport.close()


def guarded_protocol(limits: ApiConfig) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with ``limits`` and a connection count of its own: one server's protocol."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "open_connections": set()})


def install_log_redaction() -> None:
    """Keeps secrets out of the access log whatever configured logging (``orderflow.logs.RedactSecrets``): an
    old dashboard URL's ``?key=...`` is logged redacted."""
    from orderflow.logs import RedactSecrets

    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())


def _server_options(config: ApiConfig) -> dict[str, Any]:
    # The protocol by name: serve's worker processes import it and read their limits from the environment.
    return {"http": PROTOCOL, "timeout_keep_alive": config.keep_alive_seconds, "timeout_graceful_shutdown": 3}


def uvicorn_config(app, config: ApiConfig, host: str = "127.0.0.1", port: int = 18080, **kwargs):
    """A ``uvicorn.Config`` serving ``app`` in this process with the API's protocol and ``config``'s limits
    (uvicorn's public ``http`` setting takes the protocol class)."""
    import uvicorn

    options = {**_server_options(config), "http": guarded_protocol(config), **kwargs}
    return uvicorn.Config(app, host=host, port=port, **options)


def serve(host: str, port: int, workers: int = 1) -> None:
    """``python -m orderflow.api serve``: the app built from the environment, in ``workers`` processes."""
    import uvicorn

    from orderflow.logs import uvicorn_log_config

    uvicorn.run("orderflow.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", log_config=uvicorn_log_config("api"), **_server_options(load_api_config()))
