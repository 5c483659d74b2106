"""Avro bytes as an old producer wrote them: the ``widget`` test schema's history version (tests/io/schemas)."""
from __future__ import annotations

import io
import json
import pathlib

import fastavro

from orderflow.model.avro import schema_fingerprint

WIDGET_V1 = pathlib.Path(__file__).parents[1] / "io" / "schemas" / "history" / "widget.v1.avsc"


def encode_v1(record: dict) -> bytes:
    """Writes with the old (history) schema, as an old producer would."""
    v1 = json.loads(WIDGET_V1.read_text())
    out = io.BytesIO()
    out.write(b"\xc3\x01" + schema_fingerprint(v1))
    fastavro.schemaless_writer(out, fastavro.parse_schema(v1), record)
    return out.getvalue()
