"""The live demo feed against the session's broker: rates, phases, silences, stamped with event time."""
from __future__ import annotations

import collections
import time

from orderflow.clients import avro_codec
from orderflow_dev.generate.feed import TICK_SECONDS, FeedOptions, LiveFeed
from tests.support.orders_scenario import read_topic


def test_one_interval_of_feed_pings_every_non_silent_restaurant_once(module_settings):
    options = FeedOptions(orders_per_second=40, clients=50, restaurants=200, interval_seconds=30,
                          silent_per_minute=10, availability_changes_per_minute=600, seed=3)
    feed = LiveFeed(module_settings, options)
    # A recent minute boundary (a broker refuses timestamps an hour ahead): the silences of that minute are
    # planned at the first tick, and the ticks cover (t0 - 0.25, t0 + 29.75], exactly one interval.
    t0 = float(int(time.time()) // 60 * 60 - 600)
    ticks = [t0 + i * TICK_SECONDS for i in range(int(30 / TICK_SECONDS))]
    for now in ticks:
        feed.tick(now)
    feed.producer.flush(30)

    silent = {r for r, until in feed.silent_until.items() if until > ticks[-1]}
    assert len(silent) == 10
    decoder = avro_codec(module_settings, "keepalive")
    pings = collections.Counter()
    for _, key, value, timestamp_ms, _ in read_topic(module_settings, module_settings.topics.keepalive):
        assert value[:5] == decoder.header()  # the Confluent wire format, the keep-alive subject's id
        record = decoder.decode(value)
        assert key.decode() == record["restaurant_id"]
        assert int(record["sent_at"].timestamp() * 1000) == timestamp_ms  # Kafka time = event time
        assert t0 * 1000 <= timestamp_ms <= ticks[-1] * 1000
        pings[record["restaurant_id"]] += 1
    # 30 s past the first tick is one whole interval: each restaurant's phase is crossed exactly once.
    assert set(pings) == set(feed.restaurants) - silent
    assert set(pings.values()) == {1}

    orders = read_topic(module_settings, module_settings.topics.orders)
    assert len(orders) == feed.counts["orders"] == int(40 * 30)
    assert {timestamp_ms for _, _, _, timestamp_ms, _ in orders} <= {int(t * 1000) for t in ticks}
    changes = read_topic(module_settings, module_settings.topics.availability)
    assert len(changes) == feed.counts["changes"] > 0
