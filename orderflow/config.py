"""Configuration of orderflow, read from environment variables.

Every setting has a default that points at the local stack started by ``python -m orderflow.local up``,
so a fresh checkout runs without any configuration; production overrides the variables.
"""
from __future__ import annotations

import dataclasses
import os

# The exchange's and the restaurants' time zone unless configured: the one literal of it in the code.
DEFAULT_TIMEZONE = "America/Sao_Paulo"


@dataclasses.dataclass(frozen=True)
class Topics:
    """Kafka topic names (the issue tracker's names are the Portuguese originals)."""

    orders: str = "ordem-ativo"
    priced_orders: str = "ordem-ativo-precificado"
    orders_dead_letter: str = "ordem-ativo-dlq"
    keepalive: str = "restaurant-keepalive"
    availability: str = "restaurant-availability"


@dataclasses.dataclass(frozen=True)
class Settings:
    """All endpoints and names orderflow talks to."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    postgres_dsn: str = "postgresql://orderflow@127.0.0.1:15432/orderflow"
    redis_url: str = "redis://127.0.0.1:16379/0"
    memcached_address: str = "127.0.0.1:11311"
    # The local stack serves DynamoDB with dynalite and SNS with moto; None means the real AWS endpoints.
    dynamodb_endpoint_url: str | None = "http://127.0.0.1:18000"
    sns_endpoint_url: str | None = "http://127.0.0.1:15000"
    aws_region: str = "us-east-1"
    topics: Topics = dataclasses.field(default_factory=Topics)
    topic_partitions: int = 4
    # DynamoDB tables and the SNS topic for alarms.
    prices_table: str = "asset-prices"
    client_volume_table: str = "client-daily-volume"
    alarm_sns_topic: str = "orderflow-alarms"
    exchange_timezone: str = DEFAULT_TIMEZONE
    # The presence rules, read by the presence pipeline (its options override them) and by the API's
    # status answers alike: see ``presence_rules(settings)``.
    opening_hours: str = "10:00-23:00"
    presence_timezone: str = DEFAULT_TIMEZONE
    keepalive_timeout_seconds: float = 120.0
    presence_redis_prefix: str = "restaurant:"
    keepalive_max_skew_seconds: float = 300.0
    # How long every sink retries a store's transient errors (an outage) before the bundle fails:
    # ``orderflow.io.retry``.
    sink_retry_seconds: float = 300.0

    def endpoint_url(self, service: str) -> str | None:
        """The endpoint of an AWS service orderflow uses ("dynamodb" or "sns"); None = real AWS."""
        endpoints = {"dynamodb": self.dynamodb_endpoint_url, "sns": self.sns_endpoint_url}
        if service not in endpoints:
            raise ValueError(f"orderflow configures no endpoint for AWS service {service!r}")
        return endpoints[service]

    @property
    def memcached_host_port(self) -> tuple[str, int]:
        host, _, port = self.memcached_address.rpartition(":")
        return host, int(port)


# (environment variable, Settings field, description) — the README's configuration table is this list.
ENVIRONMENT = [
    ("ORDERFLOW_KAFKA_BOOTSTRAP", "kafka_bootstrap", "Kafka bootstrap servers"),
    ("ORDERFLOW_POSTGRES_DSN", "postgres_dsn", "PostgreSQL connection string"),
    ("ORDERFLOW_REDIS_URL", "redis_url", "Redis URL (restaurant hot state)"),
    ("ORDERFLOW_MEMCACHED", "memcached_address", "memcached host:port (pricing codes)"),
    ("ORDERFLOW_DYNAMODB_ENDPOINT_URL", "dynamodb_endpoint_url",
     "DynamoDB endpoint (default: ORDERFLOW_AWS_ENDPOINT_URL if set); empty = real AWS"),
    ("ORDERFLOW_SNS_ENDPOINT_URL", "sns_endpoint_url",
     "SNS endpoint (default: ORDERFLOW_AWS_ENDPOINT_URL if set); empty = real AWS"),
    ("ORDERFLOW_AWS_REGION", "aws_region", "AWS region"),
    ("ORDERFLOW_TOPIC_PARTITIONS", "topic_partitions", "partitions of topics created by bootstrap"),
    ("ORDERFLOW_PRICES_TABLE", "prices_table", "DynamoDB table: pricing code -> price"),
    ("ORDERFLOW_CLIENT_VOLUME_TABLE", "client_volume_table", "DynamoDB table: client daily volume"),
    ("ORDERFLOW_ALARM_SNS_TOPIC", "alarm_sns_topic", "SNS topic name for alarm SMS"),
    ("ORDERFLOW_EXCHANGE_TZ", "exchange_timezone", "time zone that defines an order's day"),
    ("ORDERFLOW_OPENING_HOURS", "opening_hours", "restaurants' opening hours, HH:MM-HH:MM local time"),
    ("ORDERFLOW_PRESENCE_TIMEZONE", "presence_timezone", "time zone of the opening hours"),
    ("ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS", "keepalive_timeout_seconds",
     "a restaurant is connected until this long after a keep-alive"),
    ("ORDERFLOW_PRESENCE_REDIS_PREFIX", "presence_redis_prefix", "key prefix of the restaurants' Redis hot state"),
    ("ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS", "keepalive_max_skew_seconds",
     "API: a keep-alive's sent_at may differ from arrival by at most this much"),
    ("ORDERFLOW_SINK_RETRY_SECONDS", "sink_retry_seconds",
     "pipelines: how long a sink retries an unavailable store before the bundle fails"),
]
# The former single endpoint of both AWS services, still read: it is the default of each of the two
# variables above (an empty value = real AWS for both).
AWS_ENDPOINT_VARIABLE = "ORDERFLOW_AWS_ENDPOINT_URL"
_AWS_ENDPOINT_FIELDS = ("dynamodb_endpoint_url", "sns_endpoint_url")
TOPIC_ENVIRONMENT = [
    ("ORDERFLOW_TOPIC_ORDERS", "orders"),
    ("ORDERFLOW_TOPIC_PRICED_ORDERS", "priced_orders"),
    ("ORDERFLOW_TOPIC_ORDERS_DLQ", "orders_dead_letter"),
    ("ORDERFLOW_TOPIC_KEEPALIVE", "keepalive"),
    ("ORDERFLOW_TOPIC_AVAILABILITY", "availability"),
]


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Builds Settings from ``environ`` (default ``os.environ``); unset variables keep their defaults."""
    environ = os.environ if environ is None else environ
    defaults = Settings()
    values = {}
    if AWS_ENDPOINT_VARIABLE in environ:
        values.update(dict.fromkeys(_AWS_ENDPOINT_FIELDS, environ[AWS_ENDPOINT_VARIABLE] or None))
    for variable, field, _ in ENVIRONMENT:
        if variable in environ:
            default = getattr(defaults, field)
            raw = environ[variable]
            if field in _AWS_ENDPOINT_FIELDS:
                values[field] = raw or None
            elif isinstance(default, int):
                values[field] = int(raw)
            elif isinstance(default, float):
                values[field] = float(raw)
            else:
                values[field] = raw
    topics = {field: environ[var] for var, field in TOPIC_ENVIRONMENT if var in environ}
    values["topics"] = dataclasses.replace(defaults.topics, **topics)
    return dataclasses.replace(defaults, **values)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The ORDERFLOW_* variables that make ``load_settings()`` return ``settings``: how a child process
    (a benchmark side, the detached API) is handed the exact settings of its parent."""
    env = {var: "" if getattr(settings, field) is None else str(getattr(settings, field))
           for var, field, _ in ENVIRONMENT}
    env.update({var: getattr(settings.topics, field) for var, field in TOPIC_ENVIRONMENT})
    return env


def with_overrides(settings: Settings, topics: dict[str, str | None] | None = None,
                   **fields: object) -> Settings:
    """``settings`` with the given fields and topic names replaced; ``None`` means "not given" and keeps
    the current value, so pipeline options that default to None can be passed straight through."""
    given = {name: value for name, value in fields.items() if value is not None}
    given_topics = {name: value for name, value in (topics or {}).items() if value is not None}
    if given_topics:
        given["topics"] = dataclasses.replace(settings.topics, **given_topics)
    return dataclasses.replace(settings, **given)
