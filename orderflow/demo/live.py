"""``make demo``: the live system on the local stack (already up).

Starts, detached (``orderflow.local.processes``; ``make stack-status`` lists them, ``make stack-down``
stops them): both pipelines streaming on Prism, the live feed (orders from a few hundred clients, 1,000
restaurants pinging every 30 s, some going silent, some unavailable), and the API. Then it does through
the API what a user would try first, and prints how long each took to show up:

- the seed's REST Proxy request for client ``vitor``, then her daily volume;
- a restaurant sets itself unavailable, then its status.

It ends with the commands to try the same by hand.
"""
from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal

import psycopg

from orderflow import refdata
from orderflow.api.demo import demo as api_demo
from orderflow.config import Settings, settings_environment
from orderflow.local.processes import RUNNING, DetachedProcess
from orderflow.model import pricing, sample_assets

DEMO_PHONE = "+5511900000001"
# Thresholds sized for the feed's default rate (~20 orders/s of ~100,000 BRL): the busiest client
# crosses the day rule within minutes, the 10-minute window of all clients once per window or so.
DEMO_RULES = [
    {"id": "demo-client-day", "scope": "client", "window": "day", "threshold": "200000000"},
    {"id": "demo-all-10m", "scope": "all", "window": {"size_seconds": 600, "period_seconds": 300},
     "threshold": "1000000000"},
]
SEED_ORDER = {"records": [{"value": {"ativo": "WEGE3", "quantidade": 100, "token": "vitor"}}]}
DEMO_RESTAURANT = "rest-00042"


def start_live_system(settings: Settings, root: str = ".local", feed_args: list[str] | None = None,
                      pipeline_args: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Reference data for today, a phone for alarms, and the three processes; returns their states."""
    today = pricing.today(settings)
    for day in (today - dt.timedelta(days=1), today):
        refdata.load_reference_data(settings, day, sample_assets.sample_prices(day))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL) ON CONFLICT (phone) DO NOTHING",
                     (DEMO_PHONE,))
    env = settings_environment(settings)
    args = {"orders": [f"--alarm_rules={json.dumps(DEMO_RULES)}", "--orders_batch_size=2000"],
            "presence": [], "feed": feed_args or []}
    for name, extra in (pipeline_args or {}).items():
        args[name] = args[name] + extra
    states = {}
    for name in ("orders", "presence", "feed"):
        process = DetachedProcess(name, root)
        if process.status() == RUNNING:
            states[name] = "running"
            continue
        process.start(args[name], env=env)
        states[name] = "started"
    return states


def _call(url: str, key: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"X-API-Key": key, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait(check: Callable[[], object], timeout: float, processes: list[DetachedProcess]) -> tuple[object, float]:
    """Polls ``check`` until it returns something truthy; fails early, with the log, if a process died."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for process in processes:
            if process.status() != RUNNING:
                raise RuntimeError(f"{process.name} died; log: {process.log_path}\n{process.log_tail()}")
        value = check()
        if value:
            return value, time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"nothing after {timeout:.0f}s; logs: " + ", ".join(str(p.log_path) for p in processes))


def try_it(url: str, key: str, settings: Settings, root: str = ".local", timeout: float = 120.0) -> dict[str, float]:
    """What a user tries first, through the API; returns how many seconds each took to show up."""
    pipelines = [DetachedProcess(name, root) for name in ("orders", "presence", "feed")]
    day = pricing.today(settings)

    def volume() -> tuple[Decimal, int]:
        status, body = _call(f"{url}/clients/vitor/volume?day={day}", key)
        return (Decimal(body["total"]), int(body["order_count"])) if status == 200 else (Decimal(0), 0)

    before = volume()
    status, body = _call(f"{url}/topics/{settings.topics.orders}", key, "POST", json.dumps(SEED_ORDER).encode(),
                         {"Content-Type": "application/vnd.kafka.json.v2+json",
                          "Accept": "application/vnd.kafka.v2+json"})
    if status != 200:
        raise RuntimeError(f"POST /topics/{settings.topics.orders} answered {status}: {body}")
    after, order_seconds = _wait(lambda: (v := volume())[1] > before[1] and v, timeout, pipelines)
    print(f"vitor's order (REST Proxy v2 request) -> priced and in her volume after {order_seconds:.1f}s: "
          f"{after[1]} orders today, {after[0]} BRL")

    status, body = _call(f"{url}/restaurants/{DEMO_RESTAURANT}/availability", key, "PUT",
                         json.dumps({"status": "UNAVAILABLE", "reason": "HOLIDAYS"}).encode(),
                         {"Content-Type": "application/json"})
    if status != 202:
        raise RuntimeError(f"PUT availability answered {status}: {body}")

    def unavailable():
        status, body = _call(f"{url}/restaurants/status?ids={DEMO_RESTAURANT}", key)
        entry = body.get("restaurants", {}).get(DEMO_RESTAURANT, {}) if status == 200 else {}
        return entry if entry.get("availability", {}).get("status") == "UNAVAILABLE" else None

    entry, status_seconds = _wait(unavailable, timeout, pipelines)
    print(f"{DEMO_RESTAURANT} set UNAVAILABLE (HOLIDAYS) -> its status after {status_seconds:.1f}s: "
          f"{entry['status']} {entry['reasons']}")
    return {"order_to_volume": order_seconds, "unavailable_to_status": status_seconds}


def demo(settings: Settings, root: str = ".local", port: int = 18080, timeout: float = 120.0,
         feed_args: list[str] | None = None, pipeline_args: dict[str, list[str]] | None = None) -> dict[str, float]:
    print("== Live system: both pipelines streaming on Prism, a live feed, the API")
    for name, state in start_live_system(settings, root, feed_args, pipeline_args).items():
        process = DetachedProcess(name, root)
        print(f"{name:<10} {state:<8} log: {process.log_path}")
    url, key = api_demo(settings, root=root, port=port)
    print("== Trying it through the API")
    seconds = try_it(url, key, settings, root, timeout)
    print(f"""== Try it yourself (the feed keeps running; make stack-status, make stack-down)
curl -iXPOST '{url}/topics/{settings.topics.orders}' -H 'Accept: application/vnd.kafka.v2+json' \\
  -H 'Content-Type: application/vnd.kafka.json.v2+json' -H 'X-API-Key: {key}' \\
  -d '{json.dumps(SEED_ORDER)}'
curl -H 'X-API-Key: {key}' '{url}/clients/vitor/volume'
curl -X PUT -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\
  '{url}/restaurants/rest-00007/availability' -d '{{"status": "UNAVAILABLE", "reason": "LACK_OF_DELIVERY_STAFF"}}'
curl -H 'X-API-Key: {key}' '{url}/restaurants/status?ids=rest-00007,rest-00008'
curl -H 'X-API-Key: {key}' '{url}/alarms'""")
    return seconds
