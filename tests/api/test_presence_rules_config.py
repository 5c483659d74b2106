"""The API answers with the presence rules the pipeline applies: one configuration (environment) read by both.

The module's settings carry non-default rules: opening hours around the current time in another time
zone, a 10-minute keep-alive timeout and a key prefix of its own. Keep-alives go in through the API and
Kafka, the bounded presence pipeline writes the hot state, and the API's status answers follow those rules.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from zoneinfo import ZoneInfo

import pytest
import redis
from confluent_kafka import Producer

from orderflow.clients import avro_codec
from orderflow.config import load_settings, settings_environment
from orderflow.pipelines import presence
from tests.support.served_api import API_REDIS_DB

ZONE = "Asia/Tokyo"
PREFIX = f"rules-{uuid.uuid4().hex[:8]}:"


def _hours_around_now() -> str:
    """Opening hours from 3 hours ago to 3 hours ahead, local time of ZONE (may cross midnight)."""
    now = dt.datetime.now(ZoneInfo(ZONE))
    opens, closes = now - dt.timedelta(hours=3), now + dt.timedelta(hours=3)
    return f"{opens:%H:%M}-{closes:%H:%M}"


@pytest.fixture(scope="module")
def api_settings(module_settings):
    """Overrides the API's settings: Redis database of the API tests, and the rules of this module, as
    the environment gives them (load_settings reads them like every other setting)."""
    redis_url = module_settings.redis_url.rsplit("/", 1)[0] + f"/{API_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    environment = {**settings_environment(dataclasses.replace(module_settings, redis_url=redis_url)),
                   "ORDERFLOW_OPENING_HOURS": _hours_around_now(), "ORDERFLOW_PRESENCE_TIMEZONE": ZONE,
                   "ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS": "600",
                   "ORDERFLOW_PRESENCE_REDIS_PREFIX": PREFIX}
    return load_settings(environment)


def test_status_answers_follow_the_configured_rules(api, api_settings, ingester, reader):
    now_ms = int(time.time() * 1000)
    # Through the API (within its clock skew): pinged 4 and 2 minutes ago.
    for rid, ago_s in (("four-minutes-ago", 240), ("two-minutes-ago", 120)):
        sent_at = dt.datetime.fromtimestamp((now_ms - ago_s * 1000) / 1000, dt.timezone.utc)
        assert ingester.post(f"/restaurants/{rid}/keepalive", json={"sent_at": sent_at.isoformat()}).status_code == 202
    # Straight to Kafka, as a device that lost its connection for a while would have sent it: 15 minutes ago.
    producer = Producer({"bootstrap.servers": api_settings.kafka_bootstrap})
    old = now_ms - 900_000
    producer.produce(api_settings.topics.keepalive, key=b"fifteen-minutes-ago", timestamp=old,
                     value=avro_codec(api_settings, "keepalive").encode({"restaurant_id": "fifteen-minutes-ago",
                                                                     "sent_at": old}))
    assert producer.flush(10) == 0

    presence.run(["--bounded"], settings=api_settings)  # the rules and prefix come from the settings

    client = redis.Redis.from_url(api_settings.redis_url)
    assert {k.decode() for k in client.scan_iter(match=f"{PREFIX}*")} == {
        f"{PREFIX}{rid}" for rid in ("four-minutes-ago", "two-minutes-ago", "fifteen-minutes-ago")}
    resp = reader.get("/restaurants/status", params={"ids": "four-minutes-ago,two-minutes-ago,fifteen-minutes-ago"})
    assert resp.status_code == 200, resp.text
    got = {rid: (v["status"], v["reasons"]) for rid, v in resp.json()["restaurants"].items()}
    # Open now in Tokyo's hours around now; connected for 10 minutes after a keep-alive (the default would
    # say 2 minutes: the first two offline too).
    assert got == {"four-minutes-ago": ("online", []), "two-minutes-ago": ("online", []),
                   "fifteen-minutes-ago": ("offline", ["no_keepalive"])}
