"""Helpers of the MQTT tests: the bridge as a detached process, its metrics, and a topic read back whole."""
from __future__ import annotations

import dataclasses
import pathlib
import urllib.request

import port_for
from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from orderflow.clients import avro_codec
from orderflow.config import Settings, settings_environment
from orderflow_dev.local.processes import DetachedProcess


@dataclasses.dataclass
class Bridge:
    """``python -m orderflow.bridge mqtt --instance N`` detached under ``root``, serving its metrics."""

    process: DetachedProcess
    metrics_port: int

    @classmethod
    def start(cls, settings: Settings, root: pathlib.Path, instance: int = 0) -> Bridge:
        port = port_for.select_random()
        process = DetachedProcess("bridge", root / f"bridge-{instance}")
        process.start(["--instance", str(instance), "--metrics-port", str(port)],
                      env={**settings_environment(settings), "ORDERFLOW_LOG_FORMAT": "text"})
        return cls(process, port)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """``{(sample name, sorted labels): value}``; empty while the bridge is not serving yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def connected(self) -> bool:
        """Connected to every broker it was given."""
        up = [v for (name, _), v in self.metrics().items() if name == "orderflow_bridge_broker_up"]
        return bool(up) and all(up)


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes, int]]:
    """``(key, value, timestamp_ms)`` of every record of every partition of ``topic``, up to its end now."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "mqtt-test-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, ended = [], set()
    try:
        while len(ended) < len(partitions):
            msg = consumer.poll(10)
            assert msg is not None, f"no end of {topic} within 10 s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                ended.add(msg.partition())
                continue
            out.append((msg.key(), msg.value(), msg.timestamp()[1]))
    finally:
        consumer.close()
    return out


def decoded(settings, topic: str) -> list[dict]:
    """The records of ``settings.topics.<topic>`` decoded as the pipelines decode them (the registry's writer
    schemas), each with its ``key`` and ``timestamp``."""
    codec = avro_codec(settings, topic)
    return [{**codec.decode(value), "key": key.decode(), "timestamp": ts}
            for key, value, ts in read_topic(settings.kafka_bootstrap, getattr(settings.topics, topic))]
