from orderflow.config import ENVIRONMENT, Settings, load_settings, settings_environment


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
        "ORDERFLOW_DYNAMODB_ENDPOINT_URL": "",
        "ORDERFLOW_SNS_ENDPOINT_URL": "http://sns.local:4575",
        "ORDERFLOW_TOPIC_ORDERS": "orders-x",
    })
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.topic_partitions == 32
    assert settings.dynamodb_endpoint_url is None  # empty means the real AWS endpoint
    assert settings.sns_endpoint_url == "http://sns.local:4575"
    assert settings.topics.orders == "orders-x"
    assert settings.topics.keepalive == "restaurant-keepalive"


def test_the_former_single_aws_endpoint_is_the_default_of_both():
    both = load_settings({"ORDERFLOW_AWS_ENDPOINT_URL": "http://aws.local:4566"})
    assert both.endpoint_url("dynamodb") == both.endpoint_url("sns") == "http://aws.local:4566"
    real = load_settings({"ORDERFLOW_AWS_ENDPOINT_URL": ""})
    assert real.dynamodb_endpoint_url is None and real.sns_endpoint_url is None  # the real AWS endpoints
    one_apart = load_settings({"ORDERFLOW_AWS_ENDPOINT_URL": "", "ORDERFLOW_DYNAMODB_ENDPOINT_URL": "http://ddb:1"})
    assert (one_apart.dynamodb_endpoint_url, one_apart.sns_endpoint_url) == ("http://ddb:1", None)
    defaults = load_settings({})
    assert defaults.dynamodb_endpoint_url != defaults.sns_endpoint_url  # dynalite and moto by default
    try:
        defaults.endpoint_url("s3")
    except ValueError as exc:
        assert "s3" in str(exc)
    else:
        raise AssertionError("an AWS service orderflow does not use has no endpoint")


def test_every_documented_variable_names_a_field():
    fields = set(Settings.__dataclass_fields__)
    assert all(field in fields for _, field, _ in ENVIRONMENT)


def test_memcached_host_port():
    assert load_settings({"ORDERFLOW_MEMCACHED": "10.0.0.1:11211"}).memcached_host_port == ("10.0.0.1", 11211)


def test_settings_environment_is_the_inverse_of_load_settings():
    import dataclasses

    from orderflow.config import Topics, settings_environment

    custom = dataclasses.replace(
        Settings(), kafka_bootstrap="k:1", dynamodb_endpoint_url=None, sns_endpoint_url="http://sns:2",
        topic_partitions=12, topics=dataclasses.replace(Topics(), orders="orders-x", availability="avail-y"))
    env = settings_environment(custom)
    assert load_settings(env) == custom
    assert env["ORDERFLOW_DYNAMODB_ENDPOINT_URL"] == ""  # None travels as empty: the real AWS endpoint
    # The child's settings win over a former single endpoint left in the parent's environment.
    assert load_settings({"ORDERFLOW_AWS_ENDPOINT_URL": "http://old:1", **env}) == custom


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


def test_the_presence_rules_come_from_the_environment():
    from orderflow.io.restaurant_state import RestaurantStateStore
    from orderflow.transforms.presence_rules import PresenceRules

    settings = load_settings({"ORDERFLOW_OPENING_HOURS": "18:00-02:00", "ORDERFLOW_PRESENCE_TIMEZONE": "Europe/Lisbon",
                              "ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS": "90.5", "ORDERFLOW_PRESENCE_REDIS_PREFIX": "p:",
                              "ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS": "30"})
    rules = PresenceRules.from_settings(settings)
    assert (rules.hours.opens.hour, rules.hours.closes.hour, rules.hours.timezone) == (18, 2, "Europe/Lisbon")
    assert rules.gap_ms == 90_500 and settings.keepalive_max_skew_seconds == 30.0
    store = RestaurantStateStore.from_settings(settings)  # what the API's status answers use
    assert (store.opening_hours, store.keepalive_timeout_ms, store.key("r-1")) == (rules.hours, 90_500, "p:r-1")
    assert load_settings(settings_environment(settings)) == settings
