"""What the side-by-side benchmarks share: each side runs in its own child process (fresh interpreter,
its own peak memory), gets its settings through the environment and prints one JSON line last."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from orderflow.config import Settings, settings_environment


def run_side(script: str, role: str, settings: Settings, args: list[str], python: str | None = None) -> dict | None:
    """Runs ``script --role ROLE ARGS`` with ``settings`` (under ``python``, default this interpreter);
    returns its last stdout line as JSON, or None after printing the child's output when it failed."""
    proc = subprocess.run([python or sys.executable, script, "--role", role, *args],
                          env={**os.environ, **settings_environment(settings)}, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
