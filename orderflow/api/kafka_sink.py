"""Producing to Kafka from request handlers, with the broker's confirmation for every record.

One ``confluent_kafka.Producer`` is shared by all requests; a background thread serves its delivery
callbacks, and each request waits only for its own records (a future per record), so a request answers
202 only once the broker has acknowledged every record, with each record's partition and offset.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import NamedTuple


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge a record in time (or refused it)."""


class Delivered(NamedTuple):
    topic: str
    partition: int
    offset: int


class KafkaSink:
    def __init__(self, bootstrap_servers: str, producer_config: dict | None = None):
        from confluent_kafka import Producer

        config = {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,  # a retried produce never duplicates a record
            "linger.ms": 2,
            "message.timeout.ms": 15_000,
            "socket.keepalive.enable": True,
        }
        config.update(producer_config or {})
        self._producer = Producer(config)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def produce_all(self, topic: str, records: list[tuple[bytes | None, bytes]],
                    timeout: float = 15.0) -> list[Delivered]:
        """Produces ``(key, value)`` records and waits for the broker's acknowledgement of each.

        Raises DeliveryFailed if any record is not acknowledged within ``timeout`` seconds.
        """
        futures: list[concurrent.futures.Future] = []

        def on_delivery(future):
            def callback(err, msg):
                if err is not None:
                    future.set_exception(DeliveryFailed(str(err)))
                else:
                    future.set_result(Delivered(msg.topic(), msg.partition(), msg.offset()))
            return callback

        for key, value in records:
            future: concurrent.futures.Future = concurrent.futures.Future()
            futures.append(future)
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery(future))
                    break
                except BufferError:
                    # Local queue full: let the poller drain acknowledgements, then retry.
                    self._producer.poll(0.05)
        self._producer.poll(0)
        done, pending = concurrent.futures.wait(futures, timeout=timeout)
        if pending:
            raise DeliveryFailed(f"{len(pending)} of {len(futures)} records not acknowledged in {timeout:.0f}s")
        return [f.result() for f in futures]

    def check(self, timeout: float = 2.0) -> None:
        """Raises if the cluster's metadata cannot be fetched (health check)."""
        metadata = self._producer.list_topics(timeout=timeout)
        if not metadata.brokers:
            raise DeliveryFailed("no broker in metadata")

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=2)
        self._producer.flush(5)
        self._producer = None  # librdkafka closes its connections when the handle is released
