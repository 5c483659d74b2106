"""The FastAPI application: ``create_app(settings, config)``; ``python -m orderflow.api serve`` runs it."""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from orderflow.api import alarm_phones, charts, dashboard, ingest, operations, queries, rest_proxy, static_assets
from orderflow.api.auth import FailureLimiter
from orderflow.api.errors import error_body
from orderflow.api.middleware import ApiMiddleware
from orderflow.api.resources import Resources
from orderflow.api.server import install_log_redaction
from orderflow.config import ApiConfig, Settings, load_api_config, load_settings

__all__ = ["create_app"]

DESCRIPTION = """
Ingest orders and restaurant events into orderflow's Kafka topics, and query what the pipelines computed.

Authenticate with an API key in `X-API-Key` (or `Authorization: Bearer <key>`), never in a URL; create one
with `python -m orderflow.api keys create --scope read --scope ingest`. Scopes: `read`, `ingest`,
`client:<token>` (that client's orders and volume only), `restaurant:<id>` (acts and reads for that
restaurant only), `admin` (alarm phones). 401 without a valid key, 403 outside the key's scopes, 429 after
too many failed authentications from one address.

Errors have one body: `{"detail": "<reason>"}`, plus `errors` (the fields at fault) on a 422; under
`/topics/` (Confluent REST Proxy v2 compatibility) they are REST Proxy's `{"error_code": ..., "message": ...}`.

Money is a decimal string in plain notation without trailing zeros (`"4217"`, `"181952785.6963"`).
Client tokens and order ids given by clients use letters, digits and `. _ : @ -`, starting with a letter
or digit; ids the API mints look like `api-<32 hex>-<index>`.
"""


def _readable(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def _allowed_methods(app: FastAPI, scope) -> str:
    """Every method some route serves on this path (Starlette names only the first matching route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def create_app(settings: Settings | None = None, config: ApiConfig | None = None) -> FastAPI:
    settings = settings or load_settings()
    config = config or load_api_config()
    install_log_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.resources = Resources(settings, config)
        app.state.dashboard_feed = None
        app.state.live_history = charts.LiveHistory(config.chart_sample_seconds, config.chart_history_minutes)
        sampler = asyncio.create_task(app.state.live_history.run(app.state, app.state.resources))
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            app.state.resources.close()

    # /docs and /redoc are served from local assets (static_assets), never from a CDN.
    # FastAPI's native OpenTelemetry is off: orderflow's metrics are Prometheus' (/metrics), and with it on,
    # every request looks the global OpenTelemetry providers up again (6% of a keep-alive's time, issue 26).
    app = FastAPI(title="orderflow API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.auth_failures = FailureLimiter(config.auth_failures_per_minute)
    app.include_router(ingest.router)
    app.include_router(rest_proxy.make_router(settings.topics.orders))
    for module in (queries, dashboard, charts, alarm_phones, operations):
        app.include_router(module.router)
    app.add_middleware(ApiMiddleware, max_body_bytes=config.max_body_bytes,
                       body_timeout_seconds=config.body_timeout_seconds,
                       fast_paths=[ingest.keepalive_fast_path], fast_routes=[ingest.KEEPALIVE_ROUTE])
    static_assets.install(app)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in ingest.COMPONENT_SCHEMAS.items():  # bodies read raw, documented by hand
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request.scope)
        body, media_type = error_body(request.scope["path"], exc.status_code, str(exc.detail),
                                      errors=getattr(exc, "errors", None), error_code=getattr(exc, "error_code", None))
        return Response(body, status_code=exc.status_code, headers=headers, media_type=media_type)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        body, media_type = error_body(
            request.scope["path"], 422, "; ".join(_readable(e) for e in errors),
            errors=[{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                     "msg": str(e.get("msg"))} for e in errors])
        return Response(body, status_code=422, media_type=media_type)

    return app
