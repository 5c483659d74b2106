"""Decodes ``restaurant-availability`` records into validated ``AvailabilityChange`` batches.

Input: ``KafkaRecord`` or ``list[KafkaRecord]`` (``ReadFromKafka(batch_size=...)``). Output: main
``list[AvailabilityChange]`` per input element (empty batches are not emitted), and ``dead_letter``:
``DeadLetter`` for bytes that do not decode as ``RestaurantAvailabilityEvent`` and for events that lack
what their kind needs (e.g. SET_STATUS without status), with the reason and the Kafka coordinates.
"""
from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.model.avro import AvroCodec, AvroDecodeError
from orderflow.model.dead_letter import DEAD_LETTER_TAG, DeadLetter, Stage
from orderflow.model.kafka_record import KafkaRecord
from orderflow.model.presence import AvailabilityChange, InvalidAvailabilityChange, validate_change

__all__ = ["CHANGES", "DecodeAvailabilityChanges"]

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
CHANGES = (Stage.DECODE_AVAILABILITY_CHANGES, "changes")

STAGE = Stage.DECODE_AVAILABILITY_CHANGES


class _DecodeChangesFn(beam.DoFn):
    def __init__(self, decode: Callable[[bytes], dict] | None):
        self._decode = decode or AvroCodec("restaurant_availability").decode
        self._decoded = Metrics.counter(*CHANGES)
        self._dead = Metrics.counter(STAGE, "dead_letters")

    def process(self, element):
        records = element if isinstance(element, list) else [element]
        changes = []
        for record in records:
            payload, source = (record.value, record.coordinates) if isinstance(record, KafkaRecord) else (record, "")
            try:
                changes.append(validate_change(AvailabilityChange.from_record(self._decode(payload))))
            except (AvroDecodeError, InvalidAvailabilityChange) as exc:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(exc.reason, exc.detail, payload or b"",
                                                                           source, STAGE))
        if changes:
            self._decoded.inc(len(changes))
            yield changes


class DecodeAvailabilityChanges(beam.PTransform):
    """Kafka records of ``restaurant-availability`` -> (``changes`` batches, ``dead_letter``).

    Args:
        decode: bytes -> ``RestaurantAvailabilityEvent`` dict, raising ``AvroDecodeError`` for bad bytes: the
            registry-backed decoder (``orderflow.io.avro.RetryingDecoder``) in the pipeline; default, a codec
            without a registry (reads records written before the switch only).
    """

    def __init__(self, decode: Callable[[bytes], dict] | None = None):
        super().__init__()
        self._decode_fn = decode

    def expand(self, records):
        return records | beam.ParDo(_DecodeChangesFn(self._decode_fn)).with_outputs(DEAD_LETTER_TAG, main="changes")
