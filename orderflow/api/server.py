"""Serving the API with uvicorn, with the connection limits uvicorn lacks, and secrets kept out of logs.

The API speaks HTTP/1.1 through uvicorn's httptools protocol (``httptools``, the C parser llhttp): parsing and
writing with h11, pure Python, cost ~40 % of a keep-alive's API CPU (benchmarks/README.md, issue 26). uvicorn's
protocol has an idle timeout between requests but none while a request's headers arrive, no bound on their size
(llhttp takes any number of header bytes) and no cap on connections: a client trickling header bytes holds a
connection (and its memory) forever, and a thousand of them are all kept. ``GuardedHttpToolsProtocol`` adds:

- a header timeout: a request line and its headers must arrive within ``header_timeout_seconds`` of the
  request's first byte (or of the connection opening); otherwise ``408`` and the connection is closed;
- a header size bound: a request line and headers over ``MAX_HEADER_BYTES`` (h11's default, which the API had
  before) are answered ``431`` and the connection is closed;
- a reason with a refused request: llhttp refuses a malformed request, and one with both ``Content-Length``
  and ``Transfer-Encoding`` (how a request is smuggled behind another), before the app sees it; uvicorn answers
  a bare 400, this names llhttp's reason;
- a connection limit: a connection beyond ``max_connections`` (per worker process) is answered ``503``
  and closed at once.

The body has its own deadline (``body_timeout_seconds``), enforced in ``ApiMiddleware`` where the body is
read. Both servers (``python -m orderflow.api serve`` and the tests' in-process server) are configured by
``uvicorn_config`` / ``serve`` here, so they run with the same protocol and limits.

uvicorn has no public setting for the limits: ``limit_concurrency`` answers 503 only once a request has
arrived (a connection that never sends one is kept), ``timeout_keep_alive`` runs only between requests, and
``h11_max_incomplete_event_size`` is h11's alone. So this subclasses uvicorn's httptools protocol, using its
documented asyncio.Protocol methods, the parser's callbacks it implements (``on_message_begin``, ``on_url``,
``on_header``, ``on_headers_complete``), and three members of its own: ``cycle`` (the request under way, None
before the first), ``loop`` and ``transport``. uvicorn and httptools are pinned in setup.py, and
tests/api/test_server.py fails on a version whose protocol lacks them, before test_security.py's behaviour tests
would.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orderflow.config import ApiConfig, load_api_config

PROTOCOL = "orderflow.api.server:GuardedHttpToolsProtocol"
# The members of uvicorn's HttpToolsProtocol (beyond asyncio.Protocol's) this module relies on.
UVICORN_MEMBERS = ("on_message_begin", "on_url", "on_header", "on_headers_complete", "send_400_response", "cycle",
                   "loop", "transport", "logger")
MAX_HEADER_BYTES = 16 * 1024  # a request line and headers, as h11's max_incomplete_event_size default


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size bound and a connection limit (see the
    module docstring).

    The limits are ``limits`` (a subclass per ``ApiConfig``: ``guarded_protocol``) or, in the worker
    processes of ``serve``, the environment's (``load_api_config``), as the app's own are. Each class counts
    its own open connections (per worker process).
    """

    limits: ApiConfig | None = None
    open_connections: set[GuardedHttpToolsProtocol] = set()

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits or load_api_config()
        self.header_timeout_seconds = limits.header_timeout_seconds
        self.max_connections = limits.max_connections
        self._header_timer = None
        self._reading_headers = False  # from a request's first byte to the end of its headers
        self._header_bytes = 0  # of the request line and the complete headers parsed so far
        self._header_bytes_read = 0  # of the reads since the request's first one, while its headers are incomplete

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
        self._arm_header_timer()  # the clock runs from the opening until the first request's headers are in

    def data_received(self, data: bytes) -> None:
        reading_before = self._reading_headers
        super().data_received(data)
        if not self._reading_headers or self.transport.is_closing():
            return
        if reading_before:
            # Headers that never complete: the parser keeps a header's bytes until the header ends (on_header
            # counts complete ones), so the reads are counted too (all of a read that began inside the headers).
            self._header_bytes_read += len(data)
            if self._header_bytes_read > MAX_HEADER_BYTES:
                self._refuse_headers_too_large()
                return
        self._arm_header_timer()  # a request's headers are incomplete: the clock runs from its first byte

    def on_message_begin(self) -> None:
        self._reading_headers, self._header_bytes, self._header_bytes_read = True, 0, 0
        super().on_message_begin()

    # Over the bound, the callbacks raise: that stops the parser before the app sees the request, and uvicorn
    # answers through send_400_response.
    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: 400 with llhttp's reason (or 431), and the connection closed. uvicorn
        calls this while handling the parser's error, with a fixed message ("Invalid HTTP request received."); the
        error's own says what was wrong (e.g. "Transfer-Encoding can't be present with Content-Length": both
        framings, which is how a request is smuggled behind another)."""
        if self.transport.is_closing():
            return
        error = sys.exception()
        if error is not None and isinstance(error.__context__, _HeadersTooLarge):
            self._refuse_headers_too_large()
            return
        reason = str(error) if isinstance(error, httptools.HttpParserError) and str(error) else msg
        self.transport.write(_raw_response(400, "Bad Request", f"invalid HTTP request: {reason}"))
        self.transport.close()

    def _refuse_headers_too_large(self) -> None:
        self._cancel_header_timer()
        self.transport.write(_raw_response(431, "Request Header Fields Too Large",
                                           f"request line and headers larger than {MAX_HEADER_BYTES} bytes"))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self.open_connections.discard(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._reading_headers:  # a request started but its headers did not arrive in time
            self.transport.write(_raw_response(408, "Request Timeout",
                                               f"request headers not received within {self.header_timeout_seconds:g}s"))
        elif self.cycle is not None:
            return  # a request is under way or done: uvicorn's keep-alive timeout takes over after it
        self.transport.close()  # (or no request began since the connection opened)


class _HeadersTooLarge(Exception):
    pass


def guarded_protocol(limits: ApiConfig) -> type[GuardedHttpToolsProtocol]:
    """``GuardedHttpToolsProtocol`` with ``limits`` and a connection count of its own: one server's protocol."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "open_connections": set()})


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
