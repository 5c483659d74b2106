"""Streaming tests: the pipelines run unbounded on Prism, as detached processes over the module's isolated stack.

Each module gets its own database, topics, tables and SNS topic (``module_settings``), today's reference data,
and starts the pipelines it needs with ``run_pipeline(name, *args)``: ``python -m orderflow.pipelines.<name>``
with the module's settings in its environment (``config.settings_environment``), its log and pid file under a
temporary directory; it is stopped (its process group: Prism goes with it) at the end of the module.
"""
from __future__ import annotations

import datetime

import pytest

from orderflow import refdata
from orderflow.config import settings_environment
from orderflow.model import pricing, sample_assets
from orderflow_dev import PRISM_BINARY
from orderflow_dev.local.processes import DetachedProcess


@pytest.fixture(scope="module")
def live_settings(module_settings):
    """The module's settings, with the sample reference data of today and yesterday (exchange time zone)."""
    assert PRISM_BINARY.is_file(), f"{PRISM_BINARY} is missing: `make prism` builds it"
    day = pricing.today(module_settings)
    for d in (day - datetime.timedelta(days=1), day):
        refdata.load_reference_data(module_settings, d, sample_assets.sample_prices(d))
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
