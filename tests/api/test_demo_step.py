"""``make demo``'s API step: started detached with a pid file and a log, reused, stopped by pid file; it prints
no URL carrying an API key, and its dashboard link signs in read-only."""
from __future__ import annotations

import os

import httpx
import port_for

from orderflow.api.demo import demo, start_detached, stop_detached


def test_demo_step_serves_until_stopped(api_settings, tmp_path, capsys):
    port = port_for.select_random()
    root = str(tmp_path)
    try:
        demo(api_settings, root=root, port=port)
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
        assert start_detached(api_settings, root, port=port)[1] == "running"
        assert (tmp_path / "logs" / "api.log").exists()
    finally:
        assert stop_detached(root).endswith("stopped")
    assert not (tmp_path / "run" / "api.pid").exists()
    assert stop_detached(root).endswith("not running")
