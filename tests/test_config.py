from orderflow.config import ENVIRONMENT, Settings, load_settings


def test_defaults_point_at_the_local_stack():
    settings = load_settings({})
    assert settings == Settings()
    assert settings.kafka_bootstrap.startswith("127.0.0.1:")
    assert settings.topics.orders == "ordem-ativo"
    assert settings.topics.priced_orders == "ordem-ativo-precificado"


def test_environment_overrides_each_setting_with_its_type():
    settings = load_settings({
        "ORDERFLOW_KAFKA_BOOTSTRAP": "kafka:9092",
        "ORDERFLOW_TOPIC_PARTITIONS": "32",
        "ORDERFLOW_AWS_ENDPOINT_URL": "",
        "ORDERFLOW_TOPIC_ORDERS": "orders-x",
    })
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.topic_partitions == 32
    assert settings.aws_endpoint_url is None  # empty means the real AWS endpoints
    assert settings.topics.orders == "orders-x"
    assert settings.topics.keepalive == "restaurant-keepalive"


def test_every_documented_variable_names_a_field():
    fields = set(Settings.__dataclass_fields__)
    assert all(field in fields for _, field, _ in ENVIRONMENT)


def test_memcached_host_port():
    assert load_settings({"ORDERFLOW_MEMCACHED": "10.0.0.1:11211"}).memcached_host_port == ("10.0.0.1", 11211)


def test_settings_environment_is_the_inverse_of_load_settings():
    import dataclasses

    from orderflow.config import Topics, settings_environment

    custom = dataclasses.replace(
        Settings(), kafka_bootstrap="k:1", aws_endpoint_url=None, topic_partitions=12,
        topics=dataclasses.replace(Topics(), orders="orders-x", availability="avail-y"))
    env = settings_environment(custom)
    assert load_settings(env) == custom
    assert env["ORDERFLOW_AWS_ENDPOINT_URL"] == ""  # None travels as empty: the real AWS endpoints


def test_with_overrides_replaces_only_what_is_given():
    from orderflow.config import with_overrides

    base = Settings()
    changed = with_overrides(base, topics={"orders": "orders-x", "keepalive": None},
                             postgres_dsn="postgresql://elsewhere/db", redis_url=None)
    assert changed.postgres_dsn == "postgresql://elsewhere/db"
    assert changed.redis_url == base.redis_url  # None means not given
    assert changed.topics.orders == "orders-x"
    assert changed.topics.keepalive == base.topics.keepalive
    assert with_overrides(base) == base
