"""``/docs`` and ``/redoc`` render in a real browser with every request off this machine refused: Swagger UI and
Redoc come from the API itself (``make web`` vendors them), never from a CDN."""
from __future__ import annotations

import shutil
import urllib.parse

import pytest

from orderflow.api.static_assets import missing_assets
from tests.support.chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.support.environment import require

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module")
def offline_browser():
    require(shutil.which(CHROMIUM) is not None, "Debian chromium not installed (make setup)")
    require(not missing_assets(), f"the API's browser assets are missing ({', '.join(missing_assets())}): make web")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def _offline_page(browser):
    """A page whose requests to anything but loopback are aborted; returns it and the list of those refused."""
    context = browser.new_context()
    refused: list[str] = []

    def route(r):
        if urllib.parse.urlsplit(r.request.url).hostname in LOOPBACK:
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    return context, context.new_page(), refused


def test_swagger_ui_renders_every_operation_offline(api, anonymous, offline_browser):
    spec = anonymous.get("/openapi.json").json()
    operations = sum(1 for path in spec["paths"].values() for method in path
                     if method in ("get", "post", "put", "delete", "patch"))
    html = anonymous.get("/docs").text
    assert "cdn." not in html and "/static/vendor/swagger-ui-bundle.js" in html
    context, page, refused = _offline_page(offline_browser)
    page.goto(f"{api.url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() == operations
    assert page.locator(".opblock-summary-path", has_text="/restaurants/status").count() >= 1
    # Expanding an operation shows its parameters (the UI works, not only its first paint).
    page.locator(".opblock-summary", has_text="/restaurants/status").first.click()
    page.wait_for_selector(".opblock.is-open .parameters", timeout=15_000)
    assert refused == []
    context.close()


def test_redoc_renders_offline(api, anonymous, offline_browser):
    spec = anonymous.get("/openapi.json").json()
    operations = sum(1 for path in spec["paths"].values() for method in path
                     if method in ("get", "post", "put", "delete", "patch"))
    html = anonymous.get("/redoc").text
    assert "cdn." not in html and "fonts.googleapis" not in html
    context, page, refused = _offline_page(offline_browser)
    page.goto(f"{api.url}/redoc")
    page.wait_for_selector("h1:has-text('orderflow API')", timeout=30_000)
    # an operation's summary in the side menu, and its path in the operation's panel
    page.get_by_text("Health of the API, each dependency and each pipeline").first.wait_for(state="attached", timeout=15_000)
    page.get_by_text("/restaurants/status", exact=True).first.wait_for(state="attached", timeout=15_000)
    assert page.locator("[data-section-id^='operation/']").count() == operations
    # Redoc's bundle hard-codes one request off the machine: the "API docs by Redocly" logo of its side menu,
    # an <img> that removes itself when it fails to load. Nothing else is asked for.
    assert set(refused) <= {REDOCLY_LOGO}
    page.wait_for_function(f"!document.querySelector('img[src=\"{REDOCLY_LOGO}\"]')", timeout=15_000)
    context.close()


def test_the_vendored_assets_are_served(anonymous):
    require(not missing_assets(), "make web")
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("redoc.standalone.js", "javascript"),
                       ("uPlot.iife.min.js", "javascript"), ("swagger-ui.css", "css")):
        resp = anonymous.get(f"/static/vendor/{name}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"], name
