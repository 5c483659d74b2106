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
# The runtime package and the developer's tools (dev/orderflow_dev).
PACKAGES = ("orderflow", "orderflow_dev")
SOURCES = (ROOT / "orderflow", ROOT / "dev" / "orderflow_dev")
# The longest a function of either may be: past it, split by responsibility.
MAX_FUNCTION_LINES = 80


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_installed_packages_have_compatible_requirements():
    result = _run(sys.executable, "-m", "pip", "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = _run(str(BIN / "ruff"), "check", "orderflow", "dev", "tests", "benchmarks")
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
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield node.lineno, alias.name, None


def test_every_import_of_orderflow_resolves_even_inside_functions():
    # Lazy imports (inside functions: benchmarks, command lines) escape both the linter and an import of the
    # module; a moved module or name must not leave one behind.
    import importlib

    missing = []
    for folder in ("orderflow", "dev", "tests", "benchmarks"):
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


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """``(name, first line, lines)`` of every function or method in ``source`` longer than ``limit`` lines
    (decorators excluded, nested functions counted in their parent as well)."""
    import ast

    return [(node.name, node.lineno, node.end_lineno - node.lineno + 1)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_is_longer_than_the_limit():
    found = [f"{path.relative_to(ROOT)}:{line}: {name} ({lines} lines)"
             for root in SOURCES for path in sorted(root.rglob("*.py"))
             for name, line, lines in long_functions(path.read_text())]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split by responsibility): {found}"


def test_the_length_check_sees_a_long_method():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"class C:\n    def short(self):\n        pass\n\n    def long(self):\n{body}") == [
        ("long", 5, MAX_FUNCTION_LINES + 1)]
