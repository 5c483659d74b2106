"""``/dashboard``: a page for the commercial team, refreshed live over server-sent events.

One feed per process computes a snapshot every ``dashboard_refresh_seconds`` (restaurant status counts
from the Redis hot state, today's offline ranking, today's client volumes) and
pushes it to every open page only when it changed, so the cost does not grow with the number of pages.
The page is plain HTML with a little inline JavaScript (EventSource); no build step.

No API key ever travels in a URL. The page signs in with ``POST /dashboard/session``: an API key with
``read`` in the ``X-API-Key`` header (typed into the page's form), or a dashboard token in
``X-Dashboard-Token`` (the link ``make demo`` prints carries one in its ``#fragment``, which browsers never
send), or the current session cookie (renewal). The answer sets an HttpOnly, SameSite=Strict cookie
holding a dashboard token (``auth.py``: read-only, short-lived, void once its key is revoked), which the
same-origin EventSource sends by itself. An open event stream re-checks its credential against the
database every ``key_cache_seconds`` and ends when the key is revoked or the token expires; the page
renews its session before that, so the browser's automatic reconnection carries on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import time
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import APIKeyCookie
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from orderflow.api.auth import Principal
from orderflow.api.deps import Res, api_key_header, authenticate, forbidden
from orderflow.api.errors import AUTHENTICATED, ApiError, responses
from orderflow.api.queries import offline_ranking
from orderflow.api.resources import Resources
from orderflow.model.money import money
from orderflow.model.pricing import today

__all__ = ["Viewer", "status_counts"]

router = APIRouter(tags=["dashboard"])
COOKIE = "orderflow_dashboard"
session_cookie = APIKeyCookie(name=COOKIE, auto_error=False,
                              description="dashboard session (set by POST /dashboard/session)")
PAGE = (pathlib.Path(__file__).parent / "dashboard.html").read_text()
TOP_CLIENTS = 20


def status_counts(res: Resources) -> dict:
    """Restaurants online/offline right now, offline ones per reason, and those connected over MQTT
    (``mqtt_connected``: their latest connection change is CONNECTED; ``mqtt_disconnected``: their last will),
    from the Redis hot state.

    Every restaurant the presence pipeline has seen is evaluated (SCAN of its hashes, then statuses in
    chunks of 1,000 ids, one round trip each), with the same rules as ``/restaurants/status``.
    """
    store = res.restaurant_state
    prefix = store.key_prefix
    counts = {"online": 0, "offline": 0, "mqtt_connected": 0, "mqtt_disconnected": 0}
    reasons: dict[str, int] = {}
    chunk: list[str] = []

    def evaluate(ids: list[str]) -> None:
        for status in store.statuses(ids, now).values():
            counts[status["status"]] = counts.get(status["status"], 0) + 1
            for reason in status["reasons"]:
                reasons[reason] = reasons.get(reason, 0) + 1
            if status["connection"] is not None:
                counts[f"mqtt_{status['connection']['state'].lower()}"] += 1

    now = dt.datetime.now(dt.timezone.utc)
    for key in store.client.scan_iter(match=f"{prefix}*", count=1000):
        chunk.append(key.decode()[len(prefix):])
        if len(chunk) == 1000:
            evaluate(chunk)
            chunk = []
    if chunk:
        evaluate(chunk)
    return {**counts, "restaurants": counts["online"] + counts["offline"], "offline_reasons": reasons}


def client_volumes_today(res: Resources, limit: int = TOP_CLIENTS) -> list[dict]:
    """Today's largest client volumes. A filtered Scan: fine for a dashboard of a few thousand clients."""
    day = today(res.settings).isoformat()
    items, start_key = [], None
    for _ in range(20):  # bounded: at most 20 pages per refresh
        kwargs = {"TableName": res.settings.client_volume_table, "FilterExpression": "#d = :day",
                  "ExpressionAttributeNames": {"#d": "day"}, "ExpressionAttributeValues": {":day": {"S": day}}}
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        page = res.dynamodb.scan(**kwargs)
        items.extend(page.get("Items", []))
        start_key = page.get("LastEvaluatedKey")
        if not start_key:
            break
    volumes = [{"client_token": i["client_token"]["S"], "total": Decimal(i["total"]["N"]),
                "order_count": int(Decimal(i.get("order_count", {"N": "0"})["N"]))} for i in items]
    volumes.sort(key=lambda v: (-v["total"], v["client_token"]))
    return [{**v, "total": money(v["total"])} for v in volumes[:limit]]


def snapshot(res: Resources) -> dict:
    """Everything the page shows; a part whose source fails is replaced by its error, the rest still shows."""
    day = today(res.settings)
    parts = {
        "status_counts": lambda: status_counts(res),
        "offline_ranking": lambda: [e.model_dump() for e in offline_ranking(res, day, day, 10)],
        "client_volumes": lambda: client_volumes_today(res),
    }
    out: dict = {"day": day.isoformat(), "errors": {}}
    for name, compute in parts.items():
        try:
            out[name] = compute()
        except Exception as exc:  # noqa: BLE001 - shown on the page, by part
            out[name] = None
            out["errors"][name] = f"{type(exc).__name__}: {exc}"[:200]
    return out


class DashboardFeed:
    """Computes snapshots in the background while someone listens, and wakes listeners on change."""

    def __init__(self, res: Resources):
        self.res = res
        self.current: str | None = None
        self.version = 0
        self.changed = asyncio.Condition()
        self.listeners = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while self.listeners > 0:
            started = time.monotonic()
            try:
                data = json.dumps(await run_in_threadpool(snapshot, self.res), sort_keys=True)
            except Exception as exc:  # noqa: BLE001 - keep the feed alive; the page shows the error
                data = json.dumps({"errors": {"dashboard": str(exc)[:200]}})
            if data != self.current:
                async with self.changed:
                    self.current, self.version = data, self.version + 1
                    self.changed.notify_all()
            # A slow snapshot (many restaurants) is taken less often, so the feed never hogs the process.
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(self.res.config.dashboard_refresh_seconds, 2 * elapsed))
        self._task = None

    async def events(self, request: Request, still_valid):
        """Snapshot events until the client leaves or ``still_valid()`` (checked every key cache period)
        says its credential was revoked or expired."""
        self.listeners += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        recheck = max(self.res.config.key_cache_seconds, 0.5)
        next_check = time.monotonic() + recheck
        seen = 0
        try:
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                if time.monotonic() >= next_check:
                    if not await run_in_threadpool(still_valid):
                        return
                    next_check = time.monotonic() + recheck
                async with self.changed:
                    if self.version == seen:
                        try:
                            await asyncio.wait_for(self.changed.wait(),
                                                   timeout=min(15.0, max(0.1, next_check - time.monotonic())))
                        except asyncio.TimeoutError:
                            yield ": keep-alive\n\n"
                            continue
                    seen, data = self.version, self.current
                yield f"event: snapshot\nid: {seen}\ndata: {data}\n\n"
        finally:
            self.listeners -= 1


def _feed(request: Request) -> DashboardFeed:
    state = request.app.state
    if getattr(state, "dashboard_feed", None) is None:
        state.dashboard_feed = DashboardFeed(state.resources)
    return state.dashboard_feed


@dataclasses.dataclass(frozen=True)
class _Viewer:
    """Who watches the dashboard, and how to check that they still may."""

    principal: Principal
    still_valid: object  # () -> bool, blocking (checks the database)


async def viewer(
    request: Request,
    header_key: Annotated[str | None, Depends(api_key_header)],
    cookie: Annotated[str | None, Depends(session_cookie)],
) -> _Viewer:
    """An API key with ``read`` (header) or the dashboard session cookie."""
    keys = request.app.state.resources.keys
    if "key" in request.query_params:
        raise ApiError(400, "API keys are never accepted in URLs: sign in with POST /dashboard/session "
                            "(the dashboard page does it) or send the X-API-Key header")
    if header_key:
        who = await authenticate(request, header_key, keys.verify, keys.verify_cached)
        if not who.can_read():
            raise forbidden("this key has no 'read' scope")

        def key_still_reads() -> bool:
            current = keys.verify(header_key, fresh=True)
            return current is not None and current.can_read()

        return _Viewer(who, key_still_reads)
    if cookie:
        who = await authenticate(request, cookie, keys.verify_dashboard_token, keys.dashboard_token_cached)
        return _Viewer(who, lambda: keys.verify_dashboard_token(cookie, fresh=True) is not None)
    raise ApiError(401, "sign in: POST /dashboard/session with an API key that has the 'read' scope",
                   headers={"WWW-Authenticate": "Bearer"})


Viewer = Annotated[_Viewer, Depends(viewer)]


class SessionOut(BaseModel):
    expires_at: str
    expires_in: int


@router.get("/dashboard", response_class=HTMLResponse, summary="Live dashboard page (HTML)")
def dashboard_page():
    return HTMLResponse(PAGE)


@router.post("/dashboard/session", response_model=SessionOut, responses=responses(*AUTHENTICATED, 422),
             summary="Sign the dashboard in: sets its session cookie (a short-lived, read-only token)")
async def dashboard_session(
    request: Request, response: Response, res: Res,
    header_key: Annotated[str | None, Depends(api_key_header)],
    cookie: Annotated[str | None, Depends(session_cookie)],
    token: Annotated[str | None, Header(alias="X-Dashboard-Token", description="a dashboard token "
                                        "(e.g. from the link make demo prints)")] = None,
):
    keys = res.keys
    if header_key:
        who = await authenticate(request, header_key, keys.verify, keys.verify_cached)
        if not who.can_read():
            raise forbidden("this key has no 'read' scope")
    elif token or cookie:
        who = await authenticate(request, token or cookie, keys.verify_dashboard_token, keys.dashboard_token_cached)
    else:
        raise ApiError(401, "send an API key with the 'read' scope (X-API-Key), a dashboard token "
                            "(X-Dashboard-Token) or the session cookie", headers={"WWW-Authenticate": "Bearer"})
    row = await run_in_threadpool(keys.lookup, who.key_id)
    if row is None:
        raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    ttl = res.config.dashboard_token_seconds
    session, expires = keys.session_token(who.key_id, row, ttl)
    response.set_cookie(COOKIE, session, max_age=int(ttl), path="/dashboard", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return SessionOut(expires_at=dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat(),
                      expires_in=int(expires - time.time()))


@router.delete("/dashboard/session", status_code=204, summary="Sign the dashboard out (clears its cookie)")
def dashboard_sign_out(response: Response):
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
    response.status_code = 204
    return response


@router.get("/dashboard/snapshot", summary="What the dashboard shows, as JSON", responses=responses(*AUTHENTICATED))
async def dashboard_snapshot(who: Viewer, res: Res):
    return await run_in_threadpool(snapshot, res)


@router.get("/dashboard/events", summary="Server-sent events: a 'snapshot' event whenever the dashboard changes",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, **responses(*AUTHENTICATED)})
async def dashboard_events(request: Request, who: Viewer):
    return StreamingResponse(_feed(request).events(request, who.still_valid), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
