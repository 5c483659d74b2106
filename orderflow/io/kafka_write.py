"""WriteToKafka: writes (key, value[, headers]) tuples to a Kafka topic with an idempotent producer.

Delivery is confirmed before a bundle completes: ``finish_bundle`` flushes the producer and fails the
bundle if any record of it was not delivered, so the runner retries the bundle rather than losing the
records (at-least-once; the idempotent producer removes duplicates caused by its own retries).

Outages (``orderflow.io.retry``): while the broker is down the producer keeps the records and retries
them itself (librdkafka reconnects); a record fails only when it is still undelivered after
``delivery_timeout`` (librdkafka's ``message.timeout.ms``, from ``Settings.sink_retry_seconds``), so a
broker outage shorter than that holds the bundle and then completes it, without a duplicate.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import KafkaException, Producer

__all__ = ["DEFAULT_PRODUCER_CONFIG", "WriteToKafka"]

_LOG = logging.getLogger(__name__)

DEFAULT_PRODUCER_CONFIG = {
    "enable.idempotence": True,   # implies acks=all and in-order, de-duplicated retries
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "batch.size": 1024 * 1024,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "compression.type": "none",
    # Delivery reports only for failed records (they fail the bundle); one per acknowledged record would
    # cost a Python callback each, for nothing (flush() already says how many are left unacknowledged).
    "delivery.report.only.error": True,
}


class KafkaDeliveryError(RuntimeError):
    """Records of a bundle that Kafka did not acknowledge; the bundle fails so that it is retried."""


class _WriteToKafkaFn(beam.DoFn):
    def __init__(self, bootstrap_servers: str, topic: str, producer_config: dict | None, delivery_timeout: float):
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._producer_config = {"message.timeout.ms": int(delivery_timeout * 1000), **(producer_config or {})}
        # librdkafka fails each record at its own timeout; the flush only has to outlast it.
        self._flush_timeout = delivery_timeout + 30.0
        self._written = Metrics.counter("WriteToKafka", "records")
        self._failed = Metrics.counter("WriteToKafka", "delivery_failures")

    def setup(self):
        self._producer = None

    def start_bundle(self):
        if self._producer is None:
            self._producer = Producer({**DEFAULT_PRODUCER_CONFIG, "bootstrap.servers": self._bootstrap,
                                       **self._producer_config})
        self._sent = 0
        self._errors: list = []

    def _on_delivery(self, error, message):
        if error is not None:
            self._errors.append(error)

    def _produce(self, item) -> None:
        if len(item) == 3:
            key, value, headers = item
        else:
            (key, value), headers = item, None
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers, on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry this record.
                self._producer.poll(0.05)

    def process(self, element):
        if isinstance(element, list):
            for item in element:
                self._produce(item)
            self._sent += len(element)
        else:
            self._produce(element)
            self._sent += 1
        self._producer.poll(0)

    def finish_bundle(self):
        remaining = self._producer.flush(self._flush_timeout)
        errors = self._errors
        if remaining or errors:
            self._failed.inc(len(errors) + remaining)
            # The runner retries the bundle from its input: its undelivered records go with this producer, and
            # the retry gets a new one. Kept, a producer whose broker is gone reconnects for as long as the
            # DoFn instance lives, which a failed bundle may not end (teardown is best effort).
            self._close_producer()
            raise KafkaDeliveryError(
                f"WriteToKafka({self._topic}): {len(errors)} records failed, {remaining} undelivered after "
                f"{self._flush_timeout}s; first error: {errors[0] if errors else 'timeout'}")
        self._written.inc(self._sent)
        self._sent = 0

    def teardown(self):
        if getattr(self, "_producer", None) is not None:
            try:
                self._producer.flush(self._flush_timeout)
            except KafkaException as exc:  # pragma: no cover - best effort at shutdown
                _LOG.warning("WriteToKafka: flush at teardown failed: %s", exc)
            self._close_producer()

    def _close_producer(self) -> None:
        """Drops what the producer still holds (``close()`` would wait for it) and stops its threads."""
        producer, self._producer = self._producer, None
        producer.purge()
        producer.close()


class WriteToKafka(beam.PTransform):
    """Writes ``(key, value)`` or ``(key, value, headers)`` tuples, or lists of them, to ``topic``.

    ``key`` (bytes or None) chooses the partition; ``headers`` is a list of ``(name, bytes)``. The
    producer is idempotent; each bundle is flushed before it completes and a delivery failure fails the
    bundle (so the runner retries it) instead of vanishing. Returns an empty PCollection.

    Args:
        bootstrap_servers: the Kafka cluster.
        topic: the topic written.
        producer_config: librdkafka settings over ``DEFAULT_PRODUCER_CONFIG``.
        delivery_timeout: seconds a record may wait for the broker (an outage) before it fails the bundle.
    """

    def __init__(self, bootstrap_servers: str, topic: str, producer_config: dict | None = None,
                 delivery_timeout: float = 300.0):
        super().__init__()
        self._fn = _WriteToKafkaFn(bootstrap_servers, topic, producer_config, delivery_timeout)

    def expand(self, pcoll):
        return pcoll | beam.ParDo(self._fn)
