"""Dead letters on a Kafka topic: an oversized one is stored truncated with its size, digest and coordinates."""
from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from orderflow.io.kafka_write import WriteToKafka
from orderflow.model.dead_letter import DLQ_MAX_MESSAGE_BYTES, DeadLetter
from tests.support.kafka_testing import read_partition


def test_an_oversized_dead_letter_lands_truncated_with_size_digest_and_coordinates(stack_settings, make_topic):
    payload = bytes(range(256)) * 3907  # 1,000,192 bytes: more than any record may hold
    letter = DeadLetter("unparseable", "d" * 5000, payload, "ordem-ativo/3/77", "normalize_orders")
    topic = make_topic("dlq", partitions=1)
    with TestPipeline() as p:
        _ = p | beam.Create([letter]) | beam.Map(DeadLetter.to_kafka) | WriteToKafka(stack_settings.kafka_bootstrap, topic)
    [(_, key, value, _, headers)] = read_partition(stack_settings.kafka_bootstrap, topic, 0)
    headers = dict(headers)
    assert key == b"ordem-ativo/3/77" and headers["dlq.source"] == b"ordem-ativo/3/77"
    assert headers["dlq.truncated"] == b"true" and int(headers["dlq.original_size"]) == len(payload)
    assert headers["dlq.sha256"] == hashlib.sha256(payload).hexdigest().encode()
    assert len(headers["dlq.detail"]) == 1000 and payload.startswith(value)
    assert len(key) + len(value) + sum(len(k) + len(v) for k, v in headers.items()) <= DLQ_MAX_MESSAGE_BYTES - 512
