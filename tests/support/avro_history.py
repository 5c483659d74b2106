"""The ``widget`` test schema (tests/io/schemas): a record of it, and Avro bytes as an old producer wrote them (the
schema's history version)."""
from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import pathlib

import fastavro

from orderflow.model.avro import AvroCodec, confluent_header, schema_fingerprint

SCHEMAS = pathlib.Path(__file__).parents[1] / "io" / "schemas"
WIDGET_V1 = SCHEMAS / "history" / "widget.v1.avsc"
MADE_AT = dt.datetime(2026, 11, 21, 12, 30, 15, 123000, tzinfo=dt.timezone.utc)


def widget(i: int = 1, colour: str | None = "red") -> dict:
    """A record of the current ``widget`` schema."""
    return {"id": f"w{i}", "size": 10 + i, "made_at": MADE_AT, "price": decimal.Decimal("12.3400"), "colour": colour}


def encode_v1(record: dict) -> bytes:
    """Writes with the old (history) schema, as an old producer would."""
    v1 = json.loads(WIDGET_V1.read_text())
    out = io.BytesIO()
    out.write(b"\xc3\x01" + schema_fingerprint(v1))
    fastavro.schemaless_writer(out, fastavro.parse_schema(v1), record)
    return out.getvalue()


def widget_codec(registry_url: str, subject: str) -> AvroCodec:
    """The ``widget`` codec writing the Confluent wire format under ``subject`` of the registry at ``registry_url``."""
    from orderflow.clients import SchemaRegistry

    return AvroCodec("widget", SCHEMAS, registry=SchemaRegistry(registry_url), subject=subject)


def encode_v1_confluent(registry_url: str, subject: str, record: dict) -> bytes:
    """Writes with the old (history) schema in the Confluent wire format, registered under ``subject``, as an old
    producer of the registry era would."""
    from orderflow.clients import SchemaRegistry

    v1 = json.loads(WIDGET_V1.read_text())
    schema_id = SchemaRegistry(registry_url).register(subject, json.dumps(v1))
    out = io.BytesIO()
    out.write(confluent_header(schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(v1), record)
    return out.getvalue()


def evolved(name: str, field: str = "channel", default: str = "web") -> dict:
    """Schema ``name`` of orderflow/schemas evolved compatibly (BACKWARD and FORWARD): one more string field,
    with a default."""
    from orderflow.model.avro import load_schema

    schema = load_schema(name)
    schema["fields"].append({"name": field, "type": "string", "default": default})
    return schema


def register_and_encode(registry_url: str, subject: str, schema: dict, records: list[dict]) -> list[bytes]:
    """``records`` written with ``schema`` in the Confluent wire format, the schema registered under ``subject``
    (as a producer of that version does)."""
    from orderflow.clients import SchemaRegistry

    header = confluent_header(SchemaRegistry(registry_url).register(subject, json.dumps(schema)))
    parsed = fastavro.parse_schema(schema)
    encoded = []
    for record in records:
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, parsed, record)
        encoded.append(out.getvalue())
    return encoded


def order_with_quantity_as_text() -> dict:
    """``Order`` broken incompatibly: its quantity a string, which today's schema (a long) cannot read, nor the
    other way round."""
    from orderflow.model.avro import load_schema

    schema = load_schema("order")
    schema["fields"] = [{**f, "type": "string"} if f["name"] == "quantity" else f for f in schema["fields"]]
    return schema
