"""Property-based tests over the OpenAPI spec (schemathesis): no input, valid or not, gets a 5xx.

Runs against the served API on the real stack with a key holding every scope (so requests reach the
handlers rather than stopping at 401), bounded per operation by ``MAX_EXAMPLES``.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from orderflow.api.app import create_app

MAX_EXAMPLES = 25


@schemathesis.serializer("text/csv")
def _csv(ctx, value):
    return str(value).encode()


@schemathesis.serializer("application/avro", "application/vnd.kafka.json.v2+json")
def _raw_or_json(ctx, value):
    import json

    return value if isinstance(value, bytes) else json.dumps(value).encode()


@pytest.fixture(scope="module")
def every_scope_key(api):
    return api.key("read", "ingest")


# The spec comes from the app itself (building it needs no service); requests go to the served API.
# The event stream never ends by itself: it is tested in test_operations.py.
schema = schemathesis.openapi.from_dict(create_app().openapi()).exclude(path="/dashboard/events")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_server_error(case, api, every_scope_key):
    case.call_and_validate(base_url=api.url, headers={"X-API-Key": every_scope_key}, checks=[not_a_server_error], timeout=30)
