"""``DecodeAvro``: Avro payloads (Confluent wire format) to dicts in a pipeline (the codec is ``orderflow.model.avro``).

Anything that does not decode goes to the ``dead_letter`` output with the reason instead of being dropped. A
record whose writer schema must be fetched while the schema registry is down is not bad data: it is retried
under the outage rule (``orderflow.io.retry``) and never dead-lettered; records of schemas already cached
decode on through the outage.
"""
from __future__ import annotations

import pathlib
import pickle
from typing import Any

import apache_beam as beam
from apache_beam.coders import Coder
from apache_beam.metrics import Metrics

from orderflow.io.kafka_read import KafkaBatch
from orderflow.io.retry import DEFAULT_RETRY_SECONDS, call_with_retry
from orderflow.model.avro import AvroCodec, AvroDecodeError, SchemaRegistryUnavailable
from orderflow.model.dead_letter import DEAD_LETTER_TAG, DeadLetter, Stage
from orderflow.model.kafka_record import KafkaRecord

__all__ = ["DecodeAvro", "DecodedBatch", "DecodedBatchCoder", "RetryingDecoder", "decode_with_retry",
           "decoded_metric"]


def decoded_metric(schema: str) -> tuple[str, str]:
    """The (namespace, name) of the Beam counter of records of ``schema`` decoded."""
    return "DecodeAvro", f"{schema}_decoded"


def decode_with_retry(codec: AvroCodec, payload: bytes, retry_seconds: float, on_retry=None) -> dict:
    """``codec.decode(payload)``; while the registry cannot give the writer schema, retried for up to
    ``retry_seconds`` (the outage rule). ``AvroDecodeError`` (bad data) is raised at once."""
    try:
        return codec.decode(payload)
    except SchemaRegistryUnavailable:
        return call_with_retry(f"decoding {codec.name}", lambda: codec.decode(payload), retry_seconds, on_retry)


class RetryingDecoder:
    """``decoder(payload) -> dict``: ``decode_with_retry`` of one codec, as a picklable callable that
    transforms (which do not import io) take: ``DecodeAvailabilityChanges``, ``NormalizeOrders``."""

    def __init__(self, codec: AvroCodec, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        self.codec = codec
        self.retry_seconds = retry_seconds

    def __call__(self, payload: bytes) -> dict:
        return decode_with_retry(self.codec, payload, self.retry_seconds)


class DecodedBatch(list):
    """The ``decoded`` element of a batched ``DecodeAvro`` (its input a ``KafkaBatch``): a list of the batch's
    records decoded to dicts."""

    def __reduce__(self):
        return DecodedBatch, (list(self),)


class DecodedBatchCoder(Coder):
    """A ``DecodedBatch`` as one pickle of its dicts.

    Beam's default for a list (``FastPrimitivesCoder``) encodes each dict on its own and pickles each
    ``datetime`` (every timestamp-millis field) separately: a batch of 5,000 keep-alives took 47 ms and
    680 KB to encode and decode, against 5.5 ms and 200 KB as one pickle. Batches cross between stages (on
    Prism, a Flatten or a second consumer is a crossing, through the runner), so at 8,000 keep-alives/s that
    was a tenth of the presence pipeline's CPU and most of its data channel's bytes (benchmarks/README.md,
    issue 26). Its ``estimate_size`` is O(1). Not deterministic: never a key.
    """

    def encode(self, value: list) -> bytes:
        return pickle.dumps(list(value), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> DecodedBatch:
        return DecodedBatch(pickle.loads(encoded))

    def estimate_size(self, value: list) -> int:
        return 8 + 64 * len(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return DecodedBatch


beam.coders.registry.register_coder(DecodedBatch, DecodedBatchCoder)


class _DecodeAvroFn(beam.DoFn):
    def __init__(self, codec: AvroCodec, retry_seconds: float):
        self._codec = codec
        self._retry_seconds = retry_seconds
        self._decoded = Metrics.counter(*decoded_metric(codec.name))
        self._failed = Metrics.counter("DecodeAvro", f"{codec.name}_dead_letters")
        self._retries = Metrics.counter("DecodeAvro", "transient_retries")

    def _decode_one(self, item: Any):
        if isinstance(item, KafkaRecord):
            payload, source = item.value, item.coordinates
        else:
            payload, source = item, ""
        try:
            return decode_with_retry(self._codec, payload or b"", self._retry_seconds,
                                     lambda _: self._retries.inc()), None
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
                yield DecodedBatch(decoded)
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
    """Decodes Avro payloads of one schema to dicts, in the current (reader) schema.

    Input: ``bytes`` or ``KafkaRecord`` elements (a ``list`` of them, as ``ReadFromKafka(batch_size=...)``
    emits, is decoded into one ``list`` of dicts). Output: a tuple of PCollections, ``decoded`` (main) and
    ``dead_letter`` (``DeadLetter`` with the reason, the original bytes and the Kafka coordinates)::

        decoded, dead_letters = records | DecodeAvro(avro_codec(settings, "keepalive"))

    Beam counters (namespace ``DecodeAvro``): ``<schema>_decoded``, ``<schema>_dead_letters`` and
    ``transient_retries`` (registry look-ups retried during an outage).

    Args:
        codec: an ``AvroCodec`` with the registry that resolves writer schema ids
            (``orderflow.clients.avro_codec``), or a schema name: a codec without a registry, which reads
            only records written before the switch (single-object encoding).
        schema_dir: where the schema named by ``codec`` is (default ``orderflow/schemas``).
        retry_seconds: how long a writer schema is retried while the registry is down.
    """

    def __init__(self, codec: AvroCodec | str, schema_dir: str | pathlib.Path | None = None,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS):
        super().__init__()
        self._codec = codec if isinstance(codec, AvroCodec) else AvroCodec(codec, schema_dir)
        self._retry_seconds = retry_seconds

    def expand(self, pcoll):
        decode = beam.ParDo(_DecodeAvroFn(self._codec, self._retry_seconds))
        if pcoll.element_type is KafkaBatch:  # batches decode to batches: DecodedBatchCoder, not Beam's default
            decode = decode.with_output_types(DecodedBatch)
        return pcoll | decode.with_outputs(DEAD_LETTER_TAG, main="decoded")
