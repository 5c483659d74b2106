import itertools

import psycopg
from confluent_kafka.admin import AdminClient

from orderflow import bootstrap, clients


def test_migrations_apply_once_in_order(pg_dsn):
    # pg_dsn is already migrated: a second run applies nothing.
    assert bootstrap.migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT name, applied_at FROM schema_migrations ORDER BY applied_at, name").fetchall()
    # Applied in the order of their numbers: each file's transaction started after the one before it
    # committed, so the times are strictly increasing (a tie would hide the order, so none is allowed).
    assert [name for name, _ in rows] == sorted(path.name for path in bootstrap.migration_files())
    assert all(earlier < later for (_, earlier), (_, later) in itertools.pairwise(rows))


def test_topics_are_created_with_partitions_and_idempotently(module_settings):
    topics = bootstrap.all_topics(module_settings)
    assert bootstrap.create_topics(module_settings.kafka_bootstrap, topics, 4) == []
    metadata = AdminClient({"bootstrap.servers": module_settings.kafka_bootstrap}).list_topics(timeout=10)
    for topic in topics:
        assert len(metadata.topics[topic].partitions) == module_settings.topic_partitions


def test_dynamodb_tables_and_sns_topic_are_idempotent(module_settings):
    assert bootstrap.create_dynamodb_tables(module_settings) == []
    dynamodb = clients.aws_client(module_settings, "dynamodb")
    names = bootstrap.dynamodb_table_names(dynamodb)
    assert module_settings.prices_table in names and module_settings.client_volume_table in names
    # The keys the sinks write by: the volume of one client on one day.
    keys = dynamodb.describe_table(TableName=module_settings.client_volume_table)["Table"]["KeySchema"]
    assert {k["AttributeName"]: k["KeyType"] for k in keys} == {"client_token": "HASH", "day": "RANGE"}
    arn = bootstrap.create_sns_topic(module_settings)
    bootstrap.create_sns_topic(module_settings)
    # One topic of the configured name in the configured endpoint, the one whose ARN bootstrap returned.
    pages = clients.aws_client(module_settings, "sns").get_paginator("list_topics").paginate()
    arns = [topic["TopicArn"] for page in pages for topic in page["Topics"]]
    assert [a for a in arns if a.rsplit(":", 1)[1] == module_settings.alarm_sns_topic] == [arn]
