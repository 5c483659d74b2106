import dataclasses
import pathlib
import re

import pytest

from orderflow import config, logs
from orderflow.config import (
    ENVIRONMENT,
    ApiConfig,
    ConfigurationError,
    LocalStackConfig,
    Settings,
    load_api_config,
    load_local_config,
    load_settings,
    settings_environment,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


def _other_value(default: object) -> tuple[str, object]:
    """A value unlike ``default`` (of its type), as its variable spells it and as its field holds it."""
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return str(default + 0.25), default + 0.25
    return "other-value", "other-value"  # str, and str | None (default None or an endpoint)


def _fields(configured, prefix: str) -> dict[str, object]:
    """Every field of ``configured`` (nested ones as ``topics.orders``) by its ENVIRONMENT path."""
    values = {}
    for field in dataclasses.fields(configured):
        value = getattr(configured, field.name)
        if dataclasses.is_dataclass(value):
            values.update(_fields(value, f"{prefix}.{field.name}"))
        else:
            values[f"{prefix}.{field.name}"] = value
    return values


def test_every_variable_is_listed_once_and_names_its_field():
    names = [variable.name for variable in ENVIRONMENT]
    assert len(names) == len(set(names))
    loaders = {"Settings": load_settings, "ApiConfig": load_api_config, "LocalStackConfig": load_local_config}
    unset = {root: _fields(load(environ={}), root) for root, load in loaders.items()}
    for variable in ENVIRONMENT:
        if variable.field is None:  # read apart from the dataclasses, documented here all the same
            assert variable.name in (config.AWS_ENDPOINT_VARIABLE, config.LOG_FORMAT_VARIABLE,
                                     config.PRISM_LOCATION_VARIABLE)
            continue
        root = variable.field.split(".")[0]
        # The documented default is what a process gets with the variable unset...
        assert unset[root][variable.field] == variable.default, variable
        # ... and setting the variable changes its field, to its value, and no other field.
        raw, value = _other_value(variable.default)
        assert value != variable.default
        loaded = _fields(loaders[root](environ={variable.name: raw}), root)
        assert loaded == {**unset[root], variable.field: value}, variable
    # Every field of the four dataclasses but the nested topics has its variable, so none is left unread.
    assert {v.field for v in ENVIRONMENT if v.field} == (
        {f"Settings.{f.name}" for f in dataclasses.fields(Settings) if f.name != "topics"}
        | {f"Settings.topics.{f.name}" for f in dataclasses.fields(config.Topics)}
        | {f"ApiConfig.{f.name}" for f in dataclasses.fields(ApiConfig)}
        | {f"LocalStackConfig.{f.name}" for f in dataclasses.fields(LocalStackConfig)})


def test_memcached_host_port():
    assert load_settings({"ORDERFLOW_MEMCACHED": "10.0.0.1:11211"}).memcached_host_port == ("10.0.0.1", 11211)


def test_settings_environment_is_the_inverse_of_load_settings():
    from orderflow.config import Topics

    custom = dataclasses.replace(
        Settings(), kafka_bootstrap="k:1", dynamodb_endpoint_url=None, sns_endpoint_url="http://sns:2",
        topic_partitions=12, topics=dataclasses.replace(Topics(), orders="orders-x", availability="avail-y"))
    env = settings_environment(custom)
    assert load_settings(env) == custom
    assert env["ORDERFLOW_DYNAMODB_ENDPOINT_URL"] == ""  # None travels as empty: the real AWS endpoint
    # The child's settings win over a former single endpoint left in the parent's environment.
    assert load_settings({"ORDERFLOW_AWS_ENDPOINT_URL": "http://old:1", **env}) == custom


def test_the_api_knobs_come_from_the_environment_with_their_types():
    assert load_api_config({}) == ApiConfig()
    api = load_api_config({"ORDERFLOW_API_MAX_IDS": "3", "ORDERFLOW_API_PRODUCE_TIMEOUT": "2.5",
                           "ORDERFLOW_API_KEEP_ALIVE": "60", "ORDERFLOW_KAFKA_BOOTSTRAP": "not an API knob"})
    assert (api.max_ids, api.produce_timeout_seconds, api.keep_alive_seconds) == (3, 2.5, 60)
    assert isinstance(api.max_ids, int) and isinstance(api.produce_timeout_seconds, float)
    assert api.max_body_bytes == ApiConfig().max_body_bytes


def test_settings_environment_carries_the_api_knobs_too():
    settings = dataclasses.replace(Settings(), sns_endpoint_url=None, keepalive_timeout_seconds=0.1 + 0.2)
    api = dataclasses.replace(ApiConfig(), max_ids=7, chart_history_minutes=1 / 3, key_cache_seconds=0.0)
    env = settings_environment(settings, api)
    assert load_settings(env) == settings and load_api_config(env) == api  # floats travel exactly
    assert not any(name.startswith("ORDERFLOW_API_") for name in settings_environment(settings))
    assert {name for name in env if name.startswith("ORDERFLOW_API_")} == {v.name for v in ENVIRONMENT if v.api}


@pytest.mark.parametrize("variable, value, expected", [
    ("ORDERFLOW_API_MAX_IDS", "abc", "is not a whole number"),
    ("ORDERFLOW_API_MAX_IDS", "2.5", "is not a whole number"),
    ("ORDERFLOW_API_PRODUCE_TIMEOUT", "15s", "is not a number"),
])
def test_a_bad_api_value_is_an_error_naming_its_variable(variable, value, expected):
    with pytest.raises(ConfigurationError) as raised:
        load_api_config({variable: value})
    assert f"{variable}={value!r} {expected}" in str(raised.value)
    assert isinstance(raised.value, ValueError)  # callers that caught ValueError still do


def test_every_bad_setting_is_named_at_once():
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"ORDERFLOW_TOPIC_PARTITIONS": "four", "ORDERFLOW_SINK_RETRY_SECONDS": "",
                       "ORDERFLOW_KAFKA_BOOTSTRAP": "k:1"})
    message = str(raised.value)
    assert "ORDERFLOW_TOPIC_PARTITIONS='four' is not a whole number (default: 4)" in message
    assert "ORDERFLOW_SINK_RETRY_SECONDS='' is not a number (default: 300.0)" in message
    assert "KAFKA" not in message


def test_each_field_type_is_parsed_as_such():
    parse = config._parse
    assert parse("", str | None) is None and parse("http://x", str | None) == "http://x"
    assert parse("", str) == "" and parse(" 12 ", int) == 12 and parse("1e3", float) == 1000.0
    assert [parse(raw, bool) for raw in ("true", "Yes", "1", "off", "FALSE", "0")] == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="is not true or false"):
        parse("maybe", bool)


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_the_configuration_tables_are_generated_from_the_environment_list(document):
    """README's and docs/api.md's tables are ``python -m orderflow.config``'s output: rerun it and paste
    when a variable changes."""
    text = (ROOT / document).read_text()
    table = config.tables()[document]
    section = text[text.index("## Configuration"):]
    table_end = (section + "\n\n").index("\n\n", section.index("| variable |"))
    assert _table_rows(section[:table_end]) == _table_rows(table)


def test_every_documented_default_is_the_real_one():
    """Wherever docs/ or the README tabulate a variable, the row shows its default (e.g. docs/presence.md's
    table of presence settings and options, docs/observability.md's of the health and chart knobs)."""
    defaults = {v.name: config._default_cell(v.default) for v in ENVIRONMENT if v.default is not None}
    checked = set()
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for row in _table_rows(document.read_text()):
            named = re.match(r"\| `(ORDERFLOW_[A-Z_]+)` \|", row)
            if named and named.group(1) in defaults:
                assert f" {defaults[named.group(1)]} " in row, f"{document.name}: {row}"
                checked.add(named.group(1))
    assert checked == {v.name for v in ENVIRONMENT if v.default is not None and not v.group}  # the generated rows


def test_the_log_format_variable_is_the_documented_one():
    assert not logs.json_enabled({config.LOG_FORMAT_VARIABLE: "text"})
    assert logs.json_enabled({})


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
    from orderflow.model.presence import PresenceRules

    settings = load_settings({"ORDERFLOW_OPENING_HOURS": "18:00-02:00", "ORDERFLOW_PRESENCE_TIMEZONE": "Europe/Lisbon",
                              "ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS": "90.5", "ORDERFLOW_PRESENCE_REDIS_PREFIX": "p:",
                              "ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS": "30"})
    rules = PresenceRules.from_settings(settings)
    assert (rules.hours.opens.hour, rules.hours.closes.hour, rules.hours.timezone) == (18, 2, "Europe/Lisbon")
    assert rules.gap_ms == 90_500 and settings.keepalive_max_skew_seconds == 30.0
    store = RestaurantStateStore.from_settings(settings)  # what the API's status answers use
    assert (store.opening_hours, store.keepalive_timeout_ms, store.key("r-1")) == (rules.hours, 90_500, "p:r-1")
    assert load_settings(settings_environment(settings)) == settings


def test_the_prism_location_is_read_from_its_variable_with_no_default_of_the_runtime_package():
    assert config.prism_location({}) is None and config.prism_location({config.PRISM_LOCATION_VARIABLE: ""}) is None
    assert config.prism_location({config.PRISM_LOCATION_VARIABLE: "/opt/prism"}) == "/opt/prism"
