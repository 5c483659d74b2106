"""Avro codec for orderflow's Kafka payloads: single-object encoding with schema resolution.

Every payload is written in Avro *single-object encoding*: the marker ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body. The
fingerprint names the writer schema, so a reader that knows older versions of a schema (kept in
``orderflow/schemas/history/{name}.*.avsc``) decodes records written with any of them into the current
reader schema (``orderflow/schemas/{name}.avsc``) through Avro schema resolution.

``orderflow.io.avro.DecodeAvro`` is the Beam side: bytes (or ``KafkaRecord``) in, dicts out, and anything
that does not decode goes to the ``dead_letter`` output with the reason instead of being dropped.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import pathlib

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS_DIR = pathlib.Path(__file__).resolve().parent.parent / "schemas"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_LENGTH = len(SINGLE_OBJECT_MARKER) + 8


class AvroDecodeError(ValueError):
    """Bytes that are not a decodable single-object Avro record of the expected schema."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@functools.cache
def _read_schema_file(path: pathlib.Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_schema(name: str, schema_dir: str | pathlib.Path | None = None) -> dict:
    """The parsed JSON of ``{schema_dir}/{name}.avsc`` (default ``orderflow/schemas``); ``name`` is the file stem."""
    path = pathlib.Path(schema_dir or SCHEMAS_DIR) / f"{name}.avsc"
    if not path.is_file():
        raise FileNotFoundError(f"Avro schema {name!r} not found: {path}")
    return copy.deepcopy(_read_schema_file(path))


def history_schema_paths(name: str, schema_dir: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Older writer schemas of ``name``: ``{schema_dir}/history/{name}.*.avsc``, in name order."""
    return sorted((pathlib.Path(schema_dir or SCHEMAS_DIR) / "history").glob(f"{name}.*.avsc"))


def schema_fingerprint(schema: dict | str | list) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form."""
    # fastavro renders the CRC-64-AVRO fingerprint as hex of the little-endian bytes already.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(fastavro.parse_schema(schema)), "CRC-64-AVRO"))


class AvroCodec:
    """Encodes dicts with the current schema ``name``; decodes records of any known version of it.

    ``codec.encode(record) -> bytes`` writes single-object encoding with the current schema;
    ``codec.decode(data) -> dict`` reads with whichever known schema wrote ``data`` and resolves it to
    the current one, raising ``AvroDecodeError`` (``.reason``, ``.detail``) when it cannot.
    Instances are cheap to pickle (schemas are parsed lazily), so DoFns can hold one.
    """

    def __init__(self, name: str, schema_dir: str | pathlib.Path | None = None):
        self.name = name
        self.schema_dir = str(schema_dir) if schema_dir else None
        self._state = None

    def __getstate__(self):
        return {"name": self.name, "schema_dir": self.schema_dir, "_state": None}

    def _load(self):
        reader_json = load_schema(self.name, self.schema_dir)
        reader = fastavro.parse_schema(reader_json)
        writers = {schema_fingerprint(reader_json): reader}
        for path in history_schema_paths(self.name, self.schema_dir):
            writer_json = _read_schema_file(path)
            writers.setdefault(schema_fingerprint(writer_json), fastavro.parse_schema(copy.deepcopy(writer_json)))
        header = SINGLE_OBJECT_MARKER + schema_fingerprint(reader_json)
        self._state = (reader, writers, header)
        return self._state

    @property
    def schema(self) -> dict:
        """The current (reader and writer) schema, parsed."""
        return (self._state or self._load())[0]

    @property
    def fingerprint(self) -> bytes:
        return (self._state or self._load())[2][2:]

    def encode(self, record: dict) -> bytes:
        reader, _, header = self._state or self._load()
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, reader, record)
        return out.getvalue()

    def decode(self, data: bytes) -> dict:
        reader, writers, _ = self._state or self._load()
        if data is None:
            raise AvroDecodeError("avro_empty", "no payload (null value)")
        if len(data) < _HEADER_LENGTH or data[:2] != SINGLE_OBJECT_MARKER:
            raise AvroDecodeError(
                "avro_not_single_object",
                f"expected the Avro single-object marker C3 01 and an 8-byte fingerprint, got {bytes(data[:10])!r}",
            )
        writer = writers.get(bytes(data[2:_HEADER_LENGTH]))
        if writer is None:
            raise AvroDecodeError(
                "avro_unknown_schema",
                f"writer schema fingerprint {bytes(data[2:_HEADER_LENGTH]).hex()} is not a known version of {self.name!r}",
            )
        buf = io.BytesIO(data)
        buf.seek(_HEADER_LENGTH)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
            raise AvroDecodeError("avro_corrupt", f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise AvroDecodeError("avro_corrupt", f"{self.name}: {len(data) - buf.tell()} trailing bytes after the record")
        if not isinstance(record, dict):  # every schema orderflow decodes is a record
            raise AvroDecodeError("avro_corrupt", f"{self.name}: not a record")
        return record
