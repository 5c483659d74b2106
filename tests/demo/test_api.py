"""``make demo``'s API step: started detached with a pid file and a log, reused, stopped by pid file; it prints
no URL carrying an API key, and its dashboard link signs in read-only. ``python -m orderflow_dev.demo stop-api``
stops it as a developer types it."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import httpx
import port_for

from orderflow.config import settings_environment
from orderflow_dev.demo.api import demo, start_detached, stop_detached
from orderflow_dev.local.processes import DetachedProcess
from orderflow_dev.local.stack import process_alive


def test_demo_step_serves_until_stopped(module_settings, tmp_path, capsys):
    port = port_for.select_random()
    root = str(tmp_path)
    try:
        demo(module_settings, root=root, port=port)
        printed = capsys.readouterr().out
        key = next(line.split()[-1] for line in printed.splitlines() if line.startswith("demo key"))
        urls = [word.strip('"') for word in printed.split() if "://" in word]
        assert urls and not any(key in url for url in urls), printed  # no API key in any printed URL
        link = next(url for url in urls if "/dashboard#token=" in url)
        token = link.split("#token=", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as page:
            assert page.get("/alarms", headers={"X-API-Key": token}).status_code == 401  # not an API key
            assert page.post("/dashboard/session", headers={"X-Dashboard-Token": token}).status_code == 200
            assert page.get("/dashboard/snapshot").status_code == 200  # read-only session by cookie
        pid = int((tmp_path / "run" / "api.pid").read_text())
        os.kill(pid, 0)  # alive, detached in its own session
        assert os.getsid(pid) == pid
        resp = httpx.get(f"http://127.0.0.1:{port}/alarms", headers={"X-API-Key": key}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert start_detached(module_settings, root, port=port)[1] == "running"
        assert (tmp_path / "logs" / "api.log").exists()
    finally:
        assert stop_detached(root).endswith("stopped")
    assert not (tmp_path / "run" / "api.pid").exists()
    assert stop_detached(root).endswith("not running")


def _stop_api(settings, root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow_dev.demo", "stop-api", "--root", str(root)],
                          env={**os.environ, **settings_environment(settings)}, capture_output=True, text=True,
                          timeout=60)


def test_stop_api_ends_the_detached_api_of_make_demo(module_settings, tmp_path):
    port = port_for.select_random()
    url, state = start_detached(module_settings, root=str(tmp_path), port=port)
    assert state == "started"
    pid = DetachedProcess("api", tmp_path).pid
    assert httpx.get(f"{url}/healthz", timeout=10).status_code in (200, 503)
    stopped = _stop_api(module_settings, tmp_path)
    assert stopped.returncode == 0 and re.fullmatch(r"api\s+stopped", stopped.stdout.strip()), stopped.stdout
    assert not process_alive(pid)  # (a zombie until this process, its parent, reaps it)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    again = _stop_api(module_settings, tmp_path)
    assert again.returncode == 0 and re.fullmatch(r"api\s+not running", again.stdout.strip()), again.stdout
