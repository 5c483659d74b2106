"""AvroCodec: the Confluent wire format against the stack's schema registry, schema resolution, the former
single-object encoding still read, and a reason for every undecodable payload."""
from __future__ import annotations

import decimal
import json
import struct
import time

import cachetools
import pytest

from orderflow.clients import SchemaRegistry
from orderflow.model import avro
from orderflow.model.avro import (
    AvroCodec,
    AvroDecodeError,
    SchemaRegistryUnavailable,
    confluent_header,
    load_schema,
    schema_fingerprint,
)
from tests.support.avro_history import MADE_AT, SCHEMAS, encode_v1, encode_v1_confluent, widget_codec
from tests.support.avro_history import widget as _widget
from tests.support.naming import unique_name

OLD = {"id": "w9", "size": 7, "made_at": MADE_AT, "price": decimal.Decimal("1.5000")}


@pytest.fixture
def registry_url(stack_settings) -> str:
    return stack_settings.schema_registry_url


@pytest.fixture
def codec(registry_url) -> AvroCodec:
    return widget_codec(registry_url, unique_name("widget") + "-value")


def test_crc64_avro_fingerprint_matches_the_avro_specification():
    # The Avro spec's test vector: fingerprint64("null") = 7195948357588979594, little-endian in the header.
    assert schema_fingerprint("null") == struct.pack("<q", 7195948357588979594)


def test_encode_writes_the_confluent_wire_format_with_the_registry_id(codec, registry_url):
    data = codec.encode(_widget())
    # The id is the one the registry holds for this subject's schema, asked here over HTTP apart from the codec.
    registered = SchemaRegistry(registry_url).client.get_latest_version(codec.subject)
    assert data[:5] == b"\x00" + registered.schema_id.to_bytes(4, "big")
    assert json.loads(registered.schema.schema_str)["name"] == "Widget"
    assert codec.decode(data) == _widget()


def test_an_old_writer_schema_is_resolved_to_the_current_reader_schema(codec, registry_url):
    old = encode_v1_confluent(registry_url, codec.subject + "-v1", OLD)
    assert AvroCodec("widget", SCHEMAS, registry=SchemaRegistry(registry_url)).decode(old) == {**OLD, "colour": None}


def test_records_written_before_the_registry_are_still_read():
    # Single-object encoding (C3 01 + fingerprint): no registry needed, the history versions resolve it.
    assert AvroCodec("widget", SCHEMAS).decode(encode_v1(OLD)) == {**OLD, "colour": None}
    assert AvroCodec("widget", SCHEMAS).decode(AvroCodec("widget", SCHEMAS).encode_single_object(_widget())) == _widget()


@pytest.mark.parametrize("payload, reason", [
    (b"", "avro_empty"),
    (None, "avro_empty"),
    (b'{"id": "json, not avro"}', "avro_bad_magic"),
    (b"\x01\x00\x00\x00\x01\x02a", "avro_bad_magic"),
    (b"\x00\x00\x01", "avro_truncated"),
    (b"\xc3\x01\x00\x00", "avro_truncated"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02a", "avro_unknown_schema"),
    (confluent_header(2_000_000_000) + b"\x02a", "avro_unknown_schema"),  # the registry is up and has no such id
])
def test_undecodable_bytes_raise_with_a_reason(payload, reason, registry_url):
    with pytest.raises(AvroDecodeError) as err:
        AvroCodec("widget", SCHEMAS, registry=SchemaRegistry(registry_url)).decode(payload)
    assert err.value.reason == reason


def test_a_payload_of_another_format_is_refused_naming_both_formats():
    with pytest.raises(AvroDecodeError, match="Confluent wire format .* single-object encoding"):
        AvroCodec("widget", SCHEMAS).decode(b"\x7b\x22")


def test_truncated_and_trailing_bytes(codec):
    data = codec.encode(_widget())
    with pytest.raises(AvroDecodeError) as err:
        codec.decode(data[:-3])
    assert err.value.reason == "avro_truncated"
    with pytest.raises(AvroDecodeError) as err:
        codec.decode(data + b"\x00\x01")
    assert err.value.reason == "avro_corrupt"


def test_a_record_of_another_schema_is_a_mismatch(registry_url):
    keepalive = AvroCodec("restaurant_keepalive", registry=SchemaRegistry(registry_url),
                          subject=unique_name("keepalive") + "-value")
    data = keepalive.encode({"restaurant_id": "r1", "sent_at": MADE_AT})
    with pytest.raises(AvroDecodeError) as err:
        AvroCodec("widget", SCHEMAS, registry=SchemaRegistry(registry_url)).decode(data)
    assert err.value.reason == "avro_schema_mismatch"


def test_registry_down_cached_schemas_keep_working_unknown_ones_are_unavailable(codec):
    data = codec.encode(_widget())
    assert codec.decode(data) == _widget()
    codec.registry = SchemaRegistry("http://127.0.0.1:9/apis/ccompat/v7", timeout=1)  # nothing listens there
    assert codec.encode(_widget(2)) [:5] == data[:5]  # the id is cached
    assert codec.decode(data) == _widget()  # the writer schema is cached
    with pytest.raises(SchemaRegistryUnavailable):  # an id never seen: an outage, not bad data
        codec.decode(confluent_header(1_999_999_999) + data[5:])
    fresh = AvroCodec("widget", SCHEMAS, registry=codec.registry, subject=codec.subject)
    with pytest.raises(SchemaRegistryUnavailable):
        fresh.encode(_widget())


def test_the_writer_cache_is_bounded(registry_url, codec):
    data = codec.encode(_widget())
    small = AvroCodec("widget", SCHEMAS, registry=SchemaRegistry(registry_url), cache_size=1)
    old = encode_v1_confluent(registry_url, codec.subject + "-v1", OLD)
    small.decode(data)
    small.decode(old)
    assert len(small._writers) == 1


def test_load_schema_names_the_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.avsc"):
        load_schema("nope", SCHEMAS)


class _CountingRegistry(SchemaRegistry):
    """The stack's registry, counting the schema lookups that reach it."""

    def __init__(self, url: str):
        super().__init__(url)
        self.lookups = 0

    def schema(self, schema_id: int) -> str:
        self.lookups += 1
        return super().schema(schema_id)


def test_an_id_the_registry_does_not_know_is_asked_once_not_per_record(registry_url, monkeypatch):
    monkeypatch.setattr(avro, "_UNKNOWN_IDS", cachetools.TTLCache(16, ttl=0.5))
    registry = _CountingRegistry(registry_url)
    unknown = confluent_header(1_999_999_001) + b"\x02a"
    for _ in range(5):  # a flood of records carrying a made-up id: every one a dead letter, one question
        with pytest.raises(AvroDecodeError) as err:
            AvroCodec("widget", SCHEMAS, registry=registry).decode(unknown)
        assert err.value.reason == "avro_unknown_schema"
    assert registry.lookups == 1
    time.sleep(0.6)  # forgotten after UNKNOWN_SCHEMA_SECONDS: the registry is asked again
    with pytest.raises(AvroDecodeError):
        AvroCodec("widget", SCHEMAS, registry=registry).decode(unknown)
    assert registry.lookups == 2
