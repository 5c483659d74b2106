"""Session fixtures: a real local stack on free loopback ports, and isolation per test module.

Each pytest session starts its own stack (its own ports and data directory), so several sessions, or a
developer's ``make stack-up`` stack, never share state; the session stops it at the end.

Every test that uses the stack, directly or through another fixture (``stack_settings``, ``pg_dsn``,
``module_settings``, the API's...), is marked ``needs_stack`` here at collection, so ``make unit``
(``pytest -m "not needs_stack"``) runs the rest with nothing but the venv.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import uuid
import warnings

import pytest

from orderflow import bootstrap
from orderflow.config import Settings, Topics, load_settings
from orderflow_dev import developer_environment
from orderflow_dev.local import temporary_stack
from tests.support.naming import unique_name

# Pipelines run in this process and in the ones it starts stream on the repository's Prism (`make prism`),
# as the developer's tools run them: the runtime package has no default binary of its own.
os.environ.update(developer_environment())

# The fixtures that start services: a test using either, however indirectly, needs the stack.
STACK_FIXTURES = frozenset({"stack", "own_stack"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        # fixturenames is the closure: the test's own fixtures, theirs, and so on (and autouse ones).
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_stack)


@pytest.fixture(scope="session")
def stack():
    """The running stack for this test session (started here, stopped at the end)."""
    with temporary_stack("test-stack-", os.environ.get("ORDERFLOW_TEST_STACK_DIR", ".local"), timeout=90) as local_stack:
        yield local_stack


@pytest.fixture(scope="module")
def own_stack():
    """``(stack, settings)``: a bootstrapped stack of the test module's own, for tests that stop or restart its
    services (the broker) and so must not disturb the session's stack."""
    with temporary_stack("test-own-", os.environ.get("ORDERFLOW_TEST_STACK_DIR", ".local"), timeout=120) as local_stack:
        settings = load_settings(local_stack.environment())
        bootstrap.bootstrap_all(settings)
        try:
            yield local_stack, settings
        finally:
            # The services' logs outlive the stack (its directory is removed): a failure can be read afterwards.
            kept = pathlib.Path(os.environ.get("ORDERFLOW_TEST_STACK_DIR", ".local")) / "test-logs" / local_stack.root.name
            shutil.copytree(local_stack.root / "logs", kept, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def stack_settings(stack) -> Settings:
    """Settings pointing at the session's stack, with the default names (nothing created)."""
    return load_settings(stack.environment())


@pytest.fixture(scope="module")
def pg_dsn(stack_settings) -> str:
    """A fresh, migrated PostgreSQL database for this test module."""
    from pytest_postgresql.janitor import DatabaseJanitor

    dbname = "t_" + uuid.uuid4().hex[:12]
    port = int(stack_settings.postgres_dsn.rsplit(":", 1)[1].split("/")[0])
    janitor = DatabaseJanitor(user="orderflow", host="127.0.0.1", port=port, dbname=dbname)
    janitor.init()
    dsn = f"postgresql://orderflow@127.0.0.1:{port}/{dbname}"
    bootstrap.migrate(dsn)
    yield dsn
    janitor.drop()


def _revive_dead_services(stack, module: str) -> None:
    """A service of the session's stack that died (DynamoDB did, until dynalite-server.js: a killed client) is
    started again before the next module, loudly: its log is kept under ``.local/test-logs/`` and a warning
    names it. Every service keeps its data on disk, so the restarted one serves the modules as before."""
    dead = [name for name, state in stack.status().items() if state != "ready"]
    if not dead:
        return
    kept = pathlib.Path(os.environ.get("ORDERFLOW_TEST_STACK_DIR", ".local")) / "test-logs"
    kept.mkdir(parents=True, exist_ok=True)
    for name in dead:
        copy = kept / f"{name}-{uuid.uuid4().hex[:6]}.log"
        if stack.log_path(name).exists():
            shutil.copy(stack.log_path(name), copy)
        warnings.warn(f"{name} of the test stack was down before {module}; restarted. Its log: {copy}",
                      stacklevel=2)
    stack.up()


@pytest.fixture(scope="module")
def module_settings(stack, stack_settings, pg_dsn, request) -> Settings:
    """Settings isolated for one test module, bootstrapped: its own database, topics, tables, SNS topic."""
    _revive_dead_services(stack, request.module.__name__)
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(**{f.name: f"{getattr(Topics(), f.name)}-{suffix}" for f in dataclasses.fields(Topics)})
    settings = dataclasses.replace(
        stack_settings,
        postgres_dsn=pg_dsn,
        topics=topics,
        prices_table=f"{stack_settings.prices_table}-{suffix}",
        client_volume_table=f"{stack_settings.client_volume_table}-{suffix}",
        alarm_sns_topic=f"{stack_settings.alarm_sns_topic}-{suffix}",
    )
    bootstrap.create_topics(settings.kafka_bootstrap, bootstrap.all_topics(settings), settings.topic_partitions)
    bootstrap.create_dynamodb_tables(settings)
    bootstrap.create_sns_topic(settings)
    bootstrap.register_schemas(settings)  # the module's subjects, BACKWARD, as bootstrap_all sets them
    return settings


@pytest.fixture
def make_topic(stack_settings):
    """Creates a topic with a unique name on the session's broker: ``make_topic("orders", partitions=4)``."""

    def _make(prefix: str = "t", partitions: int = 4) -> str:
        name = unique_name(prefix)
        bootstrap.create_topics(stack_settings.kafka_bootstrap, [name], partitions)
        return name

    return _make
