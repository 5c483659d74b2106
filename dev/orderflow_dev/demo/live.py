"""``make demo``: the live system on the local stack (already up).

Starts, detached (``orderflow_dev.local.processes``; ``make stack-status`` lists them, ``make stack-down``
stops them): both pipelines streaming on Prism, the live feed (orders from a few hundred clients, 1,000
restaurants pinging every 30 s over HTTP's Kafka path, some going silent, some unavailable), 1,000 more
restaurants connected over MQTT (``mqtt-00001``...: pinging every 30 s, two connections a minute dropped
abruptly), the MQTT bridge, and the API. Then it does through the API what a user would try first, and
prints how long each took to show up:

- the seed's REST Proxy request for client ``vitor``, then her daily volume;
- a restaurant sets itself unavailable, then its status;
- a restaurant connected over MQTT dies (its connection closed without DISCONNECT), then its status.

It ends with the commands to try the same by hand.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal

import psycopg

from orderflow import refdata
from orderflow.bridge.mqtt import broker_addresses
from orderflow.config import Settings, settings_environment
from orderflow.model import pricing, sample_assets
from orderflow_dev.demo.api import demo as api_demo
from orderflow_dev.generate.mqtt_fleet import RestaurantFleet
from orderflow_dev.local.processes import RUNNING, DetachedProcess
from orderflow_dev.local.stack import LocalStack

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
MQTT_RESTAURANTS = 1000
DEMO_MQTT_RESTAURANT = "mqtt-demo"
PROCESS_NAMES = ("orders", "presence", "feed", "bridge", "mqtt-feed")


def _mqtt_credentials(stack_root: str, root: str, restaurants: int) -> str:
    """Accounts for the MQTT restaurants on the stack's broker; the file of 'id password' lines the fleet reads."""
    issued = LocalStack(stack_root).issue_mqtt_credentials([f"mqtt-{n:05d}" for n in range(1, restaurants + 1)])
    path = pathlib.Path(root) / "mqtt-demo-credentials"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.writelines(f"{r} {password}\n" for r, password in issued.items())
    return str(path)


def start_live_system(settings: Settings, root: str = ".local", feed_args: list[str] | None = None,
                      pipeline_args: dict[str, list[str]] | None = None, stack_root: str | None = None,
                      mqtt_restaurants: int = MQTT_RESTAURANTS) -> dict[str, str]:
    """Reference data for today, a phone for alarms, and the processes; returns their states. ``stack_root``: the
    local stack's directory (its broker's accounts), default ``root``."""
    today = pricing.today(settings)
    for day in (today - dt.timedelta(days=1), today):
        refdata.load_reference_data(settings, day, sample_assets.sample_prices(day))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL) ON CONFLICT (phone) DO NOTHING",
                     (DEMO_PHONE,))
    env = settings_environment(settings)
    args = {"orders": [f"--alarm_rules={json.dumps(DEMO_RULES)}", "--orders_batch_size=2000"],
            "presence": [], "feed": feed_args or [], "bridge": [],
            "mqtt-feed": ["--interval", "30", "--kills-per-minute", "2"]}
    for name, extra in (pipeline_args or {}).items():
        args[name] = args[name] + extra
    states = {}
    for name in PROCESS_NAMES:
        process = DetachedProcess(name, root)
        if process.status() == RUNNING:
            states[name] = "running"
            continue
        if name == "mqtt-feed":  # new passwords only for a new fleet: a running one keeps its own
            args[name] += ["--credentials", _mqtt_credentials(stack_root or root, root, mqtt_restaurants)]
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


def try_it(url: str, key: str, settings: Settings, root: str = ".local", timeout: float = 120.0,
           stack_root: str | None = None) -> dict[str, float]:
    """What a user tries first, through the API; returns how many seconds each took to show up."""
    pipelines = [DetachedProcess(name, root) for name in PROCESS_NAMES]
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

    def connection(state: str):
        def check():
            status, body = _call(f"{url}/restaurants/status?ids={DEMO_MQTT_RESTAURANT}", key)
            entry = body.get("restaurants", {}).get(DEMO_MQTT_RESTAURANT, {}) if status == 200 else {}
            return entry if (entry.get("connection") or {}).get("state") == state else None
        return check

    fleet = RestaurantFleet(broker_addresses(settings.mqtt_url),
                            LocalStack(stack_root or root).issue_mqtt_credentials([DEMO_MQTT_RESTAURANT]))
    loop = asyncio.new_event_loop()
    try:
        if not loop.run_until_complete(fleet.connect_all()) or not loop.run_until_complete(
                fleet.ping([DEMO_MQTT_RESTAURANT])):
            raise RuntimeError(f"{DEMO_MQTT_RESTAURANT} could not connect to the MQTT broker: {fleet.counts}")
        _wait(connection("CONNECTED"), timeout, pipelines)
        fleet.kill([DEMO_MQTT_RESTAURANT])  # closed without DISCONNECT: the broker publishes its last will
        loop.run_until_complete(asyncio.sleep(0.1))  # its reader sees the end of the connection and stops
        entry, mqtt_seconds = _wait(connection("DISCONNECTED"), timeout, pipelines)
    finally:
        loop.close()
    print(f"{DEMO_MQTT_RESTAURANT} (MQTT) connection killed -> its status after {mqtt_seconds:.1f}s: "
          f"{entry['status']} {entry['reasons']}")
    return {"order_to_volume": order_seconds, "unavailable_to_status": status_seconds,
            "mqtt_kill_to_status": mqtt_seconds}


def demo(settings: Settings, root: str = ".local", port: int = 18080, timeout: float = 120.0,
         feed_args: list[str] | None = None, pipeline_args: dict[str, list[str]] | None = None,
         stack_root: str | None = None, mqtt_restaurants: int = MQTT_RESTAURANTS) -> dict[str, float]:
    print("== Live system: both pipelines streaming on Prism, a live feed, restaurants over MQTT, the API")
    for name, state in start_live_system(settings, root, feed_args, pipeline_args, stack_root,
                                         mqtt_restaurants).items():
        process = DetachedProcess(name, root)
        print(f"{name:<10} {state:<8} log: {process.log_path}")
    url, key = api_demo(settings, root=root, port=port)
    print("== Trying it through the API")
    seconds = try_it(url, key, settings, root, timeout, stack_root)
    print(f"""== Try it yourself (the feed keeps running; make stack-status, make stack-down)
curl -iXPOST '{url}/topics/{settings.topics.orders}' -H 'Accept: application/vnd.kafka.v2+json' \\
  -H 'Content-Type: application/vnd.kafka.json.v2+json' -H 'X-API-Key: {key}' \\
  -d '{json.dumps(SEED_ORDER)}'
curl -H 'X-API-Key: {key}' '{url}/clients/vitor/volume'
curl -X PUT -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\
  '{url}/restaurants/rest-00007/availability' -d '{{"status": "UNAVAILABLE", "reason": "LACK_OF_DELIVERY_STAFF"}}'
curl -H 'X-API-Key: {key}' '{url}/restaurants/status?ids=rest-00007,rest-00008'
curl -H 'X-API-Key: {key}' '{url}/alarms'
python -m orderflow_dev.local mqtt-credentials rest-01234   # an MQTT account (prints its password once)""")
    return seconds
