"""Detached pipeline processes: a pipeline that dies is reported by ``python -m orderflow_dev.local status`` with its
log; ``down`` stops (or forgets) them. (Running ones are exercised by tests/streaming.)"""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from orderflow_dev.local.processes import DEAD, DetachedProcess


def _local(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow_dev.local", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.needs_stack  # a detached pipeline process, python -m orderflow_dev.local
def test_a_pipeline_that_dies_is_reported_dead_with_the_end_of_its_log(tmp_path):
    pipeline = DetachedProcess("orders", tmp_path)
    pid = pipeline.start(["--prism_location=/nonexistent/prism"])  # fails when the runner starts
    deadline = time.monotonic() + 60
    while pipeline.status() != DEAD:
        assert time.monotonic() < deadline, pipeline.log_tail()
        time.sleep(0.2)

    status = _local("status", "--root", str(tmp_path))
    assert status.returncode == 3, status.stdout
    assert re.search(rf"^orders\s+dead\s+pid {pid}\s+log: {re.escape(str(pipeline.log_path))}$",
                     status.stdout, re.M), status.stdout
    assert 'Unable to parse binary URL "/nonexistent/prism"' in status.stdout  # the reason, from its log

    down = _local("down", "--root", str(tmp_path))  # "stopped" if anything of its process group was left
    assert down.returncode == 0 and re.search(r"^orders\s+(not running|stopped)\s", down.stdout, re.M), \
        down.stdout
    assert not pipeline.pid_path.exists()
    assert not re.search(r"^orders\s", _local("status", "--root", str(tmp_path)).stdout, re.M)
