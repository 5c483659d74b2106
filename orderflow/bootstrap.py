"""Idempotent creation of everything orderflow needs in its services.

- PostgreSQL: ordered SQL migrations from ``orderflow/migrations/NNN_name.sql``, each applied once and
  recorded in ``schema_migrations`` (a transaction per file, under an advisory lock so that two
  bootstraps at once do not race).
- Kafka: the topics of ``Settings.topics`` with ``Settings.topic_partitions`` partitions.
- DynamoDB: the tables of ``dynamodb_tables``; SNS: the alarm topic.
- The schema registry: each Avro topic's subject (``<topic>-value``) set to BACKWARD compatibility and the
  repository's schema (``orderflow/schemas``) registered under it. A schema the registry refuses stops
  bootstrap with ``SchemaRefused``, which names the file, the subject and the registry's reason.

``python -m orderflow.bootstrap`` runs all of it against the configured endpoints.
"""
from __future__ import annotations

import pathlib
import time

from orderflow.clients import avro_codec, aws_client, schema_registry
from orderflow.config import Settings, load_settings

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 7_345_001  # arbitrary advisory-lock key owned by orderflow's migrator


def migration_files() -> list[pathlib.Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def migrate(dsn: str) -> list[str]:
    """Applies pending migrations in name order; returns the names applied by this call."""
    import psycopg

    applied_now = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for path in migration_files():
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def all_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.orders, t.priced_orders, t.orders_dead_letter, t.keepalive, t.availability]


def create_topics(bootstrap: str, topics: list[str], partitions: int, timeout: float = 15.0) -> list[str]:
    """Creates the topics that do not exist yet; returns the ones created by this call."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(topic)
        except Exception as exc:  # noqa: BLE001 - a concurrent creator is fine, anything else is not
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
                raise
    # Metadata propagates asynchronously; wait until every topic is visible with its partitions.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(t in md and len(md[t].partitions) == partitions for t in missing):
            break
        time.sleep(0.1)
    return created


def dynamodb_tables(settings: Settings) -> list[dict]:
    """Table definitions (CreateTable arguments). On-demand billing: no capacity planning per table."""
    return [
        {   # pricing code -> price; written by ``python -m orderflow.refdata load``.
            "TableName": settings.prices_table,
            "KeySchema": [{"AttributeName": "pricing_code", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pricing_code", "AttributeType": "S"}],
        },
        {   # financial volume per client per day, readable in near real time.
            "TableName": settings.client_volume_table,
            "KeySchema": [{"AttributeName": "client_token", "KeyType": "HASH"},
                          {"AttributeName": "day", "KeyType": "RANGE"}],
            "AttributeDefinitions": [{"AttributeName": "client_token", "AttributeType": "S"},
                                     {"AttributeName": "day", "AttributeType": "S"}],
        },
    ]


def dynamodb_table_names(client) -> list[str]:
    """Every table's name, from every page: one ListTables answer holds at most 100 (an AWS account, or a test
    session's endpoint, has more)."""
    return [name for page in client.get_paginator("list_tables").paginate() for name in page["TableNames"]]


def create_dynamodb_tables(settings: Settings) -> list[str]:
    client = aws_client(settings, "dynamodb")
    existing = set(dynamodb_table_names(client))
    created = []
    for definition in dynamodb_tables(settings):
        if definition["TableName"] in existing:
            continue
        try:
            client.create_table(BillingMode="PAY_PER_REQUEST", **definition)
        except client.exceptions.ResourceInUseException:
            continue  # another bootstrap created it meanwhile (two at once): it exists, as wanted
        # Polled every second, not the waiter's default 20 s: a new table is ACTIVE within a second
        # locally and within seconds on AWS.
        client.get_waiter("table_exists").wait(TableName=definition["TableName"],
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        created.append(definition["TableName"])
    return created


def create_sns_topic(settings: Settings) -> str:
    """CreateTopic is idempotent in SNS: it returns the existing topic's ARN."""
    return aws_client(settings, "sns").create_topic(Name=settings.alarm_sns_topic)["TopicArn"]


# Consumers upgrade first: a new schema may drop fields and add fields with defaults, and a reader of it still
# reads every record written before (Confluent's and Apicurio's BACKWARD rule).
COMPATIBILITY = "BACKWARD"


class SchemaRefused(RuntimeError):
    """The registry refused one of the repository's schemas under its subject (the message says why)."""


def _name_fields(reason: str, schema: dict) -> str:
    """The registry's reason with each ``/fields/<n>`` it points at followed by that field's name."""
    import re

    fields = schema.get("fields", [])

    def named(match: re.Match) -> str:
        index = int(match.group(1))
        return f"{match.group(0)} (field {fields[index]['name']!r})" if index < len(fields) else match.group(0)

    return re.sub(r"/fields/(\d+)(?!\d)", named, reason)


def register_schemas(settings: Settings) -> dict[str, int]:
    """Sets each Avro topic's subject to ``COMPATIBILITY`` and registers the current schema under it (a schema
    registered before keeps its id); returns ``{subject: id}``.

    Raises:
        SchemaRefused: a schema breaks the subject's compatibility rule with the versions registered before.
    """
    from orderflow.model.avro import SCHEMAS_DIR, TOPIC_SCHEMAS, IncompatibleSchema, load_schema

    registry = schema_registry(settings)
    ids = {}
    for topic, name in TOPIC_SCHEMAS.items():
        codec = avro_codec(settings, topic, registry)
        registry.set_compatibility(codec.subject, COMPATIBILITY)
        try:
            ids[codec.subject] = codec.schema_id
        except IncompatibleSchema as exc:
            raise SchemaRefused(
                f"the schema registry refused {SCHEMAS_DIR.name}/{name}.avsc under subject {codec.subject} "
                f"({COMPATIBILITY} compatibility): {_name_fields(str(exc), load_schema(name))}. A compatible "
                f"change adds a field with a default or removes one; a breaking change needs a new topic (and "
                f"subject)") from exc
    return ids


def bootstrap_all(settings: Settings | None = None) -> dict[str, object]:
    settings = settings or load_settings()
    return {
        "migrations": migrate(settings.postgres_dsn),
        "topics": create_topics(settings.kafka_bootstrap, all_topics(settings), settings.topic_partitions),
        "dynamodb_tables": create_dynamodb_tables(settings),
        "sns_topic": create_sns_topic(settings),
        "schemas": register_schemas(settings),
    }


if __name__ == "__main__":
    import sys

    try:
        results = bootstrap_all()
    except SchemaRefused as refused:
        sys.exit(f"bootstrap: {refused}")
    for key, value in results.items():
        print(f"{key:<16} {value}")
