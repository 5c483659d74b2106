"""The FastAPI application: ``create_app(settings, config)``; ``python -m orderflow.api serve`` runs it."""
from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orderflow.api import dashboard, ingest, operations, queries
from orderflow.api.config import ApiConfig, load_api_config
from orderflow.api.metrics import ApiMiddleware
from orderflow.api.resources import Resources
from orderflow.config import Settings, load_settings

DESCRIPTION = """
Ingest orders and restaurant events into orderflow's Kafka topics, and query what the pipelines computed.

Authenticate with an API key in `X-API-Key` (or `Authorization: Bearer <key>`); create one with
`python -m orderflow.api keys create --scope read --scope ingest`. Scopes: `read`, `ingest`,
`client:<token>` (that client's orders and volume only), `restaurant:<id>` (acts and reads for that
restaurant only). 401 without a valid key, 403 outside the key's scopes.
"""


def _readable(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def create_app(settings: Settings | None = None, config: ApiConfig | None = None) -> FastAPI:
    settings = settings or load_settings()
    config = config or load_api_config()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.resources = Resources(settings, config)
        app.state.dashboard_feed = None
        try:
            yield
        finally:
            app.state.resources.close()

    app = FastAPI(title="orderflow API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(ApiMiddleware, max_body_bytes=config.max_body_bytes)
    for module in (ingest, queries, dashboard, operations):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(status_code=422, content={
            "detail": "; ".join(_readable(e) for e in errors),
            "errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors],
        })

    @app.exception_handler(Exception)
    async def dependency_down(request: Request, exc: Exception):
        # A failing dependency (database, Redis, DynamoDB) is reported as such, by name, not as a bare 500.
        name = _dependency_of(exc)
        if name is None:
            return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})
        return JSONResponse(status_code=503, content={"detail": f"{name} unavailable: {exc}"[:500]})

    return app


def _dependency_of(exc: Exception) -> str | None:
    module = type(exc).__module__ or ""
    for prefix, name in (("psycopg", "postgres"), ("redis", "redis"), ("botocore", "dynamodb"),
                         ("confluent_kafka", "kafka")):
        if module.startswith(prefix):
            return name
    return None
