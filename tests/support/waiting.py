"""Waiting on a running system: ``wait_for`` polls a check, naming what it waited for and failing at once,
with the end of its log, when the pipeline it waits on has died."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from orderflow_dev.local.processes import RUNNING, DetachedProcess

# How long a streaming pipeline may take to start, on a loaded 2-core CI machine (tests print what they
# measured: pytest -s).
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
