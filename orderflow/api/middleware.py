"""``ApiMiddleware``: the pure ASGI middleware around the whole app.

- (A request with both ``Content-Length`` and ``Transfer-Encoding``, how a request is smuggled behind another,
  never gets here: the server's HTTP parser refuses it with 400, ``server.py``.)
- The body of a POST/PUT/PATCH/DELETE is read here, whole, before the app runs: at most
  ``max_body_bytes`` (413; a declared Content-Length is checked before anything is read) and within
  ``body_timeout_seconds`` (408), so a slow body never holds a handler. The app then gets it at once.
- An exception the app lets through is answered 503 naming the dependency when it is a connection or
  operational failure, else 500; it is logged and never re-raised, so uvicorn keeps the keep-alive
  connection usable (a re-raised exception makes it close the connection).
- Request count and latency metrics (``metrics.py``).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time

from orderflow.api.errors import error_body, unavailable_dependency
from orderflow.api.metrics import LATENCY, REQUESTS

__all__ = ["ApiMiddleware"]

logger = logging.getLogger("orderflow.api")
METHODS_WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")


class ApiMiddleware:
    def __init__(self, app, max_body_bytes: int, body_timeout_seconds: float, fast_paths=(), fast_routes=()):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        # ``async (scope, body, send) -> bool``: answers a request with a body without the app, or declines
        # (False); the route path each answers for (by position in ``fast_routes``) labels its metrics.
        self.fast_paths = list(zip(fast_paths, fast_routes, strict=True))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 500, "started": False}
        fast_route = None

        async def send_recording(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def answer(status: int, detail: str, close: bool = False, headers=()):
            body, media_type = error_body(scope["path"], status, detail)
            response_headers = [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(body)).encode()), *headers]
            if close:
                response_headers.append((b"connection", b"close"))
            await send_recording({"type": "http.response.start", "status": status, "headers": response_headers})
            await send_recording({"type": "http.response.body", "body": body})

        try:
            app_receive = receive
            if scope["method"] in METHODS_WITH_BODY:
                declared = dict(scope["headers"]).get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                    await answer(413, f"request body larger than {self.max_body_bytes} bytes", close=True)
                    return
                try:
                    # A deadline on this task, not a task of its own (asyncio.wait_for's): a task per request
                    # cost ~2 % of a keep-alive's time (issue 26).
                    async with asyncio.timeout(self.body_timeout_seconds):
                        body = await self._read_body(receive)
                except TimeoutError:
                    await answer(408, f"request body not received within {self.body_timeout_seconds:g}s", close=True)
                    return
                except _BodyTooLarge:
                    await answer(413, f"request body larger than {self.max_body_bytes} bytes", close=True)
                    return
                if body is None:  # the client went away
                    return
                for fast_path, route in self.fast_paths:
                    if await fast_path(scope, body, send_recording):
                        fast_route = route
                        return
                app_receive = _replay(body, receive)
            try:
                await self.app(scope, app_receive, send_recording)
            except Exception as exc:  # noqa: BLE001 - answered here, never re-raised (see the docstring)
                dependency = unavailable_dependency(exc)
                if dependency is None:
                    logger.exception("%s %s failed", scope["method"], scope["path"])
                else:
                    logger.warning("%s %s: %s unavailable: %s", scope["method"], scope["path"], dependency, exc)
                if state["started"]:
                    return  # the response is under way: uvicorn closes the connection
                if dependency is None:
                    await answer(500, f"internal error ({type(exc).__name__}); it is logged")
                else:
                    await answer(503, f"{dependency} unavailable: {exc}"[:500])
        finally:
            path = fast_route or getattr(scope.get("route"), "path", None) or "unmatched"
            requests, latency = _series(scope["method"], path, state["status"])
            requests.inc()
            latency.observe(time.perf_counter() - started)

    async def _read_body(self, receive) -> bytes | None:
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                raise _BodyTooLarge
        return bytes(body)


@functools.lru_cache(maxsize=4096)
def _series(method: str, route: str, status: int):
    """The request counter's and the latency histogram's series of a method, route and status: looking a
    labelled series up (``labels``) cost ~4 % of a keep-alive's time (issue 26); routes are templates, so the
    combinations are few (the cache's bound only guards against surprises)."""
    return REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)


class _BodyTooLarge(Exception):
    pass


def _replay(body: bytes, receive):
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: only http.disconnect comes

    return replay
