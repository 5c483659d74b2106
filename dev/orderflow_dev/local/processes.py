"""The processes of the live system, run detached beside the local stack with the stack's conventions:
pid file ``<root>/run/<name>.pid``, log ``<root>/logs/<name>.log``, each process leading its own process
group (a pipeline's Prism, the runner's job server, is its child and goes with it).

    pipeline = DetachedProcess("orders", ".local")
    pipeline.start(["--orders_batch_size=500"], env=settings_environment(settings))
    pipeline.status()   # "running" | "dead" (its pid file remains, the process is gone) | "stopped"
    pipeline.stop()

The processes (``PROCESSES``): every pipeline of the registry ``orderflow.pipelines.PIPELINES`` (``python -m
orderflow.pipelines.<name>``), the live feed (``python -m orderflow_dev.generate feed``), the API (``python -m
orderflow.api serve``), the MQTT bridge (``python -m orderflow.bridge mqtt``) and restaurants over MQTT
(``python -m orderflow_dev.generate mqtt``).
``python -m orderflow_dev.local status`` reports every one that has a pid file (a dead one with the end of its
log) and ``down`` stops them before the services.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

from orderflow.pipelines import PIPELINES
from orderflow_dev import developer_environment
from orderflow_dev.local.stack import (
    group_alive,
    group_exists,
    log_tail,
    process_alive,
    read_pid,
    signal_group,
    terminate_group,
)

# name -> the ``python -m`` arguments that run it: every registered pipeline, the feed and the API
PROCESSES = {
    **{name: (entry.module,) for name, entry in PIPELINES.items()},
    "feed": ("orderflow_dev.generate", "feed"),
    "api": ("orderflow.api", "serve"),
    "bridge": ("orderflow.bridge", "mqtt"),
    "mqtt-feed": ("orderflow_dev.generate", "mqtt"),
}
RUNNING, DEAD, STOPPED = "running", "dead", "stopped"


class DetachedProcess:
    """One process of ``PROCESSES`` started detached under ``root``."""

    def __init__(self, name: str, root: str | os.PathLike = ".local"):
        if name not in PROCESSES:
            raise ValueError(f"unknown process {name!r}; one of {sorted(PROCESSES)}")
        self.name = name
        self.root = pathlib.Path(root).absolute()
        self._process: subprocess.Popen | None = None  # when started by this process: reaped on stop
        self.exit_status: int | None = None  # of the last run this process reaped (a signal: minus its number)

    @property
    def pid_path(self) -> pathlib.Path:
        return self.root / "run" / f"{self.name}.pid"

    @property
    def log_path(self) -> pathlib.Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def args_path(self) -> pathlib.Path:
        return self.root / "run" / f"{self.name}.args.json"

    def last_args(self) -> list[str]:
        """The arguments of its latest start (empty when it never started under this root)."""
        try:
            return json.loads(self.args_path.read_text())
        except FileNotFoundError:
            return []

    @property
    def pid(self) -> int | None:
        return read_pid(self.pid_path)

    def start(self, args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> int:
        """Starts the process (a pipeline streams unless ``--bounded`` is in ``args``) with ``env`` added to this
        process' environment (e.g. ``config.settings_environment(settings)``); returns its pid. The log is
        appended to, so a restart keeps the history of the previous run."""
        if self.status() == RUNNING:
            raise RuntimeError(f"{self.name} already runs (pid {self.pid}); log: {self.log_path}")
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {self.name} {' '.join(args)}\n"
                      .encode())
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-m", *PROCESSES[self.name], *args], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, env={**developer_environment(), **(env or {})})
        self.pid_path.write_text(str(self._process.pid))
        self.args_path.write_text(json.dumps(list(args)))
        return self._process.pid

    def redeploy(self, args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> tuple[str, int]:
        """Stops the process (a pipeline drains) and starts it again with the arguments it ran with followed by
        ``args`` (a later option wins); returns (how the stop went, the new pid). A pipeline goes on from its
        committed offsets and the stores (docs/reliability.md): nothing is lost, duplicated or missed."""
        previous = self.last_args()
        stopped = self.stop()
        return stopped, self.start([*previous, *args], env=env)

    def status(self) -> str:
        """``running``; ``dead`` when its pid file remains but the process is gone (it crashed or was killed);
        ``stopped`` when it was stopped or never started."""
        self._reap()  # a run of ours that ended, even if the pid file names a newer one (a redeploy)
        pid = self.pid
        if pid is None:
            return STOPPED
        if process_alive(pid):
            return RUNNING
        self._reap()  # our own child that just exited: reap it, so its process group is gone too
        return DEAD

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the process group and keeps the pid file (a crash, as tests make one)."""
        pid = self.pid
        if pid is not None:
            signal_group(pid, sig)
            deadline = time.monotonic() + 15.0
            while not self._gone(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop(self, timeout: float | None = None) -> str:
        """SIGTERM to the process (a pipeline drains: ``orderflow.pipelines.runner.wait_until_stopped``), then,
        once it exited or after ``timeout`` s (default: a pipeline's drain budget and then some, else 15 s),
        SIGTERM and SIGKILL to what is left of its group (a pipeline's Prism); removes the pid file. Returns
        ``stopped``, or ``not running`` when nothing of its process group was left."""
        pid = self.pid
        if pid is None or self._gone(pid):  # a dead pipeline's group may outlive it (its Prism): stop that
            self.pid_path.unlink(missing_ok=True)
            return "not running"
        if timeout is None:
            timeout = 60.0 if self.name in PIPELINES else 15.0
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._reap()
        # What is left of the group (a pipeline's Prism); a zombie leader only waits for its parent.
        terminate_group(pid, signal.SIGTERM, lambda: not group_alive(pid), 15.0)
        # Our child whose main thread has exited reads as a zombie while its other threads end, and can be reaped
        # (its exit_status known) only after them: wait for that, so a caller reads how it ended.
        reap_deadline = time.monotonic() + 15.0
        while self._process is not None and time.monotonic() < reap_deadline:
            self._reap()
            time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)
        return STOPPED

    def _gone(self, pid: int) -> bool:
        """No process of the group is left (Prism exits a moment after the pipeline); reaps ours first."""
        self._reap()
        return not group_exists(pid)

    def _reap(self) -> None:
        """Reaps the process if it exited and is a child of this one (started by this or another instance in
        this process): a zombie would keep its process group, and so ``stop``, waiting."""
        if self._process is not None:
            if self._process.poll() is not None:
                self.exit_status = self._process.returncode
                self._process = None
            return
        pid = self.pid
        if pid is not None:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return  # not our child: its own parent reaps it
            if reaped:
                self.exit_status = os.waitstatus_to_exitcode(status)


def detached_processes(root: str | os.PathLike = ".local") -> list[DetachedProcess]:
    """The processes that have a pid file under ``root`` (running or dead)."""
    return [p for p in (DetachedProcess(name, root) for name in PROCESSES) if p.pid_path.exists()]
