"""Debian's Chromium, headless, as the browser tests launch it through Playwright (``executable_path``, never
``playwright install``)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
