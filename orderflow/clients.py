"""The clients of orderflow's services, built from ``Settings`` in one place.

Every module that talks to AWS (DynamoDB, SNS), memcached, Redis, Postgres or Kafka with the configured
endpoints gets its client here. The pipelines' sinks add their own timeouts and retries on top
(``orderflow.io.postgres.connect``, ``orderflow.io.retry``). Client libraries are imported when a client is
built, so importing this module costs nothing.
"""
from __future__ import annotations

from typing import NamedTuple

from orderflow.config import Settings
from orderflow.model.avro import (
    TOPIC_SCHEMAS,
    AvroCodec,
    IncompatibleSchema,
    SchemaNotFound,
    SchemaRegistryUnavailable,
    subject_for,
)

__all__ = ["AwsEndpoint", "SchemaRegistry", "avro_codec", "aws_client", "aws_endpoint", "aws_resource", "kafka_admin", "kafka_producer", "memcached", "postgres",
           "redis_client", "schema_registry"]


class AwsEndpoint(NamedTuple):
    """Where one AWS service is (``endpoint_url`` None: real AWS), as plain values a pipeline's sink carries to
    its workers; ``client()`` builds the boto3 client there."""

    service: str
    endpoint_url: str | None
    region: str

    def _arguments(self) -> dict:
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            # The local stand-ins (dynalite, moto) accept any credentials; real AWS (no endpoint set) uses the
            # standard credential chain.
            **({"aws_access_key_id": "orderflow", "aws_secret_access_key": "orderflow"} if self.endpoint_url else {}),
        }

    def client(self, **options):
        """A boto3 client of the service; ``options`` (e.g. ``config=botocore.config.Config(...)``) go to
        ``boto3.client``."""
        import boto3

        return boto3.client(self.service, **self._arguments(), **options)

    def resource(self, **options):
        """The boto3 resource API of the service (for ``Table.batch_writer``)."""
        import boto3

        return boto3.resource(self.service, **self._arguments(), **options)


def aws_endpoint(settings: Settings, service: str) -> AwsEndpoint:
    """Where ``settings`` put ``service`` ("dynamodb" or "sns")."""
    return AwsEndpoint(service, settings.endpoint_url(service), settings.aws_region)


def aws_client(settings: Settings, service: str, **options):
    """A boto3 client of ``service`` ("dynamodb" or "sns") at its configured endpoint; ``options`` (e.g.
    ``config=botocore.config.Config(...)``) go to ``boto3.client``."""
    return aws_endpoint(settings, service).client(**options)


def aws_resource(settings: Settings, service: str, **options):
    """The boto3 resource API of ``service`` at its configured endpoint (for ``Table.batch_writer``)."""
    return aws_endpoint(settings, service).resource(**options)


def memcached(settings: Settings, *, connect_timeout: float = 5, timeout: float = 10):
    """A pymemcache client of ``Settings.memcached_address`` (the pricing codes)."""
    from pymemcache.client.base import Client

    return Client(settings.memcached_host_port, connect_timeout=connect_timeout, timeout=timeout)


def redis_client(settings: Settings, **options):
    """A Redis client of ``Settings.redis_url`` (the restaurants' hot state); ``options`` go to
    ``redis.Redis.from_url`` (e.g. ``socket_timeout``)."""
    import redis

    return redis.Redis.from_url(settings.redis_url, **options)


def postgres(settings: Settings, **options):
    """A psycopg connection to ``Settings.postgres_dsn``; ``options`` go to ``psycopg.connect``."""
    import psycopg

    return psycopg.connect(settings.postgres_dsn, **options)


def kafka_producer(settings: Settings, **config):
    """A confluent-kafka producer of ``Settings.kafka_bootstrap``; ``config`` adds librdkafka properties."""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": settings.kafka_bootstrap, **config})


def kafka_admin(settings: Settings, **config):
    """A confluent-kafka admin client of ``Settings.kafka_bootstrap``; ``config`` adds librdkafka properties."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **config})


# Confluent's Schema Registry error codes (Apicurio's ccompat API answers the same): subject, version and schema
# not found; a schema the subject's compatibility rule refuses; a schema that does not parse.
_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND, _SCHEMA_NOT_FOUND = 40401, 40402, 40403
_INCOMPATIBLE_SCHEMA, _INVALID_SCHEMA = 409, 42201


class SchemaRegistry:
    """The schema registry (Confluent-compatible API) as ``orderflow.model.avro.SchemaSource``: confluent-kafka's
    ``SchemaRegistryClient`` with its errors translated to the codec's.

    ``register(subject, schema)`` -> id and ``schema(id)`` -> JSON text are cached by the client (an id never
    changes its schema), so only the first call per schema reaches the registry. A registry that cannot answer
    (connection refused or lost, a timeout, a 5xx) is ``SchemaRegistryUnavailable``, transient under the outage
    rule; the client itself does not retry (``max.retries`` 0): ``orderflow.io.retry`` does, with its budget.
    Pickled as its URL, so DoFns can hold one.
    """

    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url
        self.timeout = timeout
        self._client = None

    def __getstate__(self):
        return {"url": self.url, "timeout": self.timeout, "_client": None}

    def __eq__(self, other):
        return isinstance(other, SchemaRegistry) and (self.url, self.timeout) == (other.url, other.timeout)

    def __hash__(self):
        return hash((self.url, self.timeout))

    @property
    def client(self):
        """confluent-kafka's ``SchemaRegistryClient`` of this URL (built on first use)."""
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._client = SchemaRegistryClient({"url": self.url, "timeout": self.timeout, "max.retries": 0})
        return self._client

    def _call(self, what: str, call):
        # The HTTP client confluent-kafka's registry client uses on Python 3.10+ (its schemaregistry extra), by
        # its own public name: a connection refused or timed out is one of its TransportErrors.
        import httpx2
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return call()
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code in (408, 429):
                raise SchemaRegistryUnavailable(f"schema registry {self.url}: {what}: {exc}") from exc
            if exc.error_code in (_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND, _SCHEMA_NOT_FOUND) \
                    or exc.http_status_code == 404:
                raise SchemaNotFound(f"{what}: {exc.error_message}") from exc
            if exc.error_code in (_INCOMPATIBLE_SCHEMA, _INVALID_SCHEMA) or exc.http_status_code in (409, 422):
                raise IncompatibleSchema(f"{what}: {exc.error_message}") from exc
            raise
        except (httpx2.TransportError, OSError) as exc:
            raise SchemaRegistryUnavailable(f"schema registry {self.url}: {what}: {type(exc).__name__}: {exc}") from exc

    def register(self, subject: str, schema: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return self._call(f"registering a schema under {subject}",
                          lambda: self.client.register_schema(subject, Schema(schema, "AVRO")))

    def schema(self, schema_id: int) -> str:
        return self._call(f"schema id {schema_id}", lambda: self.client.get_schema(schema_id).schema_str)

    def set_compatibility(self, subject: str, level: str) -> str:
        """Sets ``subject``'s compatibility rule (``BACKWARD``...); returns the level the registry answers."""
        def set_it():
            return self.client.set_compatibility(subject, level)

        try:
            return self._call(f"compatibility of {subject}", set_it)
        except IncompatibleSchema:
            # 409: another writer created the subject's rule at the same moment (two bootstraps at once);
            # setting it again updates the rule that now exists.
            return self._call(f"compatibility of {subject}", set_it)

    def subjects(self) -> list[str]:
        return self._call("subjects", self.client.get_subjects)


def schema_registry(settings: Settings, **options) -> SchemaRegistry:
    """The schema registry of ``Settings.schema_registry_url``; ``options`` (``timeout``) go to SchemaRegistry."""
    return SchemaRegistry(settings.schema_registry_url, **options)


def avro_codec(settings: Settings, topic: str, registry: SchemaRegistry | None = None) -> AvroCodec:
    """The codec of the records of ``topic`` (a field of ``Settings.topics``: "orders", "priced_orders",
    "keepalive", "availability"): its schema, the configured registry and the topic's subject."""
    return AvroCodec(TOPIC_SCHEMAS[topic], registry=registry or schema_registry(settings),
                     subject=subject_for(getattr(settings.topics, topic)))
