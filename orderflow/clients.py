"""The clients of orderflow's services, built from ``Settings`` in one place.

Every module that talks to AWS (DynamoDB, SNS), memcached, Redis, Postgres or Kafka with the configured
endpoints gets its client here. The pipelines' sinks add their own timeouts and retries on top
(``orderflow.io.postgres.connect``, ``orderflow.io.retry``). Client libraries are imported when a client is
built, so importing this module costs nothing.
"""
from __future__ import annotations

from orderflow.config import Settings

__all__ = ["aws_client", "aws_resource", "kafka_admin", "kafka_producer", "memcached", "postgres", "redis_client"]


def _aws_arguments(settings: Settings, service: str) -> dict:
    endpoint = settings.endpoint_url(service)
    return {
        "endpoint_url": endpoint,
        "region_name": settings.aws_region,
        # The local stand-ins (dynalite, moto) accept any credentials; real AWS (no endpoint set) uses the
        # standard credential chain.
        **({"aws_access_key_id": "orderflow", "aws_secret_access_key": "orderflow"} if endpoint else {}),
    }


def aws_client(settings: Settings, service: str, **options):
    """A boto3 client of ``service`` ("dynamodb" or "sns") at its configured endpoint; ``options`` (e.g.
    ``config=botocore.config.Config(...)``) go to ``boto3.client``."""
    import boto3

    return boto3.client(service, **_aws_arguments(settings, service), **options)


def aws_resource(settings: Settings, service: str, **options):
    """The boto3 resource API of ``service`` at its configured endpoint (for ``Table.batch_writer``)."""
    import boto3

    return boto3.resource(service, **_aws_arguments(settings, service), **options)


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
