"""AvroCodec: single-object encoding, schema resolution, a reason for every undecodable payload."""
from __future__ import annotations

import decimal
import struct

import pytest

from orderflow.model.avro import AvroCodec, AvroDecodeError, load_schema, schema_fingerprint
from tests.support.avro_history import MADE_AT, SCHEMAS, encode_v1
from tests.support.avro_history import widget as _widget


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
