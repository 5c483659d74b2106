"""``/dashboard``: a page for the commercial team, refreshed live over server-sent events.

One feed per process computes a snapshot every ``dashboard_refresh_seconds`` (restaurant status counts
from the Redis hot state, today's offline ranking, today's client volumes) and
pushes it to every open page only when it changed, so the cost does not grow with the number of pages.
The page is plain HTML with a little inline JavaScript (EventSource); no build step.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import pathlib
import time
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from orderflow.api.deps import Caller, Res, forbidden
from orderflow.api.queries import offline_ranking, today
from orderflow.api.resources import Resources

router = APIRouter(tags=["dashboard"])
PAGE = (pathlib.Path(__file__).parent / "dashboard.html").read_text()
TOP_CLIENTS = 20


def status_counts(res: Resources) -> dict:
    """Restaurants online/offline right now, and offline ones per reason, from the Redis hot state.

    Every restaurant the presence pipeline has seen is evaluated (SCAN of its hashes, then statuses in
    chunks of 1,000 ids, one round trip each), with the same rules as ``/restaurants/status``.
    """
    store = res.restaurant_state
    prefix = store.key_prefix
    counts = {"online": 0, "offline": 0}
    reasons: dict[str, int] = {}
    chunk: list[str] = []

    def evaluate(ids: list[str]) -> None:
        for status in store.statuses(ids, now).values():
            counts[status["status"]] = counts.get(status["status"], 0) + 1
            for reason in status["reasons"]:
                reasons[reason] = reasons.get(reason, 0) + 1

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
    day = today(res).isoformat()
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
    return [{**v, "total": str(v["total"])} for v in volumes[:limit]]


def snapshot(res: Resources) -> dict:
    """Everything the page shows; a part whose source fails is replaced by its error, the rest still shows."""
    day = today(res)
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

    async def events(self, request: Request):
        self.listeners += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        seen = 0
        try:
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                async with self.changed:
                    if self.version == seen:
                        try:
                            await asyncio.wait_for(self.changed.wait(), timeout=15)
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


@router.get("/dashboard", response_class=HTMLResponse, summary="Live dashboard page (HTML)")
def dashboard_page():
    return HTMLResponse(PAGE)


@router.get("/dashboard/snapshot", summary="What the dashboard shows, as JSON")
async def dashboard_snapshot(who: Caller, res: Res):
    if not who.can_read():
        raise forbidden("this key has no 'read' scope")
    return await run_in_threadpool(snapshot, res)


@router.get("/dashboard/events", summary="Server-sent events: a 'snapshot' event whenever the dashboard changes",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 401: {}, 403: {}})
async def dashboard_events(request: Request,
                           key: Annotated[str, Query(description="API key with 'read' scope (EventSource sends no headers)")],
                           res: Res):
    who = await run_in_threadpool(res.keys.verify, key)
    if who is None:
        raise HTTPException(401, "invalid or revoked API key")
    if not who.can_read():
        raise forbidden("this key has no 'read' scope")
    return StreamingResponse(_feed(request).events(request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
