"""Configuration of orderflow, read from environment variables.

Every setting has a default that points at the local stack started by ``python -m orderflow_dev.local up``,
so a fresh checkout runs without any configuration; production overrides the variables.

Each field names its variable and says what it means (``_variable``); from the fields come ``ENVIRONMENT``
(the list the README's and docs/api.md's configuration tables are generated from: ``python -m
orderflow.config``), the one parser (``load_settings``, ``load_api_config``: a value is read as its field's
type — str, str | None with empty = None, int, float, bool) and its inverse (``settings_environment``). A
value that is not of its type is a ``ConfigurationError`` naming the variable.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import types
import typing
from collections.abc import Iterable, Mapping

# The exchange's and the restaurants' time zone unless configured: the one literal of it in the code.
DEFAULT_TIMEZONE = "America/Sao_Paulo"


class ConfigurationError(ValueError):
    """Environment variables whose values are not of their setting's type (the message names each)."""


def _variable(name: str, default: object, description: str):
    """A field set by the environment variable ``name``."""
    return dataclasses.field(default=default, metadata={"variable": name, "description": description})


@dataclasses.dataclass(frozen=True)
class Topics:
    """Kafka topic names (the issue tracker's names are the Portuguese originals)."""

    orders: str = _variable("ORDERFLOW_TOPIC_ORDERS", "ordem-ativo", "orders, as the exchange sends them")
    priced_orders: str = _variable("ORDERFLOW_TOPIC_PRICED_ORDERS", "ordem-ativo-precificado", "priced orders")
    orders_dead_letter: str = _variable("ORDERFLOW_TOPIC_ORDERS_DLQ", "ordem-ativo-dlq", "orders' dead letters")
    keepalive: str = _variable("ORDERFLOW_TOPIC_KEEPALIVE", "restaurant-keepalive", "restaurants' keep-alives")
    availability: str = _variable("ORDERFLOW_TOPIC_AVAILABILITY", "restaurant-availability",
                                  "restaurants' availability changes")


@dataclasses.dataclass(frozen=True)
class Settings:
    """All endpoints and names orderflow talks to."""

    kafka_bootstrap: str = _variable("ORDERFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092", "Kafka bootstrap servers")
    postgres_dsn: str = _variable("ORDERFLOW_POSTGRES_DSN", "postgresql://orderflow@127.0.0.1:15432/orderflow",
                                  "PostgreSQL connection string")
    redis_url: str = _variable("ORDERFLOW_REDIS_URL", "redis://127.0.0.1:16379/0", "Redis URL (restaurant hot state)")
    memcached_address: str = _variable("ORDERFLOW_MEMCACHED", "127.0.0.1:11311", "memcached host:port (pricing codes)")
    # The local stack serves DynamoDB with dynalite and SNS with moto; None means the real AWS endpoints.
    dynamodb_endpoint_url: str | None = _variable(
        "ORDERFLOW_DYNAMODB_ENDPOINT_URL", "http://127.0.0.1:18000",
        "DynamoDB endpoint (default: ORDERFLOW_AWS_ENDPOINT_URL if set); empty = real AWS")
    sns_endpoint_url: str | None = _variable(
        "ORDERFLOW_SNS_ENDPOINT_URL", "http://127.0.0.1:15000",
        "SNS endpoint (default: ORDERFLOW_AWS_ENDPOINT_URL if set); empty = real AWS")
    aws_region: str = _variable("ORDERFLOW_AWS_REGION", "us-east-1", "AWS region")
    # Every record on every topic names its writer schema by this registry's id (Confluent wire format).
    schema_registry_url: str = _variable(
        "ORDERFLOW_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081/apis/ccompat/v7",
        "schema registry, Confluent-compatible API (Apicurio's /apis/ccompat/v7)")
    topics: Topics = dataclasses.field(default_factory=Topics, metadata={"group": "topic names"})
    topic_partitions: int = _variable("ORDERFLOW_TOPIC_PARTITIONS", 4, "partitions of topics created by bootstrap")
    # DynamoDB tables and the SNS topic for alarms.
    prices_table: str = _variable("ORDERFLOW_PRICES_TABLE", "asset-prices", "DynamoDB table: pricing code -> price")
    client_volume_table: str = _variable("ORDERFLOW_CLIENT_VOLUME_TABLE", "client-daily-volume",
                                         "DynamoDB table: client daily volume")
    alarm_sns_topic: str = _variable("ORDERFLOW_ALARM_SNS_TOPIC", "orderflow-alarms", "SNS topic name for alarm SMS")
    exchange_timezone: str = _variable("ORDERFLOW_EXCHANGE_TZ", DEFAULT_TIMEZONE, "time zone that defines an order's day")
    # The presence rules, read by the presence pipeline (its options override them) and by the API's
    # status answers alike: see ``presence_rules(settings)``.
    opening_hours: str = _variable("ORDERFLOW_OPENING_HOURS", "10:00-23:00",
                                   "restaurants' opening hours, HH:MM-HH:MM local time")
    presence_timezone: str = _variable("ORDERFLOW_PRESENCE_TIMEZONE", DEFAULT_TIMEZONE, "time zone of the opening hours")
    keepalive_timeout_seconds: float = _variable("ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS", 120.0,
                                                 "a restaurant is connected until this long after a keep-alive")
    presence_redis_prefix: str = _variable("ORDERFLOW_PRESENCE_REDIS_PREFIX", "restaurant:",
                                           "key prefix of the restaurants' Redis hot state")
    keepalive_max_skew_seconds: float = _variable(
        "ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS", 300.0,
        "API and MQTT bridge: a keep-alive's sent_at further than this from arrival is replaced by the arrival time")
    # The restaurants' MQTT broker(s) and the bridge into Kafka (``python -m orderflow.bridge``). The local stack's
    # bridge account has the password ``orderflow`` (loopback only); production sets its own.
    mqtt_url: str = _variable("ORDERFLOW_MQTT_URL", "mqtt://127.0.0.1:11883",
                              "MQTT broker(s) of the restaurants, comma-separated (one bridge client each)")
    mqtt_username: str = _variable("ORDERFLOW_MQTT_USERNAME", "orderflow-bridge", "the MQTT bridge's account")
    mqtt_password: str = _variable("ORDERFLOW_MQTT_PASSWORD", "orderflow", "the bridge's password (the local stack's; production sets its own)")
    mqtt_share_group: str = _variable("ORDERFLOW_MQTT_SHARE_GROUP", "orderflow-bridge",
                                      "bridges subscribe as $share/<this>/restaurants/+/+ and share the load")
    mqtt_max_payload_bytes: int = _variable("ORDERFLOW_MQTT_MAX_PAYLOAD_BYTES", 1024,
                                            "MQTT bridge: a larger keep-alive or status payload is dropped")
    # How long every sink retries a store's transient errors (an outage) before the bundle fails:
    # ``orderflow.io.retry``.
    sink_retry_seconds: float = _variable(
        "ORDERFLOW_SINK_RETRY_SECONDS", 300.0,
        "pipelines: how long a sink retries an unavailable store before the bundle fails")

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


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """Knobs of the HTTP API itself (limits and timings); its endpoints are the ``Settings``."""

    max_body_bytes: int = _variable("ORDERFLOW_API_MAX_BODY_BYTES", 1_048_576, "a larger request body gets 413")
    max_orders_per_request: int = _variable("ORDERFLOW_API_MAX_ORDERS", 10_000,
                                            "a larger batch of orders gets 413 (split it)")
    max_ids: int = _variable("ORDERFLOW_API_MAX_IDS", 1_000, "most ids per /restaurants/status request")
    produce_timeout_seconds: float = _variable(
        "ORDERFLOW_API_PRODUCE_TIMEOUT", 15.0, "wait for a Kafka producer and the records' acknowledgement")
    kafka_producers: int = _variable("ORDERFLOW_API_KAFKA_PRODUCERS", 4,
                                     "transactional producers (ingest transactions at once) per process")
    kafka_max_waiting: int = _variable("ORDERFLOW_API_KAFKA_MAX_WAITING", 256,
                                       "ingest requests waiting for Kafka beyond this get 503 at once")
    kafka_transaction_max_records: int = _variable(
        "ORDERFLOW_API_KAFKA_TRANSACTION_MAX_RECORDS", 10_000,
        "most records of the ingest requests grouped into one Kafka transaction")
    kafka_transaction_max_bytes: int = _variable(
        "ORDERFLOW_API_KAFKA_TRANSACTION_MAX_BYTES", 4_194_304,
        "most bytes of the ingest requests grouped into one Kafka transaction")
    dashboard_refresh_seconds: float = _variable("ORDERFLOW_API_DASHBOARD_REFRESH", 1.0,
                                                 "the dashboard's feed computes a snapshot this often")
    key_cache_seconds: float = _variable("ORDERFLOW_API_KEY_CACHE_SECONDS", 10.0,
                                         "how long a revoked key may still be honoured")
    unknown_key_cache_seconds: float = _variable(
        "ORDERFLOW_API_UNKNOWN_KEY_CACHE_SECONDS", 60.0,
        "how long an unknown (or revoked) key id is answered from memory")
    auth_failures_per_minute: int = _variable("ORDERFLOW_API_AUTH_FAILURES_PER_MINUTE", 30,
                                              "failed authentications per client address before 429")
    dashboard_token_seconds: float = _variable(
        "ORDERFLOW_API_DASHBOARD_TOKEN_SECONDS", 900.0,
        "lifetime of a dashboard session token (renewed by the open page)")
    header_timeout_seconds: float = _variable("ORDERFLOW_API_HEADER_TIMEOUT", 10.0,
                                              "a request's line and headers must arrive within this (else 408)")
    body_timeout_seconds: float = _variable("ORDERFLOW_API_BODY_TIMEOUT", 30.0,
                                            "a request's body must arrive within this (else 408)")
    keep_alive_seconds: int = _variable("ORDERFLOW_API_KEEP_ALIVE", 5,
                                        "an idle keep-alive connection is closed after this")
    max_connections: int = _variable("ORDERFLOW_API_MAX_CONNECTIONS", 1000,
                                     "connections per worker process beyond this get 503")
    pg_pool_size: int = _variable("ORDERFLOW_API_PG_POOL_SIZE", 10, "PostgreSQL connections per worker process")
    # api/pipelines.py
    pipeline_stall_seconds: float = _variable(
        "ORDERFLOW_API_PIPELINE_STALL_SECONDS", 60.0,
        "a pipeline is failing in /healthz after this long without a report, or with lag growing and no commit")
    chart_sample_seconds: float = _variable("ORDERFLOW_API_CHART_SAMPLE_SECONDS", 5.0,
                                            "the dashboard's live history: one sample this often (api/charts.py)")
    chart_history_minutes: float = _variable("ORDERFLOW_API_CHART_HISTORY_MINUTES", 360.0,
                                             "... kept this long, in the API process's memory")


@dataclasses.dataclass(frozen=True)
class LocalStackConfig:
    """Where the developer's local stack lives (``python -m orderflow_dev.local``, ``make stack-up``, ``make demo``):
    read by the developer's tools only; the runtime reads its endpoints from ``Settings``."""

    root: str = _variable("ORDERFLOW_LOCAL_ROOT", ".local",
                          "the local stack's and `make demo`'s directory: data, logs, pid files (`make` targets and "
                          "`python -m orderflow_dev.local`, `orderflow_dev.demo`)")
    port_offset: int = _variable("ORDERFLOW_LOCAL_PORT_OFFSET", 0,
                                 "every port of that local stack and of `make demo`'s API (18080) + N: a second stack "
                                 "beside the default one, whose endpoints `make demo` then uses")


# The former single endpoint of both AWS services, still read: it is the default of the DynamoDB and SNS
# endpoint variables (an empty value = real AWS for both).
AWS_ENDPOINT_VARIABLE = "ORDERFLOW_AWS_ENDPOINT_URL"
_AWS_ENDPOINT_FIELDS = ("dynamodb_endpoint_url", "sns_endpoint_url")
# Read by ``orderflow.logs`` (``json_enabled``) before anything else is configured.
LOG_FORMAT_VARIABLE = "ORDERFLOW_LOG_FORMAT"
# Read by ``orderflow.pipelines.runner`` (``prism_location``): the Prism binary streaming runs use unless
# ``--prism_location`` or ``--runner`` says otherwise. No default in the runtime package: a worker has no
# repository; the developer's tools (orderflow_dev) pass the repository's build (`make prism`).
PRISM_LOCATION_VARIABLE = "ORDERFLOW_PRISM_LOCATION"


def prism_location(environ: Mapping[str, str] | None = None) -> str | None:
    """The Prism binary ``PRISM_LOCATION_VARIABLE`` names; None when unset or empty."""
    return (os.environ if environ is None else environ).get(PRISM_LOCATION_VARIABLE) or None


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable orderflow reads: a row of the configuration tables."""

    name: str
    description: str
    default: object = None  # None: unset
    field: str | None = None  # the field it sets, e.g. "Settings.topics.orders"; None: read apart (see above)
    group: str | None = None  # variables shown as one row of the tables (the topic names)

    @property
    def api(self) -> bool:
        return bool(self.field and self.field.startswith("ApiConfig."))


def _variables(cls, path: str, group: str | None = None) -> list[Variable]:
    """``cls``'s variables in field order, those of nested dataclasses after its own."""
    own, nested = [], []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "variable" in field.metadata:
            own.append(Variable(field.metadata["variable"], field.metadata["description"], field.default,
                                f"{path}.{field.name}", group))
        elif dataclasses.is_dataclass(hints[field.name]):
            nested += _variables(hints[field.name], f"{path}.{field.name}", field.metadata.get("group"))
    return own + nested


# Every variable orderflow reads, with its default and meaning: the README's configuration table is every
# one but the API's (``markdown_table``), docs/api.md's is the API's.
ENVIRONMENT: list[Variable] = [
    *_variables(Settings, "Settings"),
    Variable(AWS_ENDPOINT_VARIABLE, "the former single AWS endpoint: default of both endpoints above"),
    Variable(LOG_FORMAT_VARIABLE, "`text` for plain log lines", "json"),
    Variable(PRISM_LOCATION_VARIABLE, "the Prism binary of streaming runs unless `--prism_location` or `--runner` "
                                      "is given (the developer's tools: `.local/bin/prism`)"),
    *_variables(LocalStackConfig, "LocalStackConfig"),
    *_variables(ApiConfig, "ApiConfig"),
]


def _parse(raw: str, kind: object) -> object:
    """``raw`` as a value of the field type ``kind``; ValueError saying what was expected."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if raw == "":
            return None
    if kind is str:
        return raw
    if kind is bool:
        if raw.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if raw.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError("is not true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("is not a whole number") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("is not a number") from None
    raise TypeError(f"orderflow.config reads no {kind} from the environment")


def _load(cls, environ: Mapping[str, str], errors: list[str], defaults: Mapping[str, object] | None = None):
    """``cls`` with the fields whose variables ``environ`` sets (nested dataclasses alike) read as their
    types, over ``defaults``; each bad value is added to ``errors``."""
    values = dict(defaults or {})
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = field.metadata.get("variable")
        if name is None:
            if dataclasses.is_dataclass(hints[field.name]):
                values[field.name] = _load(hints[field.name], environ, errors)
        elif name in environ:
            try:
                values[field.name] = _parse(environ[name], hints[field.name])
            except ValueError as exc:
                errors.append(f"{name}={environ[name]!r} {exc} (default: {_text(field.default) or 'empty'})")
    return cls(**values)


def _loaded(cls, environ: Mapping[str, str] | None, defaults: Mapping[str, object] | None = None):
    errors: list[str] = []
    loaded = _load(cls, os.environ if environ is None else environ, errors, defaults)
    if errors:
        raise ConfigurationError("bad environment variable" + ("s" if len(errors) > 1 else "") + ": "
                                 + "; ".join(errors))
    return loaded


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Builds Settings from ``environ`` (default ``os.environ``); unset variables keep their defaults.

    Raises:
        ConfigurationError: a variable's value is not of its setting's type.
    """
    environ = os.environ if environ is None else environ
    defaults = {}
    if AWS_ENDPOINT_VARIABLE in environ:
        defaults = dict.fromkeys(_AWS_ENDPOINT_FIELDS, _parse(environ[AWS_ENDPOINT_VARIABLE], str | None))
    return _loaded(Settings, environ, defaults)


def load_api_config(environ: Mapping[str, str] | None = None) -> ApiConfig:
    """Builds the API's ApiConfig from ``environ`` (default ``os.environ``), like ``load_settings``.

    Raises:
        ConfigurationError: a variable's value is not of its knob's type.
    """
    return _loaded(ApiConfig, environ)


def load_local_config(environ: Mapping[str, str] | None = None) -> LocalStackConfig:
    """Builds the developer tools' LocalStackConfig from ``environ`` (default ``os.environ``), like ``load_settings``.

    Raises:
        ConfigurationError: a variable's value is not of its knob's type.
    """
    return _loaded(LocalStackConfig, environ)


def _text(value: object) -> str:
    """A value as its environment variable spells it (None: empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _environment(configured) -> dict[str, str]:
    env = {}
    for field in dataclasses.fields(configured):
        value = getattr(configured, field.name)
        if "variable" in field.metadata:
            env[field.metadata["variable"]] = _text(value)
        elif dataclasses.is_dataclass(value):
            env.update(_environment(value))
    return env


def settings_environment(settings: Settings, api: ApiConfig | None = None) -> dict[str, str]:
    """The ORDERFLOW_* variables that make ``load_settings()`` return ``settings`` (and ``load_api_config()``
    return ``api``, if given): how a child process (a benchmark side, the detached API) is handed the exact
    settings of its parent."""
    return {**_environment(settings), **(_environment(api) if api is not None else {})}


def with_overrides(settings: Settings, topics: dict[str, str | None] | None = None,
                   **fields: object) -> Settings:
    """``settings`` with the given fields and topic names replaced; ``None`` means "not given" and keeps
    the current value, so pipeline options that default to None can be passed straight through."""
    given = {name: value for name, value in fields.items() if value is not None}
    given_topics = {name: value for name, value in (topics or {}).items() if value is not None}
    if given_topics:
        given["topics"] = dataclasses.replace(settings.topics, **given_topics)
    return dataclasses.replace(settings, **given)


def _default_cell(value: object) -> str:
    if value is None:
        return "(unset)"
    return f"`{value:g}`" if isinstance(value, float) else f"`{_text(value)}`"


def markdown_table(variables: Iterable[Variable]) -> str:
    """The configuration table of ``variables`` (a group's variables share one row) in Markdown."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for _, grouped in itertools.groupby(variables, key=lambda variable: variable.group or variable.name):
        first, *others = row = list(grouped)
        # A group's row names its first variable in full and the others by what follows their common prefix.
        prefix = os.path.commonprefix([v.name for v in row]).rpartition("_")[0] if others else ""
        names = ", ".join([f"`{first.name}`", *(f"`{v.name[len(prefix):]}`" for v in others)])
        defaults = ", ".join(_default_cell(v.default) for v in row)
        lines.append(f"| {names} | {defaults} | {first.group if others else first.description} |")
    return "\n".join(lines)


# The README's table ends with this pointer to the API's own, in docs/api.md.
_API_ROW = "| `ORDERFLOW_API_*` | | the API's limits and timeouts ([docs/api.md](docs/api.md#configuration)) |"


def tables() -> dict[str, str]:
    """The configuration table of each document that has one: the README's (every variable but the API's)
    and docs/api.md's (the API's)."""
    return {"README.md": markdown_table(v for v in ENVIRONMENT if not v.api) + "\n" + _API_ROW,
            "docs/api.md": markdown_table(v for v in ENVIRONMENT if v.api)}


if __name__ == "__main__":
    for document, table in tables().items():
        print(f"{document}:\n\n{table}\n")
