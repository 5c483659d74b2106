"""``make demo``'s live system on the test stack: both pipelines streaming on Prism, the feed and the API
started detached; an order POSTed through the REST Proxy request shows in the client's volume, a
restaurant set unavailable shows in its status; status reports every process; stopping ends them all."""
from __future__ import annotations

import port_for
import psycopg

from orderflow_dev.demo.live import demo
from orderflow_dev.local.processes import PROCESSES, RUNNING, DetachedProcess, detached_processes

DEMO_TIMEOUT = 180.0


def test_live_demo_streams_what_a_user_does_through_the_api(module_settings, stack, tmp_path, capsys):
    root = str(tmp_path)
    try:
        # The demo waits at most DEMO_TIMEOUT for each effect and fails (TimeoutError) beyond it: the only bound
        # on how long they took, one a hang breaks; it prints the seconds, the test does not compare them.
        demo(module_settings, root=root, port=port_for.select_random(), timeout=DEMO_TIMEOUT,
             feed_args=["--restaurants", "50", "--orders-per-second", "5"], stack_root=str(stack.root),
             mqtt_restaurants=20)
        out = capsys.readouterr().out
        assert "vitor's order (REST Proxy v2 request) -> priced and in her volume after" in out
        assert "rest-00042 set UNAVAILABLE (HOLIDAYS) -> its status after" in out
        assert "'unavailable'" in out.split("rest-00042 set UNAVAILABLE", 1)[1].splitlines()[0]
        assert "mqtt-demo (MQTT) connection killed -> its status after" in out
        assert "'disconnected'" in out.split("mqtt-demo (MQTT) connection killed", 1)[1].splitlines()[0]
        assert {p.name: p.status() for p in detached_processes(root)} == {name: RUNNING for name in PROCESSES}
        # The feed's orders stream through as well: more than vitor's one are priced and stored.
        with psycopg.connect(module_settings.postgres_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM orders WHERE client_token <> 'vitor'").fetchone()[0] > 0
            assert conn.execute("SELECT count(*) FROM orders WHERE client_token = 'vitor'").fetchone()[0] == 1
    finally:
        stopped = {name: DetachedProcess(name, root).stop() for name in PROCESSES}
    assert set(stopped.values()) == {"stopped"}
    assert detached_processes(root) == []
