"""``DecodeAvro``: single-object Avro payloads to dicts in a pipeline (the codec is ``orderflow.model.avro``).

Anything that does not decode goes to the ``dead_letter`` output with the reason instead of being dropped.
"""
from __future__ import annotations

import pathlib
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.model.avro import AvroCodec, AvroDecodeError
from orderflow.model.dead_letter import DEAD_LETTER_TAG, DeadLetter, Stage
from orderflow.model.kafka_record import KafkaRecord


class _DecodeAvroFn(beam.DoFn):
    def __init__(self, codec: AvroCodec):
        self._codec = codec
        self._decoded = Metrics.counter("DecodeAvro", f"{codec.name}_decoded")
        self._failed = Metrics.counter("DecodeAvro", f"{codec.name}_dead_letters")

    def _decode_one(self, item: Any):
        if isinstance(item, KafkaRecord):
            payload, source = item.value, item.coordinates
        else:
            payload, source = item, ""
        try:
            return self._codec.decode(payload or b""), None
        except AvroDecodeError as exc:
            return None, DeadLetter(exc.reason, exc.detail, payload or b"", source, Stage.DECODE_AVRO)

    def process(self, element):
        if isinstance(element, list):
            decoded, dead = [], []
            for item in element:
                record, letter = self._decode_one(item)
                (decoded.append(record) if letter is None else dead.append(letter))
            self._decoded.inc(len(decoded))
            if decoded:
                yield decoded
            if dead:
                self._failed.inc(len(dead))
                for letter in dead:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            return
        record, letter = self._decode_one(element)
        if letter is None:
            self._decoded.inc()
            yield record
        else:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)


class DecodeAvro(beam.PTransform):
    """Decodes single-object Avro payloads of schema ``name`` to dicts.

    Input: ``bytes`` or ``KafkaRecord`` elements (a ``list`` of them, as ``ReadFromKafka(batch_size=...)``
    emits, is decoded into one ``list`` of dicts). Output: a tuple of PCollections, ``decoded`` (main) and
    ``dead_letter`` (``DeadLetter`` with the reason, the original bytes and the Kafka coordinates)::

        decoded, dead_letters = records | DecodeAvro("order")
    """

    def __init__(self, name: str, schema_dir: str | pathlib.Path | None = None):
        super().__init__()
        self._codec = AvroCodec(name, schema_dir)

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_DecodeAvroFn(self._codec)).with_outputs(DEAD_LETTER_TAG, main="decoded")
