"""What a test needs from the machine: skipped where it is missing on a developer's machine, a failure in strict
mode, where ``make setup`` must have installed it, so that nothing is silently skipped there.

Strict mode: ``ORDERFLOW_TEST_STRICT`` set to a true value, which ``.ci/run`` (our CI's entry point) exports
itself, so it does not depend on what a CI service calls its variable; or ``CI`` set to anything but a false
value (``true`` on GitHub and GitLab, ``1`` or ``yes`` elsewhere)."""
from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

STRICT_VARIABLE = "ORDERFLOW_TEST_STRICT"
_FALSE = ("", "0", "false", "no", "off")


def strict(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a missing requirement fails (rather than skips) the test."""
    environ = os.environ if environ is None else environ
    return (environ.get(STRICT_VARIABLE, "").strip().lower() not in _FALSE
            or environ.get("CI", "").strip().lower() not in _FALSE)


def require(available: bool, reason: str) -> None:
    if available:
        return
    if strict():
        pytest.fail(f"{reason}: CI must have it (make setup installs it)", pytrace=False)
    pytest.skip(reason)
