"""The dashboard's charts on ``make demo``'s live system (both pipelines streaming on Prism, the live feed, the
detached API), in Debian's Chromium: the pipelines' health, the restaurants online/offline, orders priced/s and
the consumer lag draw and move as the feed runs, the top clients' volume, a restaurant's day and the recent
alarms show; a screenshot is saved to ``.local/screenshots/dashboard.png`` (``ORDERFLOW_SCREENSHOT_DIR=docs/img``
refreshes the one the README shows, so that a test run does not rewrite a tracked file)."""
from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil
import time
from zoneinfo import ZoneInfo

import port_for
import psycopg

from orderflow.api.auth import dashboard_token
from orderflow.api.static_assets import missing_assets
from orderflow_dev.demo.api import demo as api_demo
from orderflow_dev.demo.live import start_live_system
from orderflow_dev.local.processes import PROCESSES, DetachedProcess
from tests.support.chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.support.environment import require

SCREENSHOT = pathlib.Path(os.environ.get("ORDERFLOW_SCREENSHOT_DIR") or pathlib.Path(__file__).resolve().parents[2]
                          / ".local" / "screenshots") / "dashboard.png"
TIMELINE_RESTAURANT = "rest-timeline"


def _seed_timeline_and_alarm(settings) -> None:
    """A stored day for one restaurant (as the presence pipeline writes intervals) and an alarm whose SMS went
    to one phone of two, the other queued: the parts of the page that a two-minute run of the feed does not
    reach by itself."""
    zone = ZoneInfo(settings.presence_timezone)
    day = dt.datetime.now(zone).date()
    at = lambda h, m=0: dt.datetime.combine(day, dt.time(h, m), zone)  # noqa: E731
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO restaurant_status_intervals (restaurant_id, start_at, end_at, status, reason, day)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(TIMELINE_RESTAURANT, at(10), at(12, 30), "online", None, day),
             (TIMELINE_RESTAURANT, at(12, 30), at(13, 10), "offline_unexplained", None, day),
             (TIMELINE_RESTAURANT, at(13, 10), at(15), "offline_scheduled", "LACK_OF_DELIVERY_STAFF", day),
             (TIMELINE_RESTAURANT, at(15), at(18), "online", None, day)])
        window = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        conn.execute("INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold)"
                     " VALUES ('seeded-rule', 'acme', %s, %s, 250000, 200000)", (window, window + dt.timedelta(minutes=10)))
        conn.execute("INSERT INTO sms_outbox (rule_id, scope, window_start, phone, message, sent_at) VALUES"
                     " ('seeded-rule', 'acme', %s, '+5511900000009', 'x', now()),"
                     " ('seeded-rule', 'acme', %s, '+5511900000010', 'x', NULL)", (window, window))


def test_the_dashboard_charts_render_and_move_with_the_live_feed(module_settings, stack, tmp_path, monkeypatch):
    require(shutil.which(CHROMIUM) is not None, "Debian chromium not installed (make setup)")
    require(not missing_assets(), "the API's browser assets are missing: make web")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("ORDERFLOW_API_CHART_SAMPLE_SECONDS", "1")  # the detached API inherits it
    root = str(tmp_path)
    try:
        start_live_system(module_settings, root, feed_args=["--restaurants", "50", "--orders-per-second", "10"],
                          pipeline_args={"orders": ["--progress_interval_seconds=1"],
                                         "presence": ["--progress_interval_seconds=1"]},
                          stack_root=str(stack.root), mqtt_restaurants=20)
        url, key = api_demo(module_settings, root=root, port=port_for.select_random())
        _seed_timeline_and_alarm(module_settings)
        token, _ = dashboard_token(key, 600)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/dashboard#token={token}")
            page.wait_for_selector("#connection.live", timeout=30_000)
            started = time.monotonic()
            # Both pipelines report and are healthy once Prism has them running (a minute on a loaded machine).
            for name in ("orders", "presence"):
                page.wait_for_function(
                    f"(document.querySelector('#pipeline-{name} .ok') || {{}}).textContent === 'ok'", timeout=180_000)
            print(f"\npipelines healthy on the page {time.monotonic() - started:.1f} s after it opened")
            # Orders flow: the priced rate is drawn above zero, and the charts gain points as the feed runs.
            page.wait_for_function(
                "fetch('/dashboard/history?minutes=10').then(r => r.json())"
                ".then(h => h.orders_priced_per_s.filter(v => v > 0).length >= 5)", polling=2000, timeout=120_000)
            for chart in ("chart-status", "chart-rates", "chart-lag"):
                page.wait_for_selector(f"#{chart} canvas", timeout=30_000)
            points = int(page.locator("#chart-rates").get_attribute("data-points"))
            page.wait_for_function(f"Number(document.querySelector('#chart-rates').dataset.points) > {points}",
                                   timeout=30_000)
            assert page.locator("#chart-rates .u-legend").inner_text().count("orders priced/s") == 1
            # Drawn to scale, not an empty frame: the y scale of the plotted rate reaches above zero.
            page.wait_for_function("window.dashboardCharts['chart-rates'].plot.scales.y.max > 0", timeout=15_000)
            # The top clients' volume through the day (the feed's stored orders).
            page.wait_for_function("document.querySelector('#chart-clients canvas') &&"
                                   " document.querySelectorAll('#chart-clients .u-legend .u-series').length > 1",
                                   timeout=60_000)
            # One restaurant's day: its stored intervals as a bar of three kinds of segments.
            page.fill("#timeline-form input[name=id]", TIMELINE_RESTAURANT)
            page.click("#timeline-form button")
            page.wait_for_selector("#timeline .seg-offline_scheduled", timeout=15_000)
            assert page.locator("#timeline .seg-online").count() == 2
            assert page.locator("#timeline .seg-offline_unexplained").count() == 1
            # Recent alarms with their window and SMS state (the orders pipeline's relay may have sent the
            # queued one meanwhile: 1 or 2 of 2).
            page.wait_for_function("/[12] of 2 sent/.test(document.querySelector('#alarms').textContent)",
                                   timeout=30_000)
            assert "seeded-rule" in page.locator("#alarms").inner_text()
            time.sleep(3)  # a few more samples in the live charts for the picture
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 30_000
            browser.close()
    finally:
        for name in PROCESSES:
            DetachedProcess(name, root).stop()
