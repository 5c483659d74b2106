"""The checks anyone can run, run by the suite so that CI keeps them clean (issue 16): the installed
packages agree (``pip check``), the linter (``ruff``, configured in ``ruff.toml``/``pyproject``) and the type
checker (``mypy``, configured in ``setup.cfg``: the files it checks are listed there)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_installed_packages_have_compatible_requirements():
    result = _run(sys.executable, "-m", "pip", "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = _run(str(BIN / "ruff"), "check", "orderflow", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("package", ["orderflow/model", "orderflow/io", "orderflow/pipelines"])
def test_mypy_checks_the_configured_packages(package):
    # The configuration's file list is what `mypy` checks by default; this test fails if a package drops out.
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert package in [f.strip() for f in config["mypy"]["files"].split(",")]


def test_mypy_finds_nothing():
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def _orderflow_imports(path: pathlib.Path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "orderflow":
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "orderflow":
                    yield node.lineno, alias.name, None


def test_every_import_of_orderflow_resolves_even_inside_functions():
    # Lazy imports (inside functions: benchmarks, command lines) escape both the linter and an import of the
    # module; a moved module or name must not leave one behind.
    import importlib

    missing = []
    for folder in ("orderflow", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "static" in path.parts:
                continue
            for line, module, name in _orderflow_imports(path):
                try:
                    imported = importlib.import_module(module)
                except ImportError as exc:
                    missing.append(f"{path.relative_to(ROOT)}:{line}: {module} ({exc})")
                    continue
                if name is not None and name != "*" and not hasattr(imported, name):
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        missing.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not missing, missing
