"""``python -m orderflow_dev.generate feed``: a live feed for the streaming demo, stamped with the wall clock.

Runs until stopped (or for ``--seconds``), producing as the producers of a real deployment would:

- orders at ``--orders-per-second`` from ``--clients`` clients (Zipf-skewed clients and assets, the four
  input models mixed), event time = now;
- keep-alives from ``--restaurants`` restaurants every ``--interval`` seconds, each with its own phase;
  every minute a few restaurants go silent for 3-6 minutes (they turn offline after the keep-alive
  timeout and come back);
- availability changes now and then: a restaurant sets itself UNAVAILABLE with a reason and AVAILABLE a
  few minutes later, or schedules an unavailability a couple of minutes ahead, sometimes cancelling it.

Every record's Kafka timestamp is its event time (now), so the pipelines' watermarks follow the clock.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time

from orderflow.clients import avro_codec, schema_registry
from orderflow.config import Settings, load_settings
from orderflow.model.presence import AvailabilityChange
from orderflow.model.sample_assets import SAMPLE_ASSETS
from orderflow_dev.generate.keepalive import REASONS, KeepaliveEncoder
from orderflow_dev.generate.orders import FORMATS, encode_order

TICK_SECONDS = 0.25


@dataclasses.dataclass
class FeedOptions:
    orders_per_second: float = 20.0
    clients: int = 300
    restaurants: int = 1000
    interval_seconds: float = 30.0
    silent_per_minute: int = 5
    availability_changes_per_minute: int = 6
    seed: int = 7
    seconds: float | None = None  # None: until stopped


class LiveFeed:
    """The feed's state and one ``tick(now)`` of production; ``run()`` loops on the wall clock."""

    def __init__(self, settings: Settings, options: FeedOptions, producer=None):
        from confluent_kafka import Producer

        self.settings = settings
        self.options = options
        self.rng = random.Random(options.seed)
        self.producer = producer or Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20,
                                              "enable.idempotence": True})
        self.clients = [f"client-{i:04d}" for i in range(options.clients)]
        self.assets = list(SAMPLE_ASSETS)
        self.restaurants = [f"rest-{i:05d}" for i in range(1, options.restaurants + 1)]
        self.phase = {r: self.rng.uniform(0, options.interval_seconds) for r in self.restaurants}
        self.silent_until: dict[str, float] = {}
        self.back_available: dict[str, float] = {}
        self.pending_cancel: dict[str, tuple[str, float]] = {}
        registry = schema_registry(settings)
        self.keepalive = KeepaliveEncoder(avro_codec(settings, "keepalive", registry))
        self.availability = avro_codec(settings, "availability", registry)
        self.orders_avro = avro_codec(settings, "orders", registry)
        self.counts = {"orders": 0, "keepalives": 0, "changes": 0}
        self._order_credit = 0.0
        self._event = 0
        self._last_tick: float | None = None
        self._last_minute = -1

    # -- one tick -------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        previous = self._last_tick if self._last_tick is not None else now - TICK_SECONDS
        self._last_tick = now
        now_ms = int(now * 1000)
        minute = int(now // 60)
        if minute != self._last_minute:
            self._last_minute = minute
            self._plan_minute(now)
        self._orders(now - previous, now_ms)
        self._keepalives(previous, now, now_ms)
        self._availability(now, now_ms)
        self.producer.poll(0)

    def _orders(self, elapsed: float, now_ms: int) -> None:
        self._order_credit += elapsed * self.options.orders_per_second
        topic = self.settings.topics.orders
        while self._order_credit >= 1:
            self._order_credit -= 1
            client = self.clients[min(int(self.rng.paretovariate(1.2)) - 1, len(self.clients) - 1)]
            asset = self.assets[min(int(self.rng.paretovariate(1.0)) - 1, len(self.assets) - 1)]
            quantity = self.rng.randint(1, 50) * 100
            self._event += 1
            order_id = f"feed-{self.options.seed}-{now_ms}-{self._event}"
            value = encode_order(self.rng.choice(FORMATS), order_id, client, asset, quantity, now_ms,
                                 self.orders_avro)
            self.producer.produce(topic, value, client.encode(), timestamp=now_ms)
            self.counts["orders"] += 1

    def _keepalives(self, previous: float, now: float, now_ms: int) -> None:
        interval = self.options.interval_seconds
        topic = self.settings.topics.keepalive
        for restaurant in self.restaurants:
            if self.silent_until.get(restaurant, 0) > now:
                continue
            # A ping is due when a multiple of the interval, shifted by the restaurant's phase, falls in
            # (previous, now].
            if (now - self.phase[restaurant]) // interval != (previous - self.phase[restaurant]) // interval:
                self.producer.produce(topic, self.keepalive.encode(restaurant, now_ms), restaurant.encode(),
                                      timestamp=now_ms)
                self.counts["keepalives"] += 1

    def _plan_minute(self, now: float) -> None:
        for restaurant in self.rng.sample(self.restaurants, min(self.options.silent_per_minute, len(self.restaurants))):
            self.silent_until[restaurant] = now + self.rng.uniform(180, 360)

    def _availability(self, now: float, now_ms: int) -> None:
        per_tick = self.options.availability_changes_per_minute * TICK_SECONDS / 60
        if self.rng.random() < per_tick:
            restaurant = self.rng.choice(self.restaurants)
            if self.rng.random() < 0.5:
                self._change(restaurant, now_ms, "SET_STATUS", status="UNAVAILABLE", reason=self.rng.choice(REASONS))
                self.back_available[restaurant] = now + self.rng.uniform(120, 300)
            else:
                schedule_id = f"sched-{self.options.seed}-{now_ms}"
                starts = now_ms + 120_000
                self._change(restaurant, now_ms, "SCHEDULE_CREATED", schedule_id=schedule_id,
                             reason=self.rng.choice(REASONS), starts_at=starts, ends_at=starts + 180_000)
                if self.rng.random() < 0.3:
                    self.pending_cancel[restaurant] = (schedule_id, now + 60)
        for restaurant, at in list(self.back_available.items()):
            if at <= now:
                del self.back_available[restaurant]
                self._change(restaurant, now_ms, "SET_STATUS", status="AVAILABLE")
        for restaurant, (schedule_id, at) in list(self.pending_cancel.items()):
            if at <= now:
                del self.pending_cancel[restaurant]
                self._change(restaurant, now_ms, "SCHEDULE_CANCELLED", schedule_id=schedule_id)

    def _change(self, restaurant: str, now_ms: int, kind: str, **fields) -> None:
        self._event += 1
        change = AvailabilityChange.event(f"feed-{self.options.seed}-{now_ms}-{self._event}", restaurant, kind,
                                          now_ms, **fields)._asdict()
        self.producer.produce(self.settings.topics.availability, self.availability.encode(change),
                              restaurant.encode(), timestamp=now_ms)
        self.counts["changes"] += 1

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        started = time.time()
        last_report = started
        try:
            while self.options.seconds is None or time.time() - started < self.options.seconds:
                self.tick(time.time())
                if time.time() - last_report >= 60:
                    last_report = time.time()
                    print(f"feed: {self.counts}", flush=True)
                time.sleep(TICK_SECONDS)
        except KeyboardInterrupt:
            pass
        finally:
            self.producer.flush(30)
        return self.counts


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    defaults = FeedOptions()
    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.generate feed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders-per-second", type=float, default=defaults.orders_per_second)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--restaurants", type=int, default=defaults.restaurants)
    parser.add_argument("--interval", type=float, default=defaults.interval_seconds, help="keep-alive period (s)")
    parser.add_argument("--silent-per-minute", type=int, default=defaults.silent_per_minute)
    parser.add_argument("--availability-changes-per-minute", type=int,
                        default=defaults.availability_changes_per_minute)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    args = parser.parse_args(argv)
    options = FeedOptions(args.orders_per_second, args.clients, args.restaurants, args.interval,
                          args.silent_per_minute, args.availability_changes_per_minute, args.seed, args.seconds)
    counts = LiveFeed(settings or load_settings(), options).run()
    print(f"feed stopped: {counts}", file=sys.stderr)
    return 0
