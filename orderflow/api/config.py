"""Knobs of the HTTP API itself (limits and timings); endpoints come from ``orderflow.config.Settings``."""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    max_body_bytes: int = 1_048_576       # larger request bodies get 413
    max_orders_per_request: int = 10_000  # a larger batch gets 413 (split it)
    max_ids: int = 1_000                  # ids per /restaurants/status request
    produce_timeout_seconds: float = 15.0  # wait for a Kafka producer and the records' acknowledgement
    kafka_producers: int = 4              # transactional producers (ingest transactions at once) per process
    kafka_max_waiting: int = 256          # ingest requests waiting for Kafka beyond this get 503 at once
    dashboard_refresh_seconds: float = 1.0
    key_cache_seconds: float = 10.0       # how long a revoked key may still be honoured
    unknown_key_cache_seconds: float = 60.0  # how long an unknown (or revoked) key id is answered from memory
    auth_failures_per_minute: int = 30    # failed authentications per client address before 429
    dashboard_token_seconds: float = 900.0  # lifetime of a dashboard session token (renewed by the open page)
    header_timeout_seconds: float = 10.0  # a request's line and headers must arrive within this (else 408)
    body_timeout_seconds: float = 30.0    # a request's body must arrive within this (else 408)
    keep_alive_seconds: int = 5           # an idle keep-alive connection is closed after this
    max_connections: int = 1000           # connections per worker process beyond this get 503
    pg_pool_size: int = 10
    # a pipeline whose report is older than this, or whose consumer lag has grown this long with no committed
    # offset moving, is failing in /healthz (api/pipelines.py)
    pipeline_stall_seconds: float = 60.0
    chart_sample_seconds: float = 5.0     # the dashboard's live charts: one sample this often (api/charts.py)
    chart_history_minutes: float = 360.0  # ... kept this long, in the API process's memory


# (environment variable, ApiConfig field)
API_ENVIRONMENT = [
    ("ORDERFLOW_API_MAX_BODY_BYTES", "max_body_bytes"),
    ("ORDERFLOW_API_MAX_ORDERS", "max_orders_per_request"),
    ("ORDERFLOW_API_MAX_IDS", "max_ids"),
    ("ORDERFLOW_API_PRODUCE_TIMEOUT", "produce_timeout_seconds"),
    ("ORDERFLOW_API_KAFKA_PRODUCERS", "kafka_producers"),
    ("ORDERFLOW_API_KAFKA_MAX_WAITING", "kafka_max_waiting"),
    ("ORDERFLOW_API_DASHBOARD_REFRESH", "dashboard_refresh_seconds"),
    ("ORDERFLOW_API_KEY_CACHE_SECONDS", "key_cache_seconds"),
    ("ORDERFLOW_API_UNKNOWN_KEY_CACHE_SECONDS", "unknown_key_cache_seconds"),
    ("ORDERFLOW_API_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute"),
    ("ORDERFLOW_API_DASHBOARD_TOKEN_SECONDS", "dashboard_token_seconds"),
    ("ORDERFLOW_API_HEADER_TIMEOUT", "header_timeout_seconds"),
    ("ORDERFLOW_API_BODY_TIMEOUT", "body_timeout_seconds"),
    ("ORDERFLOW_API_KEEP_ALIVE", "keep_alive_seconds"),
    ("ORDERFLOW_API_MAX_CONNECTIONS", "max_connections"),
    ("ORDERFLOW_API_PG_POOL_SIZE", "pg_pool_size"),
    ("ORDERFLOW_API_PIPELINE_STALL_SECONDS", "pipeline_stall_seconds"),
    ("ORDERFLOW_API_CHART_SAMPLE_SECONDS", "chart_sample_seconds"),
    ("ORDERFLOW_API_CHART_HISTORY_MINUTES", "chart_history_minutes"),
]


def load_api_config(environ: dict[str, str] | None = None) -> ApiConfig:
    environ = os.environ if environ is None else environ
    defaults = ApiConfig()
    values = {}
    for variable, field in API_ENVIRONMENT:
        if variable in environ:
            values[field] = type(getattr(defaults, field))(environ[variable])
    return dataclasses.replace(defaults, **values)
