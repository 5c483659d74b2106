"""The presence pipeline reads keep-alives and availability changes of every schema version of its topics:
today's, a newer one (one more field, with a default, registered under the topic's subject by its producer) and
the single-object encoding of before the registry, each processed exactly."""
from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import psycopg
import pytest

from orderflow.clients import avro_codec
from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.model.avro import AvroCodec
from orderflow.pipelines import presence
from orderflow.pipelines.summary import counters
from tests.support.avro_history import evolved, register_and_encode
from tests.support.kafka_testing import produce

T0 = dt.datetime(2026, 3, 10, 15, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))  # open: 10:00-23:00
T0_MS = int(T0.timestamp() * 1000)
RESTAURANT = "evolving"
PINGS = 11  # every 30 s: even ones today's schema, odd ones the newer one, the last one single-object
UNAVAILABLE_AT, AVAILABLE_AT = T0_MS + 100_000, T0_MS + 200_000


@pytest.fixture(scope="module")
def run(module_settings):
    settings = module_settings
    pings = [{"restaurant_id": RESTAURANT, "sent_at": T0_MS + k * 30_000} for k in range(PINGS)]
    today = avro_codec(settings, "keepalive")
    newer = register_and_encode(settings.schema_registry_url, f"{settings.topics.keepalive}-value",
                                evolved("restaurant_keepalive"), [{**p, "channel": "app"} for p in pings[1:-1:2]])
    values = {k: today.encode(p) for k, p in enumerate(pings[:-1]) if k % 2 == 0}
    values.update(zip(range(1, PINGS - 1, 2), newer, strict=True))
    values[PINGS - 1] = AvroCodec("restaurant_keepalive").encode_single_object(pings[-1])
    produce(settings.kafka_bootstrap, settings.topics.keepalive,
            [(RESTAURANT.encode(), values[k], pings[k]["sent_at"]) for k in range(PINGS)], partition=0)
    unavailable = {"event_id": "e1", "restaurant_id": RESTAURANT, "kind": "SET_STATUS", "status": "UNAVAILABLE",
                   "reason": "HOLIDAYS", "occurred_at": UNAVAILABLE_AT, "channel": "app"}
    available = {"event_id": "e2", "restaurant_id": RESTAURANT, "kind": "SET_STATUS", "status": "AVAILABLE",
                 "occurred_at": AVAILABLE_AT}
    [unavailable_value] = register_and_encode(settings.schema_registry_url, f"{settings.topics.availability}-value",
                                              evolved("restaurant_availability"), [unavailable])
    produce(settings.kafka_bootstrap, settings.topics.availability, [
        (RESTAURANT.encode(), unavailable_value, UNAVAILABLE_AT),
        (RESTAURANT.encode(), AvroCodec("restaurant_availability").encode_single_object(available), AVAILABLE_AT)],
        partition=0)
    prefix = f"t-{uuid.uuid4().hex[:8]}:restaurant:"
    as_of = T0_MS + 600_000
    result = presence.run(["--bounded", f"--track_from={T0_MS}", f"--as_of={as_of}",
                           f"--presence_redis_prefix={prefix}"], settings=settings)
    return prefix, as_of, counters(result)


def test_every_version_is_decoded_none_is_a_dead_letter(run):
    _, _, got = run
    assert got["DecodeAvro/restaurant_keepalive_decoded"] == PINGS
    assert got["DecodeAvailabilityChanges/changes"] == 2
    assert {name: n for name, n in got.items() if name.startswith("presence/dead_letter_") and n} == {}


def test_the_changes_of_both_versions_make_one_closed_unavailability(run, module_settings):
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT restaurant_id, kind, reason, starts_at, ends_at FROM restaurant_unavailability"
                            ).fetchall()
    [(restaurant, kind, reason, starts_at, ends_at)] = rows
    assert (restaurant, kind, reason) == (RESTAURANT, "status", "HOLIDAYS")
    assert (int(starts_at.timestamp() * 1000), int(ends_at.timestamp() * 1000)) == (UNAVAILABLE_AT, AVAILABLE_AT)


def test_the_last_keepalive_is_the_single_object_one(run, module_settings):
    prefix, as_of, _ = run
    store = RestaurantStateStore(module_settings.redis_url, key_prefix=prefix)
    [state] = store.statuses([RESTAURANT], now=dt.datetime.fromtimestamp(as_of / 1000, dt.timezone.utc)).values()
    last = dt.datetime.fromtimestamp((T0_MS + (PINGS - 1) * 30_000) / 1000, dt.timezone.utc)
    assert state["last_keepalive"] == last.isoformat().replace("+00:00", "Z")
