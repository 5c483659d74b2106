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
    pg_pool_size: int = 10


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
    ("ORDERFLOW_API_PG_POOL_SIZE", "pg_pool_size"),
]


def load_api_config(environ: dict[str, str] | None = None) -> ApiConfig:
    environ = os.environ if environ is None else environ
    defaults = ApiConfig()
    values = {}
    for variable, field in API_ENVIRONMENT:
        if variable in environ:
            values[field] = type(getattr(defaults, field))(environ[variable])
    return dataclasses.replace(defaults, **values)
