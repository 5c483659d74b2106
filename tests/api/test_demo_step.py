"""``make demo``'s API step: started detached with a pid file and a log, reused, stopped by pid file."""
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
        assert f"http://127.0.0.1:{port}/dashboard?key={key}" in printed
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
