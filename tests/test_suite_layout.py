"""The test suite's own layout (issue 16, docs/testing.md): test modules mirror the package, shared helpers live
in tests/support/, no test imports another test module or a conftest, and ``needs_stack`` marks every test that
uses the stack, however indirectly, so that ``make unit`` runs without it."""
from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
PACKAGE = REPO / "orderflow"
# The developer's tools (dev/orderflow_dev: local stack, generators, demo): their tests mirror them the same way
# (tests/local -> orderflow_dev/local).
DEV_PACKAGE = REPO / "dev" / "orderflow_dev"

# A module under tests/ that is neither a test, a conftest nor a helper: schemathesis loads it by name in its own
# process (SCHEMATHESIS_HOOKS); no test imports it.
PLUGINS = {"api/schemathesis_hooks.py"}

# End-to-end suites: the running system as a user meets it, not one module each.
END_TO_END = {"streaming", "faults", "demo"}

# Test modules outside the end-to-end suites that are not named after one module, and why.
NOT_ONE_MODULE = {
    "test_command_lines.py": "the commands users type (bootstrap, replay, generate, make setup), each through a subprocess",
    "test_suite_layout.py": "the test suite itself",
    "test_layering.py": "the package's layers: every module's imports point down",
    "test_static_checks.py": "the checks anyone can run: pip check, ruff, mypy (the packages setup.cfg lists)",
    "api/test_alert_rules.py": "deploy/prometheus/'s rules, against the metrics the served API exposes",
    "api/test_json_logs.py": "the served API's log lines (orderflow/logs.py as the API process configures it)",
    "api/test_kafka_recovery.py": "the served API while its broker is down or stalled",
    "api/test_orders_end_to_end.py": "orders in through the API, through the pipeline, out through the API",
    "api/test_presence_rules_config.py": "the presence rules one environment gives both the API and the pipeline",
    "api/test_schemathesis.py": "the OpenAPI contract against every endpoint",
    "api/test_security.py": "the served API's defences (auth, middleware, server limits) from the outside",
    "pipelines/test_pipeline_options.py": "both pipelines' command lines: settings from the environment, options",
    "pipelines/test_registry.py": "the registry orderflow/pipelines/__init__.py holds",
    "transforms/test_presence_sessions.py": "the presence transforms together (sessions, then status intervals)",
}

DOTTED = re.compile(r"^tests(\.[A-Za-z_]\w*)+$")


def _relative(path: pathlib.Path) -> str:
    return path.relative_to(TESTS).as_posix()


def _python_files() -> list[pathlib.Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _is_test(path: pathlib.Path) -> bool:
    return path.name.startswith("test_") or path.name == "conftest.py"


def _references(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every module of the ``tests`` package that ``path`` imports or names in a string (a
    module imported by name: a pipeline registry entry, a plugin), and of every relative import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, f"relative import {'.' * node.level}{node.module or ''}"))
            elif node.module == "tests" or (node.module or "").startswith("tests."):
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.startswith(("tests.", "relative"))]


def test_tests_and_helpers_import_only_support_modules():
    plugins = {"tests." + p.removesuffix(".py").replace("/", ".") for p in PLUGINS}
    wrong = [f"{_relative(path)}:{line}: {name}"
             for path in _python_files()
             for line, name in _references(path)
             if not name.startswith("tests.support.") and name not in plugins]
    assert not wrong, "import shared helpers from tests.support only, never a test module or a conftest:\n" + \
        "\n".join(wrong)


def test_every_module_under_tests_is_a_test_a_conftest_or_a_helper_in_support():
    support = TESTS / "support"
    helpers_outside = [_relative(p) for p in _python_files() if p.parent != support and not _is_test(p)
                       and p.name != "__init__.py" and _relative(p) not in PLUGINS]
    tests_inside = [_relative(p) for p in support.glob("*.py") if _is_test(p)]
    assert not helpers_outside, f"shared helpers belong in tests/support/: {helpers_outside}"
    assert not tests_inside, f"tests/support/ holds helpers only: {tests_inside}"


def _mirrors(test: pathlib.Path) -> bool:
    """Whether tests/<dir>/test_<name>.py names a module of orderflow/<dir>/ (or orderflow_dev/<dir>/): ``name`` is the module, or the
    module followed by an aspect (``test_kafka_read_sdf.py``), or ``<package>_command_line`` for its __main__."""
    folder = test.parent.relative_to(TESTS)
    package = next((root / folder for root in (PACKAGE, DEV_PACKAGE) if (root / folder).is_dir()), None)
    name = test.stem.removeprefix("test_")
    if package is None:
        return False
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}  # subpackages
    if (package / "__main__.py").is_file():
        modules.add(f"{package.name}_command_line")
    return any(name == module or name.startswith(module + "_") for module in modules)


def test_test_modules_mirror_the_package():
    tests = [p for p in _python_files() if p.name.startswith("test_")]
    unmatched = [_relative(p) for p in tests
                 if p.relative_to(TESTS).parts[0] not in END_TO_END and _relative(p) not in NOT_ONE_MODULE
                 and not _mirrors(p)]
    assert not unmatched, ("name a test module after the module it tests, in the folder mirroring the package "
                           f"(or list it in NOT_ONE_MODULE and docs/testing.md): {unmatched}")
    stale = sorted(set(NOT_ONE_MODULE) - {_relative(p) for p in tests})
    assert not stale, f"NOT_ONE_MODULE lists modules that are gone: {stale}"


def test_needs_stack_marks_the_tests_that_reach_the_stack_through_other_fixtures():
    # test_queries uses the stack only through reader -> api -> api_settings -> module_settings -> stack; the
    # presence rules are pure. Collected in a child pytest (nothing runs there), selected as `make unit` selects.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "needs_stack",
         "tests/api/test_queries.py", "tests/model/test_presence.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected, asserted below
    selected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert selected == {"tests/api/test_queries.py"}, done.stdout


def test_a_missing_requirement_fails_in_strict_mode_and_is_skipped_otherwise(monkeypatch):
    from tests.support import environment

    cases = {(): pytest.skip.Exception, (("CI", "false"),): pytest.skip.Exception,
             ((environment.STRICT_VARIABLE, "1"),): pytest.fail.Exception, (("CI", "true"),): pytest.fail.Exception,
             (("CI", "1"),): pytest.fail.Exception, (("CI", "yes"),): pytest.fail.Exception}
    for variables, outcome in cases.items():
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.delenv(environment.STRICT_VARIABLE, raising=False)
        for name, value in variables:
            monkeypatch.setenv(name, value)
        # Both outcomes caught, so that a skip where a failure is due fails this test rather than skips it.
        with pytest.raises((pytest.skip.Exception, pytest.fail.Exception), match="a tool") as raised:
            environment.require(False, "a tool not installed")
        assert raised.type is outcome, variables
        environment.require(True, "never raised")


def test_the_ci_entry_point_runs_make_test_in_strict_mode(tmp_path):
    """``.ci/run`` as CI runs it, with nothing of strict mode in its environment, and a ``make`` that only
    records its arguments and environment."""
    (tmp_path / "make").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"; env > "$(dirname "$0")/env"\n')
    (tmp_path / "make").chmod(0o755)
    environ = {name: value for name, value in os.environ.items() if name not in ("CI", "ORDERFLOW_TEST_STRICT")}
    done = subprocess.run([str(REPO / ".ci" / "run")], env={**environ, "PATH": f"{tmp_path}{os.pathsep}{environ['PATH']}"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "args").read_text().split() == ["test"]
    from tests.support import environment

    assert environment.strict(dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines()
                                   if "=" in line))


def test_make_setup_installs_every_program_the_tests_call():
    """The programs tests run by name (``curl``) are among the Makefile's system packages."""
    makefile = (REPO / "Makefile").read_text()
    packages = re.search(r"^SYSTEM_PACKAGES := (.+)$", makefile, re.M).group(1).split()
    assert "curl" in packages
    assert "command -v curl >/dev/null || missing=\"$$missing curl\"" in makefile
