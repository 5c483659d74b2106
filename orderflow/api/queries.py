"""Query endpoints: orders and alarms (PostgreSQL), client volume (DynamoDB), restaurant status (Redis,
one round trip for up to ``max_ids`` ids), unavailability history and the offline ranking (PostgreSQL).

Money is returned as decimal strings (never floats) in one format, ``money()``; times as ISO-8601 with
their offset.
"""
from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field

from orderflow.api.contract import Day, Timestamp
from orderflow.api.deps import Caller, Res, forbidden
from orderflow.api.errors import AUTHENTICATED, responses
from orderflow.api.ingest import RestaurantId
from orderflow.api.resources import Resources
from orderflow.model.money import money
from orderflow.model.pricing import today

__all__ = ["AlarmOut", "ID_CHARACTER", "offline_ranking"]

router = APIRouter(tags=["query"], responses=responses(*AUTHENTICATED, 422))

# What the orders pipeline may have stored (any text without control characters, up to 256 bytes: a
# Kafka producer's token or id, or the pipeline's own id <topic>/<partition>/<offset>#<n>) can be asked
# for: URL-encode '/' as %2F and '#' as %23. What the API accepts is narrower (contract.TOKEN, ORDER_ID).
STORED_TEXT = r"^[^\x00-\x1f\x7f-\x9f]+$"
# A list of ids must hold one character of an id: neither the separator nor what str.strip() removes (Unicode
# white space, and \x1c-\x1f, which Python strips and the validator's regex engine does not count as space).
# Schemathesis found the gap: `ids=%0B` passed the schema, then was refused for holding no id.
ID_CHARACTER = r"[^,\s\x1c-\x1f]"
Token = Path(min_length=1, max_length=256, pattern=STORED_TEXT, description="client token (URL-encode '/')")
OrderIdPath = Path(min_length=1, max_length=256, pattern=STORED_TEXT,
                   description="the order's id (URL-encode '/' and '#')",
                   examples=["api-5f0c6e9d4b2a4d7c9e1f3a5b7c9d1e3f-0"])


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


# Paging of the list endpoints (keyset, not offset: a page is where the previous one ended even while rows are
# added): a page that may not be the last carries ``next``, an opaque cursor (base64url of the sort key of its
# last row), which the caller sends back as ``after``; ``next`` is null on the last page.
After = Query(max_length=2048, pattern=r"^[A-Za-z0-9_-]+$",
              description="the `next` of the previous page (same other parameters): the page after it")


def _cursor(*key) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def _after(cursor: str, kinds: str) -> list:
    """The sort key a cursor holds, one value per letter of ``kinds``: ``t`` a time with its offset, ``n`` the
    same or null, ``s`` a string; 422 for anything that is not a cursor this endpoint gave."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("not a cursor of this list")
        key: list = []
        for value, kind in zip(values, kinds, strict=True):
            if kind == "n" and value is None:
                key.append(None)
            elif not isinstance(value, str):
                raise ValueError("not a cursor of this list")
            elif kind == "s":
                key.append(value)
            else:
                moment = dt.datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    raise ValueError("a time without its offset")
                key.append(moment)
        return key
    except ValueError as exc:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        raise HTTPException(422, f"after: not a cursor of this list ({exc})") from None


class OrderOut(BaseModel):
    order_id: str
    client_token: str
    asset: str
    quantity: int
    pricing_code: str | None
    price: str | None
    total: str | None
    event_time: str | None
    trade_day: str | None
    source_format: str | None


@router.get("/orders/{order_id:path}", response_model=OrderOut, summary="A priced order as stored",
            responses=responses(404))
def get_order(order_id: Annotated[str, OrderIdPath], who: Caller, res: Res):
    if not who.can_read() and not who.clients:
        raise forbidden("this key has neither 'read' nor a 'client:<token>' scope")
    sql = ("SELECT order_id, client_token, asset, quantity, pricing_code, price, total, event_time, trade_day,"
           " source_format FROM orders WHERE order_id = %s")
    params: list = [order_id]
    if not who.can_read():  # another client's order is "not found", exactly as a missing one
        sql += " AND client_token = ANY(%s)"
        params.append(sorted(who.clients))
    with res.pg.connection() as conn:
        row = conn.execute(sql, params).fetchone()
    if row is None:
        raise HTTPException(404, f"order {order_id!r} not found (it may not be processed yet)")
    return OrderOut(order_id=row[0], client_token=row[1], asset=row[2], quantity=row[3], pricing_code=row[4],
                    price=money(row[5]), total=money(row[6]), event_time=_iso(row[7]),
                    trade_day=_iso(row[8]), source_format=row[9])


class VolumeOut(BaseModel):
    client_token: str
    day: str
    total: str
    order_count: int
    updated_at: str | None


@router.get("/clients/{token:path}/volume", response_model=VolumeOut,
            summary="A client's financial volume of one day, in near real time (DynamoDB)")
def get_volume(token: Annotated[str, Token], who: Caller, res: Res,
               day: Annotated[Day | None, Query(description="YYYY-MM-DD, default today (exchange time zone)")] = None):
    if not who.can_read_client(token):
        raise forbidden(f"this key may not read client {token!r}")
    day = day or today(res.settings)
    item = res.dynamodb.get_item(
        TableName=res.settings.client_volume_table,
        Key={"client_token": {"S": token}, "day": {"S": day.isoformat()}},
        ConsistentRead=True,
    ).get("Item")
    if not item:
        return VolumeOut(client_token=token, day=day.isoformat(), total=money(0), order_count=0, updated_at=None)
    return VolumeOut(client_token=token, day=day.isoformat(), total=money(item["total"]["N"]),
                     order_count=int(Decimal(item.get("order_count", {"N": "0"})["N"])),
                     updated_at=item.get("updated_at", {}).get("S"))


class AlarmOut(BaseModel):
    rule_id: str
    scope: str
    window_start: str
    window_end: str
    total: str
    threshold: str
    fired_at: str | None


class AlarmsOut(BaseModel):
    since: str
    alarms: list[AlarmOut]
    next: str | None = Field(description="send as `after` (with the same `since` and `limit`) for the next page; "
                                          "null on the last page")


@router.get("/alarms", response_model=AlarmsOut, summary="Alarms fired since a moment, newest first, page by page")
def get_alarms(who: Caller, res: Res,
               since: Annotated[Timestamp | None, Query(description="ISO-8601 with offset; default 24 h ago")] = None,
               limit: Annotated[int, Query(ge=1, le=1000, description="alarms per page")] = 100,
               after: Annotated[str | None, After] = None):
    if not who.can_read() and not who.clients:
        raise forbidden("this key has neither 'read' nor a 'client:<token>' scope")
    since = since or (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    sql = ("SELECT rule_id, scope, window_start, window_end, total, threshold, fired_at FROM alarms"
           " WHERE fired_at >= %s")
    params: list = [since]
    if not who.can_read():  # a client's key sees the alarms about its own volume only
        sql += " AND scope = ANY(%s)"
        params.append(sorted(who.clients))
    if after is not None:  # the rows after the previous page's last, in this order (the key is unique)
        fired_at, rule_id, scope, window_start = _after(after, "tsst")
        sql += " AND (fired_at < %s OR (fired_at = %s AND (rule_id, scope, window_start) > (%s, %s, %s)))"
        params += [fired_at, fired_at, rule_id, scope, window_start]
    sql += " ORDER BY fired_at DESC, rule_id, scope, window_start LIMIT %s"
    params.append(limit + 1)  # one more: whether a next page exists
    with res.pg.connection() as conn:
        rows = conn.execute(sql, params).fetchall()
    page = rows[:limit]
    return AlarmsOut(since=since.isoformat(), alarms=[
        AlarmOut(rule_id=r[0], scope=r[1], window_start=_iso(r[2]), window_end=_iso(r[3]), total=money(r[4]),
                 threshold=money(r[5]), fired_at=_iso(r[6])) for r in page
    ], next=_cursor(_iso(page[-1][6]), page[-1][0], page[-1][1], _iso(page[-1][2])) if len(rows) > limit else None)


class StatusesOut(BaseModel):
    count: int
    restaurants: dict[str, dict]


@router.get("/restaurants/status", response_model=StatusesOut,
            summary="Online/offline and why, for up to 1,000 restaurants in one Redis round trip")
def get_statuses(ids: Annotated[str, Query(min_length=1, pattern=ID_CHARACTER,
                                  description="comma-separated restaurant ids (at least one: blanks and empty "
                                              "entries are ignored)",
                                  examples=["rest-00001,rest-00002"])],
                 who: Caller, res: Res):
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not wanted:
        raise HTTPException(422, "ids: give at least one restaurant id (comma-separated)")
    if len(wanted) > res.config.max_ids:
        raise HTTPException(422, f"ids: {len(wanted)} ids given, at most {res.config.max_ids} per request")
    if not who.can_read():
        outside = [i for i in wanted if i not in who.restaurants]
        if outside:
            raise forbidden(f"this key may not read restaurant(s) {', '.join(outside[:10])}")
    statuses = res.restaurant_state.statuses(wanted)
    # Serialised directly (the shape is StatusesOut): validating 1,000 nested dicts again costs more
    # than the Redis round trip.
    return Response(orjson.dumps({"count": len(statuses), "restaurants": statuses}), media_type="application/json")


class UnavailabilityOut(BaseModel):
    schedule_id: str
    kind: str
    reason: str | None
    starts_at: str | None
    ends_at: str | None
    created_at: str | None
    cancelled_at: str | None


class UnavailabilityHistoryOut(BaseModel):
    restaurant_id: str
    history: list[UnavailabilityOut]
    next: str | None = Field(description="send as `after` (with the same `limit`) for the next page; null on the "
                                          "last page")


@router.get("/restaurants/{restaurant_id}/unavailability", response_model=UnavailabilityHistoryOut,
            summary="A restaurant's unavailability history, newest first, page by page")
def get_unavailability(restaurant_id: Annotated[str, RestaurantId], who: Caller, res: Res,
                       limit: Annotated[int, Query(ge=1, le=1000, description="entries per page")] = 100,
                       after: Annotated[str | None, After] = None):
    if not who.can_read_restaurant(restaurant_id):
        raise forbidden(f"this key may not read restaurant {restaurant_id!r}")
    sql = ("SELECT schedule_id, kind, reason, starts_at, ends_at, created_at, cancelled_at"
           " FROM restaurant_unavailability WHERE restaurant_id = %s")
    params: list = [restaurant_id]
    if after is not None:  # the rows after the previous page's last: newer first, those without a time last
        created_at, schedule_id = _after(after, "ns")
        if created_at is None:
            sql += " AND created_at IS NULL AND schedule_id > %s"
            params.append(schedule_id)
        else:
            sql += " AND (created_at < %s OR (created_at = %s AND schedule_id > %s) OR created_at IS NULL)"
            params += [created_at, created_at, schedule_id]
    sql += " ORDER BY created_at DESC NULLS LAST, schedule_id LIMIT %s"
    params.append(limit + 1)  # one more: whether a next page exists
    with res.pg.connection() as conn:
        rows = conn.execute(sql, params).fetchall()
    page = rows[:limit]
    return UnavailabilityHistoryOut(restaurant_id=restaurant_id, history=[
        UnavailabilityOut(schedule_id=r[0], kind=r[1], reason=r[2], starts_at=_iso(r[3]), ends_at=_iso(r[4]),
                          created_at=_iso(r[5]), cancelled_at=_iso(r[6])) for r in page
    ], next=_cursor(_iso(page[-1][5]), page[-1][0]) if len(rows) > limit else None)


class RankingEntry(BaseModel):
    rank: int
    restaurant_id: str
    unexplained_offline_seconds: int


class RankingOut(BaseModel):
    from_day: str
    to_day: str
    ranking: list[RankingEntry]


def offline_ranking(res: Resources, first: dt.date, last: dt.date, limit: int) -> list[RankingEntry]:
    from orderflow.io.presence_queries import offline_ranking as ranking_rows  # the one ranking query

    with res.pg.connection() as conn:
        rows = ranking_rows(conn, first, last, limit)
    return [RankingEntry(rank=n, restaurant_id=r[0], unexplained_offline_seconds=int(r[1]))
            for n, r in enumerate(rows, start=1)]


@router.get("/reports/offline-ranking", response_model=RankingOut,
            summary="Restaurants ranked by unexplained offline time over a range of days")
def get_offline_ranking(who: Caller, res: Res,
                        first: Annotated[Day | None, Query(alias="from", description="first day, default: `to`, "
                                                                           "else today")] = None,
                        last: Annotated[Day | None, Query(alias="to", description="last day (inclusive), default: from")] = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 10):
    if not who.can_read():
        raise forbidden("this key has no 'read' scope")
    first = first or last or today(res.settings)
    last = last or first
    if last < first:
        raise HTTPException(422, f"to ({last}) is before from ({first})")
    if (last - first).days > 366:
        raise HTTPException(422, "the range may span at most 366 days")
    return RankingOut(from_day=first.isoformat(), to_day=last.isoformat(),
                      ranking=offline_ranking(res, first, last, limit))
