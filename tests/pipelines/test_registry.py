"""The one pipeline registry (orderflow.pipelines.PIPELINES): complete, and the only one the tools read."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from orderflow.pipelines import PIPELINES
from orderflow_dev.local.processes import PROCESSES

ORDERFLOW = pathlib.Path(__file__).resolve().parents[2] / "orderflow"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every ``orderflow`` module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("orderflow")}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_each_entry_names_what_its_module_defines(name):
    entry = PIPELINES[name]
    module = entry.load()
    assert module.__name__ == f"orderflow.pipelines.{name}"
    assert callable(entry.build) and callable(entry.run)
    options_class = entry.options()
    assert issubclass(options_class, PipelineOptions) and options_class.__module__ == entry.module
    # The options orderflow.replay sets are the pipeline's own, and parse to what was given.
    parsed = PipelineOptions([f"{entry.start_option}=earliest", f"{entry.group_option}=replay-group"]
                             ).view_as(options_class).get_all_options(drop_default=True)
    assert parsed == {entry.start_option[2:]: "earliest", entry.group_option[2:]: "replay-group"}


def test_the_local_stack_runs_every_registered_pipeline():
    assert {name: PROCESSES[name] for name in PIPELINES} == {name: (e.module,) for name, e in PIPELINES.items()}
    assert set(PROCESSES) - set(PIPELINES) == {"feed", "api", "bridge", "mqtt-feed"}


def test_command_lines_offer_exactly_the_registered_pipelines():
    portability = subprocess.run([sys.executable, "-m", "orderflow.portability"], capture_output=True, text=True,
                                 timeout=120)
    assert portability.returncode == 2
    assert "usage: python -m orderflow.portability {orders|presence} --bounded" in portability.stderr
    replay = subprocess.run([sys.executable, "-m", "orderflow.replay", "run", "billing", "--from", "earliest"],
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 2
    assert "invalid choice: 'billing' (choose from 'orders', 'presence')" in replay.stderr


def test_the_tools_share_the_registry_without_an_import_cycle():
    """flink_submit uses portability (the proto check), never the reverse; no tool keeps its own registry."""
    assert "orderflow.flink_submit" not in _imported_modules(ORDERFLOW / "portability.py")
    for tool in (ORDERFLOW / "flink_submit.py", ORDERFLOW / "portability.py", ORDERFLOW / "replay.py",
                 ORDERFLOW.parent / "dev" / "orderflow_dev" / "local" / "processes.py"):
        assert "orderflow.pipelines" in _imported_modules(tool), tool
    # The registry itself imports nothing of orderflow (or Beam): reading it is cheap and cycle-free.
    assert _imported_modules(ORDERFLOW / "pipelines" / "__init__.py") == set()
