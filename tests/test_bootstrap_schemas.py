"""Bootstrap and the schema registry: each Avro topic's subject is BACKWARD and holds the repository's schema; a
breaking change is refused by the registry and ``python -m orderflow.bootstrap`` says which schema, which
subject and why."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from orderflow import bootstrap
from orderflow.clients import avro_codec, schema_registry
from orderflow.config import Topics, settings_environment
from orderflow.model.avro import IncompatibleSchema, load_schema
from tests.support.avro_history import order_with_quantity_as_text
from tests.support.naming import unique_name


@pytest.fixture
def fresh_settings(module_settings):
    """The module's settings with topics of their own (subjects nobody registered yet)."""
    topics = Topics(**{f.name: unique_name(f.name.replace("_", "-")) for f in dataclasses.fields(Topics)})
    return dataclasses.replace(module_settings, topics=topics)


def test_bootstrap_sets_backward_and_registers_every_topic_s_schema_once(fresh_settings):
    first = bootstrap.register_schemas(fresh_settings)
    assert bootstrap.register_schemas(fresh_settings) == first  # a second run finds the same ids
    registry = schema_registry(fresh_settings).client
    for topic, name in {"orders": "order", "priced_orders": "priced_order", "keepalive": "restaurant_keepalive",
                        "availability": "restaurant_availability"}.items():
        subject = f"{getattr(fresh_settings.topics, topic)}-value"
        assert registry.get_compatibility(subject) == "BACKWARD"
        latest = registry.get_latest_version(subject)
        assert latest.schema_id == first[subject]
        assert json.loads(latest.schema.schema_str)["name"] == load_schema(name)["name"]


def test_a_breaking_change_is_refused_and_bootstrap_says_why(fresh_settings):
    # The subject already holds an Order whose quantity is text: today's (a long) cannot read those records.
    older = order_with_quantity_as_text()
    subject = f"{fresh_settings.topics.orders}-value"
    schema_registry(fresh_settings).register(subject, json.dumps(older))
    run = subprocess.run([sys.executable, "-m", "orderflow.bootstrap"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **settings_environment(fresh_settings)})
    assert run.returncode != 0
    assert f"refused schemas/order.avsc under subject {subject} (BACKWARD compatibility)" in run.stderr, run.stderr
    assert "quantity" in run.stderr, run.stderr  # the registry's reason names the field


def test_a_producer_s_breaking_schema_is_refused_at_registration(fresh_settings):
    bootstrap.register_schemas(fresh_settings)
    codec = avro_codec(fresh_settings, "keepalive")
    breaking = load_schema("restaurant_keepalive")
    breaking["fields"].append({"name": "firmware", "type": "string"})  # no default: old records lack it
    with pytest.raises(IncompatibleSchema):
        schema_registry(fresh_settings).register(codec.subject, json.dumps(breaking))
