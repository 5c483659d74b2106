"""What a test needs from the machine: skipped where it is missing on a developer's machine, a failure in CI
(``CI=true``), where ``make setup`` must have installed it, so that nothing is silently skipped there."""
from __future__ import annotations

import os

import pytest


def require(available: bool, reason: str) -> None:
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must have it (make setup installs it)", pytrace=False)
    pytest.skip(reason)
