"""Contract tests of the query endpoints against the real stack, over data seeded in the owners' tables.

The tables belong to the orders and presence pipelines (their migrations create them in the module's
database); the Redis hot state is written through the presence pipeline's own ``RestaurantStateStore``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
import urllib.parse
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orderflow.api.queries import ID_CHARACTER
from orderflow.clients import aws_client
from orderflow.model.presence import AvailabilityChange

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def api_settings(api_settings):
    """The API tests' settings, so that no answer depends on when the module runs: opening hours from 3 hours
    ago to 3 hours ahead (local time, may cross midnight), and an exchange time zone whose date is not UTC's
    now (UTC+14 late in the UTC day, UTC-12 early), so "today" taken in the wrong zone shows."""
    now = dt.datetime.now(ZoneInfo(api_settings.presence_timezone))
    hours = f"{now - dt.timedelta(hours=3):%H:%M}-{now + dt.timedelta(hours=3):%H:%M}"
    exchange = "Pacific/Kiritimati" if dt.datetime.now(UTC).hour >= 12 else "Etc/GMT+12"
    return dataclasses.replace(api_settings, opening_hours=hours, exchange_timezone=exchange)


@pytest.fixture(scope="module")
def seeded(api_settings):
    with psycopg.connect(api_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (order_id, client_token, asset, quantity, pricing_code, price, total, event_time,"
            " trade_day, source_format) VALUES"
            " ('o-1', 'alice', 'PETR4', 300, 'PC-PETR4', 38.123456, 11437.0368, '2026-03-02T13:00:00Z', '2026-03-02', 'JSON'),"
            " ('o-2', 'bob', 'VALE3', 10, 'PC-VALE3', 61.5, 615.0, '2026-03-02T14:00:00Z', '2026-03-02', 'CSV'),"
            # the pipeline's own id for an order that came without one, and a Kafka producer's token and id
            " ('ordem-ativo-x/3/17#0', 'bob', 'VALE3', 1, 'PC-VALE3', 61.5, 61.5, '2026-03-02T14:00:00Z', '2026-03-02', 'JSON'),"
            " ('pedido ç/1', 'loja/são paulo', 'VALE3', 1, 'PC-VALE3', 61.5, 61.5, '2026-03-02T14:00:00Z', '2026-03-02', 'JSON')"
        )
        conn.execute(
            "INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold, fired_at) VALUES"
            " ('big-client', 'alice', '2026-03-02T13:00:00Z', '2026-03-02T13:05:00Z', 200000.50, 100000, '2026-03-02T13:05:01Z'),"
            " ('big-market', '*', '2026-03-02T13:00:00Z', '2026-03-02T13:05:00Z', 900000, 500000, '2026-03-02T13:05:02Z'),"
            " ('big-client', 'bob', '2026-02-01T13:00:00Z', '2026-02-01T13:05:00Z', 150000, 100000, '2026-02-01T13:05:01Z')"
        )
        conn.execute(
            "INSERT INTO restaurant_unavailability (restaurant_id, schedule_id, kind, reason, starts_at, ends_at,"
            " created_at, cancelled_at) VALUES"
            " ('r-10', 's-old', 'schedule', 'HOLIDAYS', '2026-01-01T00:00Z', '2026-01-02T00:00Z', '2025-12-20T10:00Z', NULL),"
            " ('r-10', 's-new', 'schedule', 'OVERLOADED_OFFLINE_ORDERS', '2026-03-01T18:00Z', NULL, '2026-03-01T17:00Z', '2026-03-01T19:00Z'),"
            " ('r-11', 'e-1', 'status', 'CONNECTION_ISSUES', '2026-03-01T18:00Z', NULL, '2026-03-01T18:00Z', NULL)"
        )
        conn.execute(
            "INSERT INTO restaurant_offline_daily (restaurant_id, day, unexplained_offline_seconds) VALUES"
            " ('r-10', '2026-03-01', 600), ('r-10', '2026-03-02', 900),"
            " ('r-11', '2026-03-01', 1200), ('r-12', '2026-03-02', 30), ('r-13', '2026-03-02', 0),"
            " ('r-14', '2026-02-01', 99999)"
        )
    aws_client(api_settings, "dynamodb").put_item(TableName=api_settings.client_volume_table, Item={
        "client_token": {"S": "alice"}, "day": {"S": "2026-03-02"}, "total": {"N": "11437.0368"},
        "order_count": {"N": "1"}, "updated_at": {"S": "2026-03-02T13:00:01Z"}})
    return api_settings


def test_order_by_id(seeded, reader):
    resp = reader.get("/orders/o-1")
    assert resp.status_code == 200, resp.text
    order = resp.json()
    assert order["client_token"] == "alice" and order["quantity"] == 300
    assert Decimal(order["total"]) == Decimal("11437.0368") and Decimal(order["price"]) == Decimal("38.123456")
    assert order["trade_day"] == "2026-03-02"
    assert dt.datetime.fromisoformat(order["event_time"]) == dt.datetime(2026, 3, 2, 13, tzinfo=UTC)
    resp = reader.get("/orders/nope")
    assert resp.status_code == 404 and "nope" in resp.json()["detail"]


def test_every_stored_id_can_be_asked_for_url_encoded(seeded, reader):
    for order_id in ("ordem-ativo-x/3/17#0", "pedido ç/1"):
        resp = reader.get("/orders/" + urllib.parse.quote(order_id, safe=""))
        assert resp.status_code == 200, resp.text
        assert resp.json()["order_id"] == order_id
    resp = reader.get("/clients/" + urllib.parse.quote("loja/são paulo", safe="") + "/volume")
    assert resp.status_code == 200 and resp.json()["client_token"] == "loja/são paulo"


def test_a_client_key_reads_only_its_orders(seeded, api, anonymous):
    with api.client(api.key("client:alice")) as alice:
        assert alice.get("/orders/o-1").status_code == 200
        # Another client's order and a missing one answer alike: a client cannot tell whether it exists.
        other, missing = alice.get("/orders/o-2"), alice.get("/orders/o-404")
        assert other.status_code == missing.status_code == 404
        assert other.json()["detail"].replace("o-2", "ID") == missing.json()["detail"].replace("o-404", "ID")
    with api.client(api.key("ingest")) as ingest_only:
        assert ingest_only.get("/orders/o-1").status_code == 403
    assert anonymous.get("/orders/o-1").status_code == 401


def test_client_volume_from_dynamodb(seeded, api, reader):
    resp = reader.get("/clients/alice/volume", params={"day": "2026-03-02"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"client_token": "alice", "day": "2026-03-02", "total": "11437.0368", "order_count": 1,
                           "updated_at": "2026-03-02T13:00:01Z"}
    empty = reader.get("/clients/alice/volume", params={"day": "2026-03-03"}).json()
    assert (empty["total"], empty["order_count"]) == ("0", 0)
    # Without a day: today in the exchange's time zone (volumes seeded for it and the next day; the day may
    # turn during the request).
    before = dt.datetime.now(ZoneInfo(seeded.exchange_timezone)).date()
    for day, total in ((before, "7.5"), (before + dt.timedelta(days=1), "8.5")):
        aws_client(seeded, "dynamodb").put_item(TableName=seeded.client_volume_table, Item={
            "client_token": {"S": "alice"}, "day": {"S": str(day)}, "total": {"N": total},
            "order_count": {"N": "3"}, "updated_at": {"S": "2026-03-02T13:00:01Z"}})
    today = reader.get("/clients/alice/volume").json()
    after = dt.datetime.now(ZoneInfo(seeded.exchange_timezone)).date()
    assert (today["day"], today["total"]) in {(str(before), "7.5"), (str(after), "7.5" if after == before else "8.5")}
    resp = reader.get("/clients/alice/volume", params={"day": "2026-13-40"})
    assert resp.status_code == 422 and "day" in resp.json()["detail"]
    with api.client(api.key("client:alice")) as alice:
        assert alice.get("/clients/alice/volume", params={"day": "2026-03-02"}).status_code == 200
        resp = alice.get("/clients/bob/volume")
        assert resp.status_code == 403 and "bob" in resp.json()["detail"]


def test_alarms_since(seeded, api, reader):
    resp = reader.get("/alarms", params={"since": "2026-03-01T00:00:00Z"})
    assert resp.status_code == 200, resp.text
    alarms = resp.json()["alarms"]
    assert [(a["rule_id"], a["scope"]) for a in alarms] == [("big-market", "*"), ("big-client", "alice")]
    assert (alarms[1]["total"], alarms[1]["threshold"]) == ("200000.5", "100000")  # one money format
    assert len(reader.get("/alarms", params={"since": "2026-01-01T00:00:00Z"}).json()["alarms"]) == 3
    assert reader.get("/alarms", params={"since": "2026-01-01T00:00:00Z", "limit": 1}).json()["alarms"][0]["rule_id"] == "big-market"
    resp = reader.get("/alarms", params={"since": "2026-03-01T00:00:00"})
    assert resp.status_code == 422 and "since" in resp.json()["detail"]
    assert reader.get("/alarms", params={"limit": 0}).status_code == 422
    with api.client(api.key("client:bob")) as bob:
        mine = bob.get("/alarms", params={"since": "2026-01-01T00:00:00Z"}).json()["alarms"]
        assert [(a["rule_id"], a["scope"]) for a in mine] == [("big-client", "bob")]
    with api.client(api.key("restaurant:r-1")) as restaurant:
        assert restaurant.get("/alarms").status_code == 403


def test_restaurant_statuses_in_one_call(api, reader, state_store):
    now_ms = int(time.time() * 1000)
    state_store.record_keepalives({"q-online": now_ms, "q-down": now_ms})
    state_store.apply_changes([AvailabilityChange("e-1", "q-down", "SET_STATUS", "UNAVAILABLE", None,
                                                  "LACK_OF_DELIVERY_STAFF", None, None, now_ms)])
    resp = reader.get("/restaurants/status", params={"ids": "q-online,q-down,q-unknown"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 3
    down = body["restaurants"]["q-down"]
    assert down["status"] == "offline" and "unavailable" in down["reasons"]
    assert down["availability"]["reason"] == "LACK_OF_DELIVERY_STAFF"
    assert down["reasons"] == ["unavailable"]
    online = body["restaurants"]["q-online"]
    assert (online["status"], online["reasons"]) == ("online", [])  # open now (the module's opening hours)
    assert online["last_keepalive"] == dt.datetime.fromtimestamp(now_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    unknown = body["restaurants"]["q-unknown"]
    assert (unknown["status"], unknown["reasons"], unknown["last_keepalive"]) == ("offline", ["no_keepalive"], None)


def test_status_id_count_limit(api, reader, api_config):
    ids = ",".join(f"r-{i}" for i in range(api_config.max_ids))
    resp = reader.get("/restaurants/status", params={"ids": ids})
    assert resp.status_code == 200 and resp.json()["count"] == api_config.max_ids
    resp = reader.get("/restaurants/status", params={"ids": ids + ",one-more"})
    assert resp.status_code == 422 and f"at most {api_config.max_ids}" in resp.json()["detail"]
    assert reader.get("/restaurants/status", params={"ids": " , ,"}).status_code == 422
    # Blanks Python strips but a schema regex may not count as space (Schemathesis sent `ids=%0B`): refused by
    # the schema the OpenAPI document publishes, so a client generated from it knows.
    for blank in ("\x0b", "\x1c,\u3000", "\x85"):
        resp = reader.get("/restaurants/status", params={"ids": blank})
        assert resp.status_code == 422 and resp.json()["detail"].startswith("query.ids: "), (blank, resp.text)
    assert reader.get("/restaurants/status", params={"ids": "\x0br-1\x1c,"}).json()["count"] == 1
    spec = reader.get("/openapi.json").json()["paths"]["/restaurants/status"]["get"]["parameters"]
    assert next(p for p in spec if p["name"] == "ids")["schema"]["pattern"] == ID_CHARACTER
    resp = reader.get("/restaurants/status")
    assert resp.status_code == 422 and "ids: Field required" in resp.json()["detail"]


def test_a_restaurant_key_reads_only_its_restaurant(api):
    with api.client(api.key("restaurant:r-10")) as own:
        assert own.get("/restaurants/status", params={"ids": "r-10"}).status_code == 200
        resp = own.get("/restaurants/status", params={"ids": "r-10,r-11"})
        assert resp.status_code == 403 and "r-11" in resp.json()["detail"]
        assert own.get("/restaurants/r-10/unavailability").status_code == 200
        assert own.get("/restaurants/r-11/unavailability").status_code == 403
        assert own.get("/reports/offline-ranking").status_code == 403


def test_unavailability_history_newest_first(seeded, reader):
    resp = reader.get("/restaurants/r-10/unavailability")
    assert resp.status_code == 200, resp.text
    history = resp.json()["history"]
    assert [h["schedule_id"] for h in history] == ["s-new", "s-old"]
    assert history[0]["cancelled_at"] is not None and history[0]["ends_at"] is None
    assert reader.get("/restaurants/r-99/unavailability").json()["history"] == []
    assert reader.get("/restaurants/bad id!/unavailability").status_code == 422


def test_offline_ranking(seeded, reader):
    resp = reader.get("/reports/offline-ranking", params={"from": "2026-03-01", "to": "2026-03-02"})
    assert resp.status_code == 200, resp.text
    ranking = resp.json()["ranking"]
    assert [(e["rank"], e["restaurant_id"], e["unexplained_offline_seconds"]) for e in ranking] == [
        (1, "r-10", 1500), (2, "r-11", 1200), (3, "r-12", 30), (4, "r-13", 0)]  # never offline: ranked too
    one_day = reader.get("/reports/offline-ranking", params={"from": "2026-03-02", "limit": 1})
    assert one_day.json()["to_day"] == "2026-03-02"  # to defaults to from
    assert [e["restaurant_id"] for e in one_day.json()["ranking"]] == ["r-10"]
    # A past day alone, without `from`: that day (not a range ending before today's start, refused).
    only_to = reader.get("/reports/offline-ranking", params={"to": "2026-03-02", "limit": 1})
    assert only_to.status_code == 200, only_to.text
    assert (only_to.json()["from_day"], only_to.json()["to_day"]) == ("2026-03-02", "2026-03-02")
    resp = reader.get("/reports/offline-ranking", params={"from": "2026-03-02", "to": "2026-03-01"})
    assert resp.status_code == 422 and "before" in resp.json()["detail"]
    resp = reader.get("/reports/offline-ranking", params={"from": "2024-01-01", "to": "2026-03-01"})
    assert resp.status_code == 422 and "366" in resp.json()["detail"]
    assert reader.get("/reports/offline-ranking", params={"limit": 5000}).status_code == 422


def test_a_revoked_key_is_refused(api, seeded):
    from orderflow.api.auth import revoke_key

    key = api.key("read")
    with api.client(key) as client:
        assert client.get("/orders/o-1").status_code == 200
        assert revoke_key(api.settings.postgres_dsn, key.split("_")[1])
        resp = client.get("/orders/o-1")
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]


def _pages(client, path: str, items: str, **params) -> tuple[list[list[dict]], list]:
    """Every page of a list endpoint, following ``next`` until it is null: (the pages, the answers' ``next``)."""
    pages, nexts, after = [], [], None
    while True:
        resp = client.get(path, params={**params, **({"after": after} if after else {})})
        assert resp.status_code == 200, resp.text
        pages.append(resp.json()[items])
        nexts.append(after := resp.json()["next"])
        if after is None:
            return pages, nexts
        assert len(pages) < 20, "next never null"


@pytest.fixture(scope="module")
def paged(seeded):
    """Alarms and a restaurant's history with ties in their sort keys (same fired_at, same created_at, no
    created_at at all), for paging."""
    with psycopg.connect(seeded.postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold, fired_at) VALUES"
            " ('page-a', '*', '2025-06-01T10:00Z', '2025-06-01T10:05Z', 2, 1, '2025-06-01T10:05:00Z'),"
            " ('page-a', '*', '2025-06-01T10:05Z', '2025-06-01T10:10Z', 2, 1, '2025-06-01T10:05:00Z'),"
            " ('page-a', 'x', '2025-06-01T10:00Z', '2025-06-01T10:05Z', 2, 1, '2025-06-01T10:05:00Z'),"
            " ('page-b', '*', '2025-06-01T10:00Z', '2025-06-01T10:05Z', 2, 1, '2025-06-01T10:05:00Z'),"
            " ('page-c', '*', '2025-06-01T09:00Z', '2025-06-01T09:05Z', 2, 1, '2025-06-01T09:05:00.000001Z'),"
            " ('page-c', '*', '2025-06-01T09:05Z', '2025-06-01T09:10Z', 2, 1, '2025-06-01T09:05:00Z'),"
            " ('page-d', '*', '2025-06-02T00:00Z', '2025-06-02T00:05Z', 2, 1, '2025-06-02T00:00:01Z')")
        conn.execute(
            "INSERT INTO restaurant_unavailability (restaurant_id, schedule_id, kind, reason, starts_at, ends_at,"
            " created_at, cancelled_at) VALUES"
            " ('r-page', 'u-3', 'schedule', 'HOLIDAYS', NULL, NULL, '2026-03-03T10:00Z', NULL),"
            " ('r-page', 'u-1', 'schedule', 'HOLIDAYS', NULL, NULL, '2026-03-01T10:00Z', NULL),"
            " ('r-page', 'u-2b', 'schedule', 'HOLIDAYS', NULL, NULL, '2026-03-02T10:00Z', NULL),"
            " ('r-page', 'u-2a', 'schedule', 'HOLIDAYS', NULL, NULL, '2026-03-02T10:00Z', NULL),"
            " ('r-page', 'u-2c', 'schedule', 'HOLIDAYS', NULL, NULL, '2026-03-02T10:00:00.000001Z', NULL),"
            " ('r-page', 'n-2', 'schedule', NULL, NULL, NULL, NULL, '2026-03-01T00:00Z'),"
            " ('r-page', 'n-1', 'schedule', NULL, NULL, NULL, NULL, '2026-03-01T00:00Z')")
    return seeded


# Newest first, ties by rule, scope and window (alarms) or by schedule id (history), those without a time last:
# written by hand from the rows inserted (the three alarms of ``seeded`` first).
ALARMS_IN_ORDER = [("big-market", "*", "2026-03-02T13:00:00+00:00"), ("big-client", "alice", "2026-03-02T13:00:00+00:00"),
                   ("big-client", "bob", "2026-02-01T13:00:00+00:00"), ("page-d", "*", "2025-06-02T00:00:00+00:00"),
                   ("page-a", "*", "2025-06-01T10:00:00+00:00"), ("page-a", "*", "2025-06-01T10:05:00+00:00"),
                   ("page-a", "x", "2025-06-01T10:00:00+00:00"), ("page-b", "*", "2025-06-01T10:00:00+00:00"),
                   ("page-c", "*", "2025-06-01T09:00:00+00:00"), ("page-c", "*", "2025-06-01T09:05:00+00:00")]
HISTORY_IN_ORDER = ["u-3", "u-2c", "u-2a", "u-2b", "u-1", "n-1", "n-2"]


@pytest.mark.parametrize("limit", [1, 3, 9, 10, 11])
def test_every_alarm_is_read_page_by_page_beyond_the_limit(paged, reader, limit):
    pages, nexts = _pages(reader, "/alarms", "alarms", since="2025-06-01T00:00:00Z", limit=limit)
    assert [(a["rule_id"], a["scope"], dt.datetime.fromisoformat(a["window_start"]).isoformat())
            for page in pages for a in page] == ALARMS_IN_ORDER
    assert [len(page) for page in pages] == [limit] * (len(ALARMS_IN_ORDER) // limit) + (
        [len(ALARMS_IN_ORDER) % limit] if len(ALARMS_IN_ORDER) % limit else [])
    assert nexts[-1] is None and None not in nexts[:-1]


@pytest.mark.parametrize("limit", [1, 2, 4, 7])
def test_a_restaurants_whole_history_is_read_page_by_page_beyond_the_limit(paged, reader, limit):
    pages, _ = _pages(reader, "/restaurants/r-page/unavailability", "history", limit=limit)
    assert [h["schedule_id"] for page in pages for h in page] == HISTORY_IN_ORDER
    assert all(len(page) == limit for page in pages[:-1]) and 1 <= len(pages[-1]) <= limit


def test_a_cursor_not_given_by_the_endpoint_is_refused(paged, reader):
    alarms_next = reader.get("/alarms", params={"since": "2025-06-01T00:00:00Z", "limit": 1}).json()["next"]
    history_next = reader.get("/restaurants/r-page/unavailability", params={"limit": 1}).json()["next"]
    for path, after in [("/alarms", "x"), ("/alarms", history_next), ("/alarms", "bm90IGpzb24"),
                        ("/restaurants/r-page/unavailability", alarms_next), ("/alarms", "a b")]:
        resp = reader.get(path, params={"after": after})
        assert resp.status_code == 422, (path, after, resp.text)
