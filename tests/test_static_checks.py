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
