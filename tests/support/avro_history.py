"""The ``widget`` test schema (tests/io/schemas): a record of it, and Avro bytes as an old producer wrote them (the
schema's history version)."""
from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import pathlib

import fastavro

from orderflow.model.avro import schema_fingerprint

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
