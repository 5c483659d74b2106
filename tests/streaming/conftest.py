"""Streaming tests: the pipelines run unbounded on Prism, as detached processes over the module's isolated stack.

Each module gets its own database, topics, tables and SNS topic (``module_settings``), today's reference data,
and starts the pipelines it needs with ``run_pipeline(name, *args)``: ``python -m orderflow.pipelines.<name>``
with the module's settings in its environment (``config.settings_environment``), its log and pid file under a
temporary directory; it is stopped (its process group: Prism goes with it) at the end of the module.
"""
from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import pytest

from orderflow import refdata
from orderflow.config import settings_environment
from orderflow.local.processes import RUNNING, DetachedProcess
from orderflow.pipelines.runner import PRISM_BINARY

# Every bound below is for a loaded 2-core CI machine; the measured values are printed (pytest -s).
START_TIMEOUT = 120.0


def wait_for(check: Callable[[], object], timeout: float, what: str, pipeline: DetachedProcess | None = None,
             interval: float = 0.1):
    """Polls ``check`` until it returns a truthy value (returned with the seconds it took); fails after
    ``timeout`` s naming ``what``, with the end of the pipeline's log, or at once when the pipeline died."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - started
        if pipeline is not None and pipeline.status() != RUNNING:
            pytest.fail(f"pipeline {pipeline.name} is {pipeline.status()} while waiting for {what}; log "
                        f"{pipeline.log_path}:\n{pipeline.log_tail(40)}")
        if time.monotonic() - started > timeout:
            tail = f"; log {pipeline.log_path}:\n{pipeline.log_tail(40)}" if pipeline else ""
            pytest.fail(f"{what}: not within {timeout} s{tail}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def live_settings(module_settings):
    """The module's settings, with the sample reference data of today and yesterday (exchange time zone)."""
    assert PRISM_BINARY.is_file(), f"{PRISM_BINARY} is missing: `make prism` builds it"
    day = refdata.today(module_settings)
    for d in (day - datetime.timedelta(days=1), day):
        refdata.load_reference_data(module_settings, d, refdata.sample_prices(d))
    return module_settings


@pytest.fixture(scope="module")
def run_pipeline(live_settings, tmp_path_factory):
    """``run_pipeline(name, *args, settings=None)`` starts a streaming pipeline process; all are stopped at the
    end of the module."""
    root = tmp_path_factory.mktemp("pipelines")
    started: list[DetachedProcess] = []

    def start(name: str, *args: str, settings=None) -> DetachedProcess:
        pipeline = DetachedProcess(name, root)
        pipeline.start(args, env=settings_environment(settings or live_settings))
        started.append(pipeline)
        return pipeline

    yield start
    for pipeline in started:
        pipeline.stop()
