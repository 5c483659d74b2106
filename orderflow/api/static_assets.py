"""The browser assets the API serves itself, so that ``/docs``, ``/redoc`` and the dashboard's charts work with no
network: Swagger UI, Redoc and uPlot, pinned in ``orderflow/api/web/package-lock.json`` and copied by ``make web``
(part of ``make setup``) into ``orderflow/api/static/vendor/``, served under ``/static/vendor/``.

Without them (``make web`` not run), ``/docs`` and ``/redoc`` answer 503 saying so; nothing is ever loaded from
a CDN.
"""
from __future__ import annotations

import pathlib

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install", "missing_assets"]

STATIC_DIR = pathlib.Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
VENDOR_URL = "/static/vendor"
# file -> what needs it
VENDOR_FILES = {
    "swagger-ui-bundle.js": "/docs", "swagger-ui.css": "/docs", "favicon-32x32.png": "/docs and /redoc",
    "redoc.standalone.js": "/redoc", "uPlot.iife.min.js": "/dashboard", "uPlot.min.css": "/dashboard",
}


def missing_assets() -> list[str]:
    """The vendored files that are not there (``make web`` installs them)."""
    return [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]


def _missing_answer(page: str) -> JSONResponse | None:
    missing = [name for name in missing_assets() if page in VENDOR_FILES[name]]
    if not missing:
        return None
    return JSONResponse({"detail": f"{page} needs {', '.join(missing)} in {VENDOR_DIR}: run `make web` "
                                   "(make setup does)"}, status_code=503)


def install(app: FastAPI) -> None:
    """Serves ``/static`` and the ``/docs`` and ``/redoc`` pages from the local assets (the app is created with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN-loading pages are not there)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _missing_answer("/docs") or get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{VENDOR_URL}/swagger-ui-bundle.js", swagger_css_url=f"{VENDOR_URL}/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR_URL}/favicon-32x32.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _missing_answer("/redoc") or get_redoc_html(
            openapi_url=openapi_url, title=f"{app.title} - ReDoc", redoc_js_url=f"{VENDOR_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{VENDOR_URL}/favicon-32x32.png", with_google_fonts=False)
