"""Clients of the services the API talks to, opened once per process and shared by all requests."""
from __future__ import annotations

import functools

from orderflow import clients
from orderflow.api.auth import KeyVerifier
from orderflow.api.kafka_sink import KafkaSink
from orderflow.config import ApiConfig, Settings

__all__ = ["Resources"]


class Resources:
    """PostgreSQL pool, Redis, DynamoDB, the Kafka sink and the presence state store (lazily opened)."""

    def __init__(self, settings: Settings, config: ApiConfig):
        from psycopg_pool import ConnectionPool

        self.settings = settings
        self.config = config
        self.pg = ConnectionPool(
            settings.postgres_dsn, min_size=1, max_size=config.pg_pool_size, open=True,
            kwargs={"autocommit": True}, timeout=5,
        )
        self.keys = KeyVerifier(self.pg, cache_seconds=config.key_cache_seconds,
                                unknown_cache_seconds=config.unknown_key_cache_seconds)

    @functools.cached_property
    def redis(self):
        return clients.redis_client(self.settings, socket_timeout=3, socket_connect_timeout=3)

    @functools.cached_property
    def dynamodb(self):
        from botocore.config import Config

        return clients.aws_client(
            self.settings, "dynamodb",
            # as many pooled connections as the server has worker threads, and quick failure when down
            config=Config(max_pool_connections=64, connect_timeout=3, read_timeout=5, retries={"max_attempts": 2}),
        )

    @functools.cached_property
    def kafka(self) -> KafkaSink:
        c = self.config
        return KafkaSink(self.settings.kafka_bootstrap, producers=c.kafka_producers,
                         max_waiting=c.kafka_max_waiting, timeout=c.produce_timeout_seconds,
                         max_transaction_records=c.kafka_transaction_max_records,
                         max_transaction_bytes=c.kafka_transaction_max_bytes)

    @functools.cached_property
    def kafka_admin(self):
        """Kafka's admin client: consumer lag (committed and end offsets) of the pipelines."""
        return clients.kafka_admin(self.settings, **{"socket.timeout.ms": 3000})

    @functools.cached_property
    def restaurant_state(self):
        from orderflow.io.restaurant_state import RestaurantStateStore

        return RestaurantStateStore.from_settings(self.settings)  # the presence pipeline's rules and prefix

    @functools.cached_property
    def schema_registry(self) -> clients.SchemaRegistry:
        """The schema registry: the ids the records are written with (and the REST Proxy's Avro schemas)."""
        return clients.schema_registry(self.settings, timeout=self.config.produce_timeout_seconds)

    @functools.cache  # noqa: B019 - one Resources per process, codecs live as long
    def codec(self, topic: str):
        """The codec of a topic of ``Settings.topics`` ("orders", "keepalive", "availability"): its schema's id is
        looked up once, then cached, so requests go on through a registry outage once it is known."""
        return clients.avro_codec(self.settings, topic, self.schema_registry)

    def close(self) -> None:
        if "kafka" in self.__dict__:
            self.kafka.close()
        if "redis" in self.__dict__:
            self.redis.close()
        self.pg.close()
