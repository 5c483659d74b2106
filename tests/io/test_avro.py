"""DecodeAvro: decoded records apart from dead letters for bad bytes (the codec: tests/model/test_avro.py)."""
from __future__ import annotations

import decimal

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from orderflow.io.avro import DecodeAvro
from orderflow.model.avro import AvroCodec
from orderflow.model.kafka_record import KafkaRecord
from tests.support.avro_history import MADE_AT, SCHEMAS, encode_v1
from tests.support.avro_history import widget as _widget


def test_decode_avro_splits_decoded_records_from_dead_letters():
    codec = AvroCodec("widget", SCHEMAS)
    good = [codec.encode(_widget(i)) for i in range(3)]
    corrupt = KafkaRecord("t", 2, 41, b"k", b"\xc3\x01garbage", 0)
    with TestPipeline() as p:
        decoded, dead = (p | beam.Create([*good, corrupt, encode_v1({"id": "old", "size": 1, "made_at": MADE_AT,
                                                                    "price": decimal.Decimal("0")})])
                         | DecodeAvro("widget", SCHEMAS))
        assert_that(decoded | beam.Map(lambda r: (r["id"], r["colour"])),
                    equal_to([("w0", "red"), ("w1", "red"), ("w2", "red"), ("old", None)]), label="decoded")

        def check_dead(letters):
            if len(letters) != 1:
                raise BeamAssertException(f"expected one dead letter, got {letters}")
            [letter] = letters
            if (letter.reason, letter.source, letter.payload, letter.stage) != (
                    "avro_not_single_object", "t/2/41", b"\xc3\x01garbage", "DecodeAvro"):
                raise BeamAssertException(f"unexpected dead letter {letter}")
        assert_that(dead, check_dead, label="dead")


def test_decode_avro_decodes_a_batch_into_one_list():
    codec = AvroCodec("widget", SCHEMAS)
    batch = [codec.encode(_widget(i)) for i in range(5)] + [b"bad"]
    with TestPipeline() as p:
        decoded, dead = p | beam.Create([batch]) | DecodeAvro("widget", SCHEMAS)
        assert_that(decoded | beam.Map(lambda rs: sorted(r["id"] for r in rs)),
                    equal_to([["w0", "w1", "w2", "w3", "w4"]]), label="decoded")
        assert_that(dead | beam.Map(lambda d: (d.reason, d.payload)),
                    equal_to([("avro_not_single_object", b"bad")]), label="dead")
