"""Commands a test started in a session of their own (``subprocess.Popen(..., start_new_session=True)``), stopped as
a user stops them."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_as_kill(process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Stops ``process`` as ``kill <pid>`` (or ``make stack-down``) stops it: SIGTERM to the process alone, since a
    signal to its whole group would stop a pipeline's Prism too, before Prism finalizes the last bundle (whose commit
    the drain waits for); then SIGKILL to whatever of its group is left. Returns its ``(stdout, stderr)``."""
    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return out, err
