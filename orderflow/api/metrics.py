"""Prometheus metrics of the API and the ASGI middleware that records them (and limits body size)."""
from __future__ import annotations

import json
import time

from prometheus_client import Counter, Histogram

REQUESTS = Counter("orderflow_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("orderflow_api_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INGESTED_RECORDS = Counter("orderflow_api_ingested_records_total", "records acknowledged by Kafka", ["topic"])
KAFKA_TRANSACTIONS = Counter("orderflow_api_kafka_transactions_total",
                             "ingest transactions by outcome: committed, aborted, unconfirmed", ["outcome"])
KAFKA_PRODUCER_STARTS = Counter("orderflow_api_kafka_producer_starts_total",
                                "transactional producers initialised (first use, and each rebuild after a failure)")


class ApiMiddleware:
    """Pure ASGI middleware: 413 for bodies over ``max_body_bytes``, and request count/latency metrics.

    The declared Content-Length is checked before anything is read; a chunked body is read up to the
    limit and refused as soon as it goes past it.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}
        limit = self.max_body_bytes

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._too_large(send_recording, limit)
                return
            if declared is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                # Chunked body: read it here (at most ``limit`` bytes are held) and replay it to the app.
                body, more = bytearray(), True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        await self._too_large(send_recording, limit)
                        return
                replayed = {"done": False}

                async def replay():
                    if not replayed["done"]:
                        replayed["done"] = True
                        return {"type": "http.request", "body": bytes(body), "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status["code"])).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)

    @staticmethod
    async def _too_large(send, limit: int) -> None:
        body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
