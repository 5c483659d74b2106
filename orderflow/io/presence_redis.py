"""The presence pipeline's Beam sinks of the restaurants' Redis hot state (``orderflow.io.restaurant_state``).

``WriteKeepalivesToRedis`` keeps each restaurant's latest keep-alive, ``WriteAvailabilityToRedis`` its status
and schedules. A write Redis refuses because of its data becomes a ``DeadLetter`` (reason ``redis_rejected``,
counter ``RestaurantState/dead_letters``); an unavailable Redis is retried under the outage rule.
"""
from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.io.restaurant_state import DEFAULT_KEY_PREFIX, REDIS_REJECTED, RedisWrites, RestaurantStateStore
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.dead_letter import DeadLetter, Stage
from orderflow.model.presence import DEFAULT_KEEPALIVE_GAP_MS, AvailabilityChange, to_ms

__all__ = ["WriteAvailabilityToRedis", "WriteKeepalivesToRedis"]


class _RedisWriteFn(beam.DoFn):
    def __init__(self, redis_url: str, key_prefix: str, retry_seconds: float,
                 keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_GAP_MS):
        self._keepalive_timeout_ms = keepalive_timeout_ms
        self._redis_url = redis_url
        self._key_prefix = key_prefix
        self._retry_seconds = retry_seconds
        self._writes = Metrics.counter("RestaurantState", "redis_writes")
        self._dead = Metrics.counter("RestaurantState", "dead_letters")
        self._retries = Metrics.counter("RestaurantState", "transient_retries")

    def setup(self):
        self._store = RestaurantStateStore(self._redis_url, key_prefix=self._key_prefix,
                                           keepalive_timeout_ms=self._keepalive_timeout_ms)

    def _retrying(self, what: str, write):
        """``write()`` under the outage rule (``orderflow.io.retry``); every write here is idempotent (a
        maximum, the latest status, a merge), so a retried batch writes nothing twice."""
        def reconnect(_exc):
            self._retries.inc()
            self._store.close()

        return call_with_retry(what, write, self._retry_seconds, on_retry=reconnect)

    def _dead_letters(self, writes: RedisWrites, stage: str, describe):
        self._writes.inc(writes.written)
        for item, message in writes.refused:
            self._dead.inc()
            source, record = describe(item)
            yield DeadLetter(REDIS_REJECTED, message, json.dumps(record).encode("utf-8", "backslashreplace"),
                             source, stage)

    def teardown(self):
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()


def _describe_keepalive(item):
    (restaurant_id, ms) = item
    return f"keepalive:{restaurant_id}@{ms}", {"restaurant_id": restaurant_id, "last_keepalive_ms": ms}


def _describe_change(change: AvailabilityChange):
    return f"event:{change.event_id}", change._asdict()


class _RecordKeepalivesFn(_RedisWriteFn):
    """Collects each restaurant's pings over the bundle and writes them when the bundle ends (or the buffer is
    full): one write per restaurant per bundle (its latest ping and the sessions of its pings), however many
    of its pings the bundle holds. Yields a DeadLetter for each restaurant whose write Redis refused."""

    MAX_BUFFERED = 100_000

    def start_bundle(self):
        self._pings: dict[str, list[int]] = {}

    def process(self, batch):
        pings = self._pings
        for record in batch if isinstance(batch, list) else [batch]:
            sent = record["sent_at"]
            pings.setdefault(record["restaurant_id"], []).append(sent if isinstance(sent, int) else to_ms(sent))
        if len(pings) >= self.MAX_BUFFERED:
            yield from self._flush()

    def _flush(self):
        if self._pings:
            pings = self._pings
            writes = self._retrying("keep-alives to Redis", lambda: self._store.record_keepalives(pings))
            self._pings = {}
            yield from self._dead_letters(writes, Stage.REDIS_KEEPALIVES, _describe_keepalive)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        # Keep-alives reach this sink in the global window (sessions are formed downstream); a refused
        # restaurant's dead letter carries the time of its latest ping.
        for letter in self._flush():
            sent_ms = json.loads(letter.payload)["last_keepalive_ms"]
            yield GlobalWindows.windowed_value(letter, sent_ms / 1000)


class _ApplyChangesFn(_RedisWriteFn):
    def process(self, batch):
        changes = batch if isinstance(batch, list) else [batch]
        writes = self._retrying("availability to Redis", lambda: self._store.apply_changes(changes))
        yield from self._dead_letters(writes, Stage.REDIS_AVAILABILITY, _describe_change)


class WriteKeepalivesToRedis(beam.PTransform):
    """Decoded keep-alive dicts (or lists of them) -> ``last_keepalive_ms`` and recent ``sessions`` of each
    restaurant, one round trip per bundle (the hot state is written before the bundle commits, so before its
    Kafka offsets are). Returns the ``DeadLetter``s of restaurants whose write Redis refused.

    Args:
        redis_url: the Redis of the hot state.
        key_prefix: prefix of the restaurants' hashes.
        retry_seconds: how long an unavailable Redis is retried before the bundle fails.
        keepalive_timeout_ms: the session gap: a restaurant is connected until this long after a ping.
    """

    def __init__(self, redis_url: str, key_prefix: str = DEFAULT_KEY_PREFIX,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS, keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_GAP_MS):
        super().__init__()
        self._fn = _RecordKeepalivesFn(redis_url, key_prefix, retry_seconds, keepalive_timeout_ms)

    def expand(self, keepalives):
        return keepalives | beam.ParDo(self._fn)


class WriteAvailabilityToRedis(beam.PTransform):
    """``AvailabilityChange`` lists (or single changes) -> status and schedules, one round trip per batch.
    Returns the ``DeadLetter``s of changes Redis refused.

    Args:
        redis_url: the Redis of the hot state.
        key_prefix: prefix of the restaurants' hashes.
        retry_seconds: how long an unavailable Redis is retried before the bundle fails.
    """

    def __init__(self, redis_url: str, key_prefix: str = DEFAULT_KEY_PREFIX,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._fn = _ApplyChangesFn(redis_url, key_prefix, retry_seconds)

    def expand(self, changes):
        return changes | beam.ParDo(self._fn)
