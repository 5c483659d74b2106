"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The page opens, signs in with a key typed into its form (never put in a URL), shows the status counts, and
a restaurant set unavailable in the hot state (written the way the presence pipeline writes it) appears on
the open page without a reload; a screenshot is saved to ``.local/screenshots/dashboard.png``. A sign-in
link carrying a dashboard token in its fragment (what ``make demo`` prints) opens the page too.
"""
from __future__ import annotations

import datetime as dt
import pathlib
import shutil
import time
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orderflow.api.auth import dashboard_token
from orderflow.clients import aws_client
from orderflow.model.presence import AvailabilityChange
from orderflow.model.pricing import today
from tests.support.chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.support.environment import require

SCREENSHOT = pathlib.Path(".local/screenshots/dashboard.png")

@pytest.fixture(autouse=True)
def _chromium():
    require(shutil.which(CHROMIUM) is not None, "Debian chromium not installed (make setup)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def _seed(api, state_store):
    now_ms = int(time.time() * 1000)
    state_store.record_keepalives({f"dash-{i}": now_ms for i in range(5)})
    day = today(api.app.state.resources.settings)
    with psycopg.connect(api.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO restaurant_offline_daily VALUES ('dash-3', %s, 5400), ('dash-1', %s, 840)"
                     " ON CONFLICT DO NOTHING", (day, day))
    aws_client(api.settings, "dynamodb").put_item(TableName=api.settings.client_volume_table, Item={
        "client_token": {"S": "acme-capital"}, "day": {"S": day.isoformat()}, "total": {"N": "1234567.89"},
        "order_count": {"N": "42"}, "updated_at": {"S": "now"}})


def test_a_status_change_arrives_live_on_the_open_page(api, browser, state_store):
    _seed(api, state_store)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(f"{api.url}/dashboard")
    page.fill("#sign-in input[name=key]", api.key("read"))
    page.click("#sign-in button")
    page.wait_for_selector("#connection.live", timeout=15_000)
    assert "key=" not in page.url
    unavailable = page.locator("#count-unavailable .n")
    page.wait_for_function("document.querySelector('#count-unavailable .n') !== null", timeout=15_000)
    before = int(unavailable.inner_text())
    assert page.locator("#ranking tr").first.inner_text().split("\t")[1] == "dash-3"
    assert "acme-capital" in page.locator("#volumes").inner_text()

    page.evaluate("window.sameDocument = true")  # gone if the page reloaded
    state_store.apply_changes([AvailabilityChange("dash-ev", "dash-2", "SET_STATUS", "UNAVAILABLE", None,
                                                  "OVERLOADED_OFFLINE_ORDERS", None, None, int(time.time() * 1000))])
    page.wait_for_function(
        f"Number(document.querySelector('#count-unavailable .n').textContent) === {before + 1}", timeout=15_000)
    assert int(unavailable.inner_text()) == before + 1
    assert page.evaluate("window.sameDocument === true")  # it arrived live, not by a reload
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    page.close()


def test_an_alarm_window_shows_both_dates_in_the_exchanges_zone(api, browser):
    """A day window of São Paulo (UTC-3), seen from a browser in Tokyo: both ends with their dates, in São Paulo."""
    zone = ZoneInfo(api.settings.exchange_timezone)
    start = dt.datetime(2026, 12, 6, tzinfo=zone)
    with psycopg.connect(api.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold, fired_at)"
                     " VALUES ('dash-day', '*', %s, %s, 12, 10, now()) ON CONFLICT DO NOTHING",
                     (start, start + dt.timedelta(days=1)))
    page = browser.new_page(timezone_id="Asia/Tokyo")
    page.goto(f"{api.url}/dashboard")
    page.fill("#sign-in input[name=key]", api.key("read"))
    page.click("#sign-in button")
    page.wait_for_function("document.querySelector('#alarms').textContent.includes('dash-day')", timeout=15_000)
    row = page.locator("#alarms tr", has_text="dash-day").inner_text()
    assert "2026-12-06 00:00 - 2026-12-07 00:00 (America/Sao_Paulo)" in row, row
    page.close()


def test_without_a_key_the_page_asks_for_one(api, browser):
    page = browser.new_page()
    page.goto(f"{api.url}/dashboard")
    page.wait_for_selector("#key-form", state="visible", timeout=15_000)
    assert page.locator("#connection").inner_text() == "no key"
    page.fill("#sign-in input[name=key]", api.key("ingest"))  # no 'read': refused, the form stays
    page.click("#sign-in button")
    page.wait_for_function("document.querySelector('#sign-in-error').textContent.includes('refused')", timeout=15_000)
    page.close()


def test_a_sign_in_link_with_a_dashboard_token_opens_the_live_page(api, browser):
    token, _ = dashboard_token(api.key("read"), 600)
    page = browser.new_page()
    page.goto(f"{api.url}/dashboard#token={token}")
    page.wait_for_selector("#connection.live", timeout=15_000)
    assert token not in page.url  # dropped from the address bar once exchanged for the session cookie
    page.close()
