"""Outages of a store: which errors are transient, and how long a sink keeps retrying them.

This module is the one place of the outage rule every sink follows:

- An error that says the store is *unavailable* (connection refused or lost, the server shutting down or
  starting, a timeout, throttling, a deadlock or serialization failure) is **transient**: the sink
  retries the same idempotent write with exponential backoff (0.2 s doubling up to 5 s, with jitter) for
  up to ``Settings.sink_retry_seconds`` (``ORDERFLOW_SINK_RETRY_SECONDS``, default 300 s), logging each
  attempt and counting it (Beam counter ``<namespace>/transient_retries``). A 30 s outage of Postgres,
  DynamoDB, Redis or the broker is ridden through inside the running bundle: no record is lost, the
  pipeline does not restart, and nothing needs doing by hand.
- An error about the *data* (``orderflow.io.postgres.is_data_error``, DynamoDB ``ValidationException``,
  a Redis error reply about the value) is never retried: the sinks dead-letter those records.
- Anything else, or a transient error that outlasts the budget, fails the bundle. The runner then
  retries the bundle (Flink) or fails the job (Prism fails fast); a restarted job resumes from its
  consumer group's committed offsets and ends exact (see docs/reliability.md).

Every write the sinks retry is idempotent (orders by ``order_id``, absolute DynamoDB volumes, Redis
scripts that merge, presence intervals by key), so a retry after an error whose outcome is unknown
(a COMMIT whose answer was lost) writes nothing twice.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

__all__ = ["DEFAULT_RETRY_SECONDS", "REDIS_SERVER_STATE_ERRORS", "call_with_retry", "is_transient"]

_LOG = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = 300.0
_FIRST_DELAY, _MAX_DELAY = 0.2, 5.0

# Postgres SQLSTATEs that mean "try again": 08 connection exception, 40001 serialization failure,
# 40P01 deadlock, 53 insufficient resources, 57P01-57P05 admin/crash shutdown, cannot connect now,
# idle session timeout; 57014 query cancelled (our statement timeout on a hung server).
_POSTGRES_TRANSIENT_PREFIXES = ("08", "53", "57P")
_POSTGRES_TRANSIENT_STATES = {"40001", "40P01", "57014"}
# DynamoDB (and AWS) error codes that mean "try again".
_AWS_TRANSIENT_CODES = {
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "InternalFailure", "ServiceUnavailable", "TransactionInProgressException",
    "LimitExceededException", "Throttling", "RequestTimeout", "RequestTimeoutException",
}
# Redis error replies about the server's state, not the data (also used by the Redis sink).
REDIS_SERVER_STATE_ERRORS = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
                             "NOSCRIPT")

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says a store is unavailable for now, rather than refusing the data."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if not state:  # client side: connection refused, lost, closed, or a timeout before any answer
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state in _POSTGRES_TRANSIENT_STATES or state.startswith(_POSTGRES_TRANSIENT_PREFIXES)

    import botocore.exceptions as aws

    if isinstance(exc, (aws.EndpointConnectionError, aws.ConnectionClosedError, aws.ReadTimeoutError,
                        aws.ConnectTimeoutError, aws.HTTPClientError)):
        return True
    if isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _AWS_TRANSIENT_CODES or status >= 500

    import redis

    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(REDIS_SERVER_STATE_ERRORS)

    from confluent_kafka import KafkaError, KafkaException

    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        error = exc.args[0]
        return not error.fatal() and (error.retriable() or error.code() in _KAFKA_TRANSIENT_CODES)
    return isinstance(exc, (ConnectionError, TimeoutError))


def _kafka_transient_codes() -> frozenset:
    from confluent_kafka import KafkaError

    return frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                      KafkaError._MSG_TIMED_OUT, KafkaError._RESOLVE, KafkaError._WAIT_COORD,
                      KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                      KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.LEADER_NOT_AVAILABLE,
                      KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT,
                      KafkaError.NETWORK_EXCEPTION})


_KAFKA_TRANSIENT_CODES = _kafka_transient_codes()


def call_with_retry(what: str, call: Callable[[], T], budget_seconds: float,
                    on_retry: Callable[[BaseException], object] | None = None) -> T:
    """``call()``, retried while it raises a transient error, for up to ``budget_seconds`` in all.

    ``on_retry(exc)`` runs before each new attempt (count it, drop a broken connection). The last error
    is raised as it was when the budget is spent or the error is not transient.
    """
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # tenacity sleeps only after a failed attempt
        _LOG.warning("%s: %s is unavailable (%s: %s); attempt %d failed, retrying in %.1f s "
                     "(%.0f of %.0f s spent)", what, _store_of(exc), type(exc).__name__,
                     str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "", state.attempt_number,
                     state.upcoming_sleep, state.seconds_since_start, budget_seconds)
        if on_retry is not None:
            on_retry(exc)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_delay(budget_seconds),
        wait=tenacity.wait_exponential_jitter(initial=_FIRST_DELAY, max=_MAX_DELAY, jitter=_FIRST_DELAY),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(call)


def _store_of(exc: BaseException) -> str:
    from orderflow.model.avro import SchemaRegistryUnavailable

    if isinstance(exc, SchemaRegistryUnavailable):
        return "the schema registry"
    module = type(exc).__module__.split(".")[0]
    return {"psycopg": "Postgres", "botocore": "DynamoDB", "redis": "Redis", "cimpl": "Kafka",
            "confluent_kafka": "Kafka"}.get(module, "the store")
