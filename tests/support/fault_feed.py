"""A live feed that remembers what it produced, and the hostile records of the fault suite (helpers, not tests).

``RecordedFeed`` produces, on the wall clock, orders (the four input models, each with its own order id),
keep-alives and availability changes, from a thread, until stopped; every record it hands to the producer
is remembered, so the suite computes what the stores must hold on its own (prices from the sample
reference data), independently of the pipelines. The producer is idempotent and retries until the broker
takes the record (no delivery timeout: librdkafka's default of 5 minutes was once outlasted by a stalled
machine), so a record given to it is never lost nor duplicated.
"""
from __future__ import annotations

import collections
import json
import random
import struct
import threading
import time
from decimal import Decimal

from confluent_kafka import Producer

from orderflow.clients import avro_codec, schema_registry
from orderflow.model.presence import AvailabilityChange
from orderflow_dev.generate.keepalive import REASONS, KeepaliveEncoder
from orderflow_dev.generate.orders import FORMATS, encode_order

ASSETS = ["PETR4", "VALE3", "ITUB4", "WEGE3", "SBSP3"]
# The fault suite's alarm rule, per client and day: every client of the feed crosses it within seconds.
ALARM_THRESHOLD = 200_000


class RecordedFeed:
    """Orders at ``orders_per_second``, a keep-alive per restaurant every ``keepalive_seconds`` and an
    availability change now and then; ``pause()``/``resume()``; ``stop()`` flushes."""

    def __init__(self, settings, prices: dict, *, tag: str, clients: int = 12, restaurants: int = 40,
                 orders_per_second: float = 40.0, keepalive_seconds: float = 2.0, seed: int = 5):
        self.settings = settings
        self.prices = prices
        self.tag = tag
        self.rng = random.Random(seed)
        self.clients = [f"{tag}-client-{i}" for i in range(clients)]
        self.restaurants = [f"{tag}-rest-{i}" for i in range(restaurants)]
        self.controlled: list[str] = []  # restaurants a test pings itself (produce_keepalive), not the feed
        self.orders_per_second = orders_per_second
        self.keepalive_seconds = keepalive_seconds
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                                  "linger.ms": 5, "message.timeout.ms": 0})
        registry = schema_registry(settings)
        self.keepalive = KeepaliveEncoder(avro_codec(settings, "keepalive", registry))
        self.availability = avro_codec(settings, "availability", registry)
        self.orders_avro = avro_codec(settings, "orders", registry)
        self.lock = threading.Lock()
        self.orders: dict[str, tuple[str, str, int]] = {}          # order_id -> (client, asset, quantity)
        self.last_keepalive: dict[str, int] = {}                   # restaurant -> latest sent_at ms
        self.changes: list[dict] = []                              # availability events produced
        self.hostile = 0                                           # hostile records on the orders topic
        self.hostile_keepalives = 0
        self.delivery_errors: list = []
        self.error: BaseException | None = None
        self._sequence = 0
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorded-feed", daemon=True)

    # -- control ------------------------------------------------------------------------------------------
    def start(self) -> RecordedFeed:
        self._running.set()
        self._thread.start()
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stopped.set()
        self._running.set()
        self._thread.join(30)
        self.flush()

    def close(self) -> None:
        """Stops producing, gives undelivered records 10 s (teardown: the broker may be the fault), then closes
        the producer: left open, librdkafka kept reconnecting to the module's stopped broker for the rest of the
        session ("Connection refused" in every later test's output)."""
        self._stopped.set()
        self._running.set()
        self._thread.join(30)
        self.producer.flush(10)
        self.producer.purge()
        self.producer.close()

    def flush(self, timeout: float = 900.0) -> None:
        assert self.error is None, f"the feed failed: {self.error!r}"
        with self.lock:
            remaining = self.producer.flush(timeout)
        assert remaining == 0 and not self.delivery_errors, (remaining, self.delivery_errors[:3])

    # -- what the stores must hold ------------------------------------------------------------------------
    def expected_volumes(self) -> dict[str, tuple[Decimal, int]]:
        """client -> (exact total, order count) of every order produced (prices of the sample reference data)."""
        volumes = collections.defaultdict(lambda: [Decimal(0), 0])
        with self.lock:
            for client, asset, quantity in self.orders.values():
                volumes[client][0] += self.prices[asset][1] * quantity
                volumes[client][1] += 1
        return {client: (total, n) for client, (total, n) in volumes.items()}

    def expected_unavailability(self) -> set[tuple[str, int, int | None]]:
        """(restaurant, start ms, end ms or None) of each stretch a restaurant declared itself UNAVAILABLE:
        opened by SET_STATUS UNAVAILABLE when none is open, closed by the next SET_STATUS AVAILABLE."""
        stretches, open_since = set(), {}
        with self.lock:
            changes = sorted(self.changes, key=lambda c: (c["occurred_at"], c["event_id"]))
        for change in changes:
            restaurant = change["restaurant_id"]
            if change["status"] == "UNAVAILABLE":
                open_since.setdefault(restaurant, change["occurred_at"])
            elif restaurant in open_since:
                stretches.add((restaurant, open_since.pop(restaurant), change["occurred_at"]))
        return stretches | {(restaurant, start, None) for restaurant, start in open_since.items()}

    def expected_statuses(self) -> dict[str, str]:
        """restaurant -> the status of its latest SET_STATUS."""
        with self.lock:
            changes = sorted(self.changes, key=lambda c: (c["occurred_at"], c["event_id"]))
        return {c["restaurant_id"]: c["status"] for c in changes}

    # -- production ---------------------------------------------------------------------------------------
    def _on_delivery(self, error, _message):
        if error is not None:
            self.delivery_errors.append(error)

    def _produce(self, topic: str, value: bytes, key: bytes | None, now_ms: int) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, timestamp=now_ms, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _run(self) -> None:
        try:
            self._produce_until_stopped()
        except BaseException as exc:  # the suite's assertions name it: a dead feed proves nothing
            self.error = exc
            raise

    def _produce_until_stopped(self) -> None:
        credit, last, next_ping = 0.0, time.time(), {}
        while not self._stopped.is_set():
            self._running.wait()
            if self._stopped.is_set():
                break
            now = time.time()
            credit += (now - last) * self.orders_per_second
            last = now
            now_ms = int(now * 1000)
            with self.lock:
                while credit >= 1:
                    credit -= 1
                    self._order(now_ms)
                for restaurant in self.restaurants:
                    if next_ping.get(restaurant, 0) <= now:
                        next_ping[restaurant] = now + self.keepalive_seconds * self.rng.uniform(0.8, 1.2)
                        self._produce(self.settings.topics.keepalive, self.keepalive.encode(restaurant, now_ms),
                                      restaurant.encode(), now_ms)
                        self.last_keepalive[restaurant] = max(now_ms, self.last_keepalive.get(restaurant, 0))
                if self.rng.random() < 0.05:
                    self._change(now_ms)
                self.producer.poll(0)
            time.sleep(0.05)

    def _order(self, now_ms: int) -> None:
        self._sequence += 1
        order_id = f"{self.tag}-{self._sequence}"
        client = self.rng.choice(self.clients)
        asset = self.rng.choice(ASSETS)
        quantity = self.rng.randint(1, 20) * 100
        value = encode_order(FORMATS[self._sequence % len(FORMATS)], order_id, client, asset, quantity, now_ms,
                             self.orders_avro)
        self._produce(self.settings.topics.orders, value, client.encode(), now_ms)
        self.orders[order_id] = (client, asset, quantity)

    def _change(self, now_ms: int) -> None:
        self._sequence += 1
        restaurant = self.rng.choice(self.restaurants)
        if self.rng.random() < 0.5:
            fields = {"status": "UNAVAILABLE", "reason": self.rng.choice(REASONS)}
        else:
            fields = {"status": "AVAILABLE"}
        change = AvailabilityChange.event(f"{self.tag}-event-{self._sequence}", restaurant, "SET_STATUS", now_ms,
                                          **fields)._asdict()
        self._produce(self.settings.topics.availability, self.availability.encode(change), restaurant.encode(),
                      now_ms)
        self.changes.append(change)

    # -- records a test produces itself, recorded like the feed's own ------------------------------------
    def produce_order(self, client: str, asset: str, quantity: int, event_ms: int) -> str:
        """One JSON order at ``event_ms`` (its Kafka timestamp, the order's event time); returns its id."""
        with self.lock:
            self._sequence += 1
            order_id = f"{self.tag}-own-{self._sequence}"
            self._produce(self.settings.topics.orders, encode_order("json", order_id, client, asset, quantity, event_ms),
                          client.encode(), event_ms)
            self.orders[order_id] = (client, asset, quantity)
        return order_id

    def produce_keepalive(self, restaurant: str, sent_ms: int) -> None:
        with self.lock:
            if restaurant not in self.controlled:
                self.controlled.append(restaurant)
            self._produce(self.settings.topics.keepalive, self.keepalive.encode(restaurant, sent_ms),
                          restaurant.encode(), sent_ms)
            self.last_keepalive[restaurant] = max(sent_ms, self.last_keepalive.get(restaurant, 0))

    def produce_status(self, restaurant: str, status: str, occurred_ms: int, reason: str | None = None) -> None:
        with self.lock:
            self._sequence += 1
            change = AvailabilityChange.event(f"{self.tag}-event-{self._sequence}", restaurant, "SET_STATUS",
                                              occurred_ms, status=status, reason=reason)._asdict()
            self._produce(self.settings.topics.availability, self.availability.encode(change), restaurant.encode(),
                          occurred_ms)
            self.changes.append(change)

    def produce_hostile(self, count: int, keepalives: int = 0) -> None:
        """``count`` hostile records on the orders topic, spread among the live orders, and ``keepalives``
        undecodable keep-alives."""
        rng = random.Random(count)
        for i in range(count):
            now_ms = int(time.time() * 1000)
            with self.lock:
                self._produce(self.settings.topics.orders, hostile_record(rng, i), None, now_ms)
                self.hostile += 1
                if i % 100 == 0:
                    self.producer.poll(0)
        for _ in range(keepalives):
            with self.lock:
                self._produce(self.settings.topics.keepalive, rng.randbytes(rng.randint(0, 40)), None,
                              int(time.time() * 1000))
                self.hostile_keepalives += 1


_MEGABYTE = 999_000


def hostile_record(rng: random.Random, i: int) -> bytes:
    """The ``i``-th hostile value: random bytes, truncated JSON, NUL, huge and negative numbers, non-ASCII
    digits, 1 MB values, years 1 and 9999, deep nesting, bad Avro fingerprints, over-long tokens."""
    kind = i % 14
    token = f"hostile-{i}"
    if kind == 0:
        return rng.randbytes(rng.randint(1, 200))
    if kind == 1:
        whole = json.dumps({"ativo": "PETR4", "quantidade": 5, "token": token}).encode()
        return whole[:rng.randint(1, len(whole) - 1)]
    if kind == 2:
        return json.dumps({"ativo": "PETR4", "quantidade": 5, "token": token + "\u0000"}).encode()
    if kind == 3:
        return json.dumps({"ativo": "PETR4", "quantidade": 10 ** rng.randint(13, 40), "token": token}).encode()
    if kind == 4:
        return json.dumps({"ativo": "PETR4", "quantidade": -rng.randint(1, 10 ** 9), "token": token}).encode()
    if kind == 5:
        return f"PETR4,{''.join(rng.choice('٠١٢٣٤٥٦٧٨٩') for _ in range(3))},{token}".encode()
    if kind == 6:
        # 1 MB values are few (3 in 10,000): each is a 1 MB record on the input topic and a dead letter
        # truncated to fit on the DLQ.
        return rng.randbytes(_MEGABYTE) if i % 3500 == 6 else rng.randbytes(rng.randint(1000, 5000))
    if kind == 7:
        return json.dumps({"ativo": "PETR4", "quantidade": 5, "token": token,
                           "timestamp": "0001-01-01T00:00:00Z"}).encode()
    if kind == 8:
        return json.dumps({"ativo": "PETR4", "quantidade": 5, "token": token,
                           "timestamp": "9999-12-31T23:59:59Z"}).encode()
    if kind == 9:
        depth = rng.randint(600, 5000)
        return b'{"ativo": "PETR4", "quantidade": ' + b"[" * depth + b"5" + b"]" * depth + b', "token": "x"}'
    if kind == 10:
        return b"\xc3\x01" + struct.pack("<q", rng.getrandbits(63)) + rng.randbytes(rng.randint(0, 50))
    if kind == 11:
        return json.dumps({"ativo": "PETR4", "quantidade": 5, "token": "t" * rng.randint(257, 5000)}).encode()
    if kind == 12:
        return json.dumps({"ativo": "NOPE" + str(i), "quantidade": 5, "token": token}).encode()
    return json.dumps([{"ativo": "PETR4"}] * rng.randint(0, 3)).encode()
