"""AvroCodec and DecodeAvro: single-object encoding, schema resolution, dead letters for bad bytes."""
from __future__ import annotations

import datetime as dt
import decimal
import pathlib
import struct

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from orderflow.io.avro import DecodeAvro
from orderflow.model.avro import AvroCodec, AvroDecodeError, load_schema, schema_fingerprint
from orderflow.model.kafka_record import KafkaRecord
from tests.support.avro_history import encode_v1

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
MADE_AT = dt.datetime(2026, 11, 21, 12, 30, 15, 123000, tzinfo=dt.timezone.utc)


def _widget(i: int = 1, colour: str | None = "red") -> dict:
    return {"id": f"w{i}", "size": 10 + i, "made_at": MADE_AT, "price": decimal.Decimal("12.3400"), "colour": colour}


def test_crc64_avro_fingerprint_matches_the_avro_specification():
    # The Avro spec's test vector: fingerprint64("null") = 7195948357588979594, little-endian in the header.
    assert schema_fingerprint("null") == struct.pack("<q", 7195948357588979594)


def test_encode_writes_single_object_encoding_and_decode_round_trips():
    codec = AvroCodec("widget", SCHEMAS)
    data = codec.encode(_widget())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(load_schema("widget", SCHEMAS))
    assert codec.decode(data) == _widget()


def test_an_old_writer_schema_is_resolved_to_the_current_reader_schema():
    old = {"id": "w9", "size": 7, "made_at": MADE_AT, "price": decimal.Decimal("1.5000")}
    decoded = AvroCodec("widget", SCHEMAS).decode(encode_v1(old))
    assert decoded == {**old, "colour": None}   # the new field takes its default


@pytest.mark.parametrize("payload, reason", [
    (b"", "avro_not_single_object"),
    (b'{"id": "json, not avro"}', "avro_not_single_object"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02a", "avro_unknown_schema"),
    (None, "avro_empty"),
])
def test_undecodable_bytes_raise_with_a_reason(payload, reason):
    with pytest.raises(AvroDecodeError) as err:
        AvroCodec("widget", SCHEMAS).decode(payload)
    assert err.value.reason == reason


def test_truncated_and_trailing_bytes_are_corrupt():
    codec = AvroCodec("widget", SCHEMAS)
    data = codec.encode(_widget())
    for bad in (data[:-3], data + b"\x00\x01"):
        with pytest.raises(AvroDecodeError) as err:
            codec.decode(bad)
        assert err.value.reason == "avro_corrupt"


def test_load_schema_names_the_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.avsc"):
        load_schema("nope", SCHEMAS)


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
