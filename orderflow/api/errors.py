"""Every error the API answers, in one shape per dialect, the OpenAPI responses that document them, and
which exceptions mean "a dependency is unavailable" (503) rather than "a bug" (500).

Two dialects:

- the API's own: ``{"detail": "<what is wrong, for people>", "errors": [{"loc": [...], "msg": ...}]}``
  (``errors`` only on a 422 that names fields), ``application/json``;
- Confluent REST Proxy v2 under ``/topics/``: ``{"error_code": <int>, "message": "<text>"}``,
  ``application/vnd.kafka.v2+json`` (see ``rest_proxy.py``).

Which one applies is decided by the request path, here only, so that a 413 from the middleware and a 401
from the key check look alike on the same path.
"""
from __future__ import annotations

import json

from fastapi import HTTPException
from pydantic import BaseModel, Field

__all__ = ["AUTHENTICATED", "ApiError", "ErrorOut", "REST_PROXY_MEDIA_TYPE", "WITH_BODY", "error_body", "responses",
           "rest_proxy_responses", "unavailable_dependency"]

REST_PROXY_PREFIX = "/topics/"
REST_PROXY_MEDIA_TYPE = "application/vnd.kafka.v2+json"
# REST Proxy's own codes where it has one; otherwise its error_code is the HTTP status (as rest-utils does).
REST_PROXY_CODES = {401: 40101, 403: 40301}


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str


class ErrorOut(BaseModel):
    """The body of every error response (outside ``/topics/``)."""

    detail: str = Field(description="what is wrong, for people")
    errors: list[ErrorItem] | None = Field(None, description="a 422's problems, one per field")


class RestProxyErrorOut(BaseModel):
    """REST Proxy v2 error body."""

    error_code: int = Field(description="the HTTP status, or REST Proxy's five-digit code (40101, 40301, 40401, "
                                        "50003)")
    message: str


class ApiError(HTTPException):
    """An HTTPException that may carry a REST Proxy ``error_code`` (used only in that dialect)."""

    def __init__(self, status_code: int, detail: str, error_code: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code, detail, headers=headers)
        self.error_code = error_code


DESCRIPTIONS = {
    400: "malformed request (a body that cannot be decoded, or both Content-Length and Transfer-Encoding)",
    401: "no valid API key",
    403: "the key's scopes do not allow this",
    404: "not found",
    406: "no acceptable response media type",
    408: "the request body did not arrive in time",
    413: "request body or batch too large",
    415: "unsupported Content-Type",
    422: "invalid input: the reason, and the fields at fault",
    429: "too many failed authentications from this address: wait Retry-After seconds",
    503: "a dependency (PostgreSQL, Redis, DynamoDB, Kafka, the schema registry) is unavailable, or the server is at its connection "
         "limit",
    504: "Kafka did not confirm the commit in time: the request may or may not have been written",
}


def responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, all with the ``ErrorOut`` body."""
    return {status: {"model": ErrorOut, "description": DESCRIPTIONS[status]} for status in statuses}


def rest_proxy_responses(*statuses: int) -> dict:
    return {status: {"description": DESCRIPTIONS[status],
                     "content": {REST_PROXY_MEDIA_TYPE: {"schema": RestProxyErrorOut.model_json_schema()}}}
            for status in statuses}


# What a caller can get from any operation that needs a key / has parameters / reads a body.
AUTHENTICATED = (400, 401, 403, 429, 503)
WITH_BODY = (408, 413, 422)


def error_body(path: str, status: int, detail: str, *, errors: list | None = None,
               error_code: int | None = None) -> tuple[bytes, str]:
    """``(body, media type)`` of an error answered on ``path``."""
    if path.startswith(REST_PROXY_PREFIX):
        code = error_code or REST_PROXY_CODES.get(status, status)
        return json.dumps({"error_code": code, "message": detail}).encode(), REST_PROXY_MEDIA_TYPE
    content: dict = {"detail": detail}
    if errors:
        content["errors"] = errors
    return json.dumps(content).encode(), "application/json"


def unavailable_dependency(exc: BaseException) -> str | None:
    """The dependency an exception says is unreachable, overloaded or timing out (answered 503), or None.

    Only connection and operational failures count; anything else (a bad statement, a missing table, a
    value the driver refuses) is a bug, answered 500.
    """
    try:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):  # also psycopg_pool's PoolTimeout
            return "postgres"
    except ImportError:  # pragma: no cover
        pass
    try:
        import redis

        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return "redis"
    except ImportError:  # pragma: no cover
        pass
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return "dynamodb"
        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
                "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                "ServiceUnavailable", "InternalServerError"):
            return "dynamodb"
    except ImportError:  # pragma: no cover
        pass
    from orderflow.model.avro import SchemaRegistryUnavailable

    if isinstance(exc, SchemaRegistryUnavailable):  # a schema's id not known yet: the registry is needed
        return "schema registry"
    try:
        from confluent_kafka import KafkaException

        if isinstance(exc, KafkaException) and exc.args and getattr(exc.args[0], "retriable", lambda: False)():
            return "kafka"
    except ImportError:  # pragma: no cover
        pass
    return None
