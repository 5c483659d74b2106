import psycopg
from confluent_kafka.admin import AdminClient

from orderflow import bootstrap, clients


def test_migrations_apply_once_in_order(pg_dsn):
    # pg_dsn is already migrated: a second run applies nothing.
    assert bootstrap.migrate(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [p.name for p in bootstrap.migration_files()]
    assert names == sorted(names)


def test_topics_are_created_with_partitions_and_idempotently(module_settings):
    topics = bootstrap.all_topics(module_settings)
    assert bootstrap.create_topics(module_settings.kafka_bootstrap, topics, 4) == []
    metadata = AdminClient({"bootstrap.servers": module_settings.kafka_bootstrap}).list_topics(timeout=10)
    for topic in topics:
        assert len(metadata.topics[topic].partitions) == module_settings.topic_partitions


def test_dynamodb_tables_and_sns_topic_are_idempotent(module_settings):
    assert bootstrap.create_dynamodb_tables(module_settings) == []
    names = clients.aws_client(module_settings, "dynamodb").list_tables()["TableNames"]
    assert module_settings.prices_table in names and module_settings.client_volume_table in names
    assert bootstrap.create_sns_topic(module_settings) == bootstrap.create_sns_topic(module_settings)
