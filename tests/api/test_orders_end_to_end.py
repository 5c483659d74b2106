"""Orders in through the API, through the bounded orders pipeline, and back out through the API: the ids the
API mints can be fetched, each order keeps the input model it was sent in, and every amount is in one format."""
from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from decimal import Decimal

import pytest

from orderflow import refdata
from orderflow.model import sample_assets
from orderflow.pipelines import orders as orders_pipeline


@pytest.fixture(scope="module")
def through_the_pipeline(api, api_settings):
    """Posts orders in three models and one through the REST Proxy route, then runs the bounded pipeline."""
    today = dt.datetime.now(zoneinfo.ZoneInfo(api_settings.exchange_timezone)).date()
    refdata.load_reference_data(api_settings, today, sample_assets.sample_prices(today))
    sent = {}
    with api.client(api.key("ingest")) as ingester:
        resp = ingester.post("/orders", json={"ativo": "WEGE3", "quantidade": 100, "token": "e2e-json"})
        sent["JSON"] = resp.json()["records"][0]["order_id"]
        resp = ingester.post("/orders", content="PETR4,3,e2e-csv\n", headers={"Content-Type": "text/csv"})
        sent["CSV"] = resp.json()["records"][0]["order_id"]
        resp = ingester.post("/orders", content=json.dumps({"records": [{"value": {
            "ativo": "VALE3", "quantidade": 7, "token": "e2e-rest", "order_id": "e2e.rest:1"}}]}),
            headers={"Content-Type": "application/vnd.kafka.json.v2+json"})
        sent["REST_PROXY"] = resp.json()["records"][0]["order_id"]
        resp = ingester.post(f"/topics/{api_settings.topics.orders}", content=json.dumps({"records": [{"value": {
            "ativo": "ITUB4", "quantidade": 2, "token": "e2e-v2"}}]}),
            headers={"Content-Type": "application/vnd.kafka.json.v2+json"})
        assert resp.status_code == 200, resp.text
    orders_pipeline.run(["--bounded", "--orders_start=earliest", f"--trade_days={today}", "--orders_batch_size=100"],
                        settings=api_settings)
    return today, sent


def test_minted_and_client_ids_are_fetched_as_answered(through_the_pipeline, reader):
    _, sent = through_the_pipeline
    assert sent["REST_PROXY"] == "e2e.rest:1"
    for order_id in sent.values():
        resp = reader.get(f"/orders/{order_id}")
        assert resp.status_code == 200, (order_id, resp.text)
        assert resp.json()["order_id"] == order_id


def test_orders_keep_their_input_model(through_the_pipeline, reader):
    _, sent = through_the_pipeline
    assert {model: reader.get(f"/orders/{order_id}").json()["source_format"] for model, order_id in sent.items()} == {
        "JSON": "JSON", "CSV": "CSV", "REST_PROXY": "REST_PROXY"}


def test_one_money_format_for_order_totals_and_volumes(through_the_pipeline, reader):
    today, sent = through_the_pipeline
    order = reader.get(f"/orders/{sent['JSON']}").json()
    volume = reader.get("/clients/e2e-json/volume", params={"day": today.isoformat()}).json()
    assert volume["order_count"] == 1
    assert Decimal(order["total"]) == Decimal(order["price"]) * 100 == Decimal(volume["total"])
    assert order["total"] == volume["total"]  # the same amount is written the same way
    for amount in (order["total"], order["price"], volume["total"]):
        assert "E" not in amount and not (("." in amount) and amount.endswith("0")), amount
