"""The OpenAPI spec and the answers agree: ``st run --checks all`` (schemathesis' command line, every check:
no 5xx, documented statuses, content types and bodies, schema-valid requests accepted and invalid ones
refused, Allow on 405, authentication enforced, stateful links) finds nothing against the served API.

The run uses a key holding every scope, so requests reach the handlers rather than stopping at 401/403, and
is bounded by ``MAX_EXAMPLES`` per operation. Its configuration (``schemathesis.toml``) allows 422 for the
rules JSON Schema cannot state (see there); text/csv bodies are sent through ``schemathesis_hooks.py``. The event
stream never ends by itself: it is tested in test_operations.py and test_security.py.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

MAX_EXAMPLES = 40
HERE = pathlib.Path(__file__).parent
ROOT = HERE.parents[1]


def test_schemathesis_checks_all_find_nothing(api, tmp_path):
    key = api.key("read", "ingest", "admin")
    st = pathlib.Path(sys.executable).parent / "st"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [str(st), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run", f"{api.url}/openapi.json",
         "--checks", "all", "--header", f"X-API-Key: {key}", "--max-examples", str(MAX_EXAMPLES),
         "--exclude-path", "/dashboard/events", "--request-timeout", "30"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)  # its database stays out of the repo
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12_000:]
    assert " passed" in report and "failures" not in report.split("SUMMARY", 1)[-1].lower(), report[-4_000:]
