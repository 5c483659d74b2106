"""Avro codec for orderflow's Kafka payloads: the Confluent wire format, with schema resolution.

Every payload is written in the **Confluent wire format**: the magic byte ``00``, the 4-byte big-endian id of
the writer schema in the schema registry, then the Avro binary body. The registry assigns the id when the
schema is registered under the topic's subject (TopicNameStrategy: ``<topic>-value``); every tool of the
Kafka ecosystem (Kafka Connect, ksqlDB, Flink SQL, Kafka UI, REST proxies) reads it.

A reader resolves the writer schema by its id (once: a bounded cache of parsed schemas) and reads the record
into the current reader schema (``orderflow/schemas/{name}.avsc``) through Avro schema resolution, so records
of any compatible version decode into today's shape.

A topic may also hold records in Avro *single-object encoding* (``C3 01``, the 8-byte CRC-64-AVRO
fingerprint of the writer schema, the body), which needs no registry: they are read through the versions
kept in ``orderflow/schemas/history/{name}.*.avsc``. Anything else is refused with a reason naming what was expected.

This module does no I/O: the registry is a ``SchemaSource`` handed in (``orderflow.clients.SchemaRegistry``).
When the registry cannot be asked it raises ``SchemaRegistryUnavailable`` (a ``ConnectionError``: transient
under the outage rule, ``orderflow.io.retry``), never an ``AvroDecodeError``: an outage is not bad data.
``orderflow.io.avro.DecodeAvro`` is the Beam side.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import pathlib
import threading
from typing import Protocol

import cachetools
import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = ["AvroCodec", "AvroDecodeError", "IncompatibleSchema", "SCHEMAS_DIR", "SchemaNotFound",
           "SchemaRegistryUnavailable", "SchemaSource", "TOPIC_SCHEMAS", "confluent_header", "load_schema",
           "payload_format", "schema_fingerprint", "subject_for"]

SCHEMAS_DIR = pathlib.Path(__file__).resolve().parent.parent / "schemas"
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LENGTH = 5  # magic byte + 4-byte schema id
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_SINGLE_OBJECT_HEADER_LENGTH = len(SINGLE_OBJECT_MARKER) + 8
# The schema of each Avro topic, by its field in ``orderflow.config.Topics`` (the dead-letter topic carries the
# refused payloads as they came, with the reason in headers: no schema of its own).
TOPIC_SCHEMAS = {"orders": "order", "priced_orders": "priced_order", "keepalive": "restaurant_keepalive",
                 "availability": "restaurant_availability"}
# Parsed writer schemas kept per codec: a topic sees a handful of versions; the bound keeps a hostile stream of
# made-up ids from growing memory.
WRITER_CACHE_SIZE = 256
# What the registry answered, kept per process and shared by every codec of the same registry: a runner makes
# new DoFn instances (new codecs, empty caches) as it pleases, e.g. Prism per bundle processor, and each would
# otherwise ask the registry again, and wait for it through an outage, for an id this process already knows.
# Keys: (registry, subject, schema text) -> id and (registry, id) -> schema text.
_ANSWERS: cachetools.LRUCache = cachetools.LRUCache(4 * WRITER_CACHE_SIZE)
_ANSWERS_LOCK = threading.Lock()


# Ids the registry answered "not found" for, per process like the answers above, forgotten after
# UNKNOWN_SCHEMA_SECONDS: a stream of records carrying a made-up id would otherwise send each of them to the
# registry (a round trip of 10-30 ms, blocking the bundle, and the registry's CPU: issue 26's backlog runs
# spent seconds of every 10 there). An id is registered before any producer can write it, so a "not found"
# stays true; forgetting it after a while covers a registry restored from a backup meanwhile.
UNKNOWN_SCHEMA_SECONDS = 60.0
_UNKNOWN_IDS: cachetools.TTLCache = cachetools.TTLCache(4 * WRITER_CACHE_SIZE, UNKNOWN_SCHEMA_SECONDS)


def _remembered(key: tuple, ask):
    """The registry's answer for ``key``: from this process's cache, else ``ask()`` (kept when it answers)."""
    with _ANSWERS_LOCK:
        answer = _ANSWERS.get(key)
    if answer is None:
        answer = ask()
        with _ANSWERS_LOCK:
            _ANSWERS[key] = answer
    return answer


def _registry_key(registry: SchemaSource):
    return getattr(registry, "url", None) or id(registry)


class AvroDecodeError(ValueError):
    """Bytes that are not a decodable Avro record of the expected schema; ``reason`` is the dead-letter reason:

    ``avro_empty``, ``avro_bad_magic`` (neither the Confluent wire format nor the former single-object
    encoding), ``avro_truncated`` (shorter than its header or its record), ``avro_unknown_schema`` (an id the
    registry does not know, or a fingerprint of no known version), ``avro_schema_mismatch`` (the writer schema
    cannot be read as this codec's schema: a record of another topic), ``avro_corrupt``.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SchemaRegistryUnavailable(ConnectionError):
    """The schema registry could not answer (down, timing out, failing): retried under the outage rule."""


class SchemaNotFound(LookupError):
    """The registry answered: it knows no schema of that id (or subject)."""


class IncompatibleSchema(ValueError):
    """The registry refused a schema under a subject (its compatibility rule); the message says why."""


class SchemaSource(Protocol):
    """What the codec needs from a schema registry (``orderflow.clients.SchemaRegistry`` in production)."""

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (JSON text) under ``subject``, registering it if new; ``IncompatibleSchema``
        when the subject's compatibility rule refuses it."""
        ...

    def schema(self, schema_id: int) -> str:
        """The JSON text of schema ``schema_id``; ``SchemaNotFound`` when the registry has none."""
        ...


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


def subject_for(topic: str) -> str:
    """The registry subject of a topic's values: TopicNameStrategy, ``<topic>-value``."""
    return f"{topic}-value"


def confluent_header(schema_id: int) -> bytes:
    """The 5 bytes that open every record of schema ``schema_id`` in the Confluent wire format."""
    return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")


def payload_format(data: bytes | None) -> str:
    """What a payload's first bytes say it is: "confluent", "single-object" or "unknown"."""
    if data and data[0] == CONFLUENT_MAGIC:
        return "confluent"
    if data and data[:2] == SINGLE_OBJECT_MARKER:
        return "single-object"
    return "unknown"


class AvroCodec:
    """Encodes dicts with the current schema ``name``; decodes records of any version of it.

    ``codec.encode(record) -> bytes`` writes the Confluent wire format with the current schema's id under
    ``subject`` (looked up, or registered, once through ``registry``); ``codec.decode(data) -> dict`` reads
    with whichever schema wrote ``data`` (by registry id, or by fingerprint for the former single-object
    encoding) and resolves it to the current one, raising ``AvroDecodeError`` (``.reason``, ``.detail``) when
    it cannot and ``SchemaRegistryUnavailable`` when the registry must be asked and cannot answer.
    ``encode_single_object`` writes the former format (records "written before the switch").

    Instances are cheap to pickle (schemas are parsed and ids resolved lazily, the registry client travels
    as its URL), so DoFns can hold one.
    """

    def __init__(self, name: str, schema_dir: str | pathlib.Path | None = None, *,
                 registry: SchemaSource | None = None, subject: str | None = None,
                 cache_size: int = WRITER_CACHE_SIZE):
        self.name = name
        self.schema_dir = str(schema_dir) if schema_dir else None
        self.registry = registry
        self.subject = subject
        self.cache_size = cache_size
        self._state: tuple | None = None
        self._header: bytes | None = None
        self._writers: cachetools.LRUCache = cachetools.LRUCache(cache_size)

    def __getstate__(self):
        return {"name": self.name, "schema_dir": self.schema_dir, "registry": self.registry,
                "subject": self.subject, "cache_size": self.cache_size}

    def __setstate__(self, state):
        self.__init__(state["name"], state["schema_dir"], registry=state["registry"], subject=state["subject"],
                      cache_size=state["cache_size"])

    def _load(self):
        reader_json = load_schema(self.name, self.schema_dir)
        reader = fastavro.parse_schema(reader_json)
        canonical = to_parsing_canonical_form(reader)
        legacy = {schema_fingerprint(reader_json): reader}
        for path in history_schema_paths(self.name, self.schema_dir):
            writer_json = _read_schema_file(path)
            legacy.setdefault(schema_fingerprint(writer_json), fastavro.parse_schema(copy.deepcopy(writer_json)))
        self._state = (reader, legacy, SINGLE_OBJECT_MARKER + schema_fingerprint(reader_json), canonical,
                       json.dumps(reader_json, separators=(",", ":")))
        return self._state

    @property
    def schema(self) -> dict:
        """The current (reader and writer) schema, parsed."""
        return (self._state or self._load())[0]

    @property
    def schema_text(self) -> str:
        """The current schema as the JSON text registered under the subject."""
        return (self._state or self._load())[4]

    @property
    def fingerprint(self) -> bytes:
        """The CRC-64-AVRO fingerprint of the current schema (what single-object encoding carried)."""
        return (self._state or self._load())[2][2:]

    # -- writing ----------------------------------------------------------------------------------------
    @property
    def schema_id(self) -> int:
        """The registry id of the current schema under ``subject``: registered (or found) once, then cached.

        Raises ``SchemaRegistryUnavailable`` while the registry cannot answer the first time, and
        ``IncompatibleSchema`` when the subject's compatibility rule refuses the schema."""
        return int.from_bytes(self.header()[1:], "big")

    def header(self) -> bytes:
        """The 5-byte Confluent header of records of the current schema (see ``schema_id``)."""
        if self._header is None:
            if self.registry is None or self.subject is None:
                raise ValueError(f"AvroCodec({self.name!r}) has no registry and subject to write the Confluent "
                                 "wire format with")
            registry, subject, text = self.registry, self.subject, self.schema_text
            self._header = confluent_header(_remembered((_registry_key(registry), subject, text),
                                                        lambda: registry.register(subject, text)))
        return self._header

    def encode(self, record: dict) -> bytes:
        header = self._header or self.header()
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, self.schema, record)
        return out.getvalue()

    def encode_single_object(self, record: dict) -> bytes:
        """``record`` in the former single-object encoding (no registry): what topics held before the switch."""
        reader, _, header, *_ = self._state or self._load()
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, reader, record)
        return out.getvalue()

    # -- reading ----------------------------------------------------------------------------------------
    def writer_schema(self, schema_id: int):
        """The parsed writer schema of registry id ``schema_id`` (cached); None when the registry knows no
        such id (remembered for ``UNKNOWN_SCHEMA_SECONDS``). Raises ``SchemaRegistryUnavailable`` when it must be
        asked and cannot answer."""
        writer = self._writers.get(schema_id)
        if writer is None:
            if self.registry is None:
                raise AvroDecodeError("avro_unknown_schema", f"schema id {schema_id}: this reader of {self.name!r} "
                                                             "has no schema registry to resolve it")
            registry = self.registry
            key = (_registry_key(registry), schema_id)
            with _ANSWERS_LOCK:
                if key in _UNKNOWN_IDS:
                    return None
            try:
                text = _remembered(key, lambda: registry.schema(schema_id))
            except SchemaNotFound:
                with _ANSWERS_LOCK:
                    _UNKNOWN_IDS[key] = True
                return None
            parsed = fastavro.parse_schema(json.loads(text))
            reader, *_, canonical, _ = self._state or self._load()
            # The current schema itself: read without resolution (the common case, and the fastest).
            writer = self._writers[schema_id] = reader if to_parsing_canonical_form(parsed) == canonical else parsed
        return writer

    def decode(self, data: bytes) -> dict:
        reader, legacy, *_ = self._state or self._load()
        if not data:
            raise AvroDecodeError("avro_empty", "no payload" if data is None else "empty payload")
        if data[0] == CONFLUENT_MAGIC:
            if len(data) < CONFLUENT_HEADER_LENGTH:
                raise AvroDecodeError("avro_truncated", f"{self.name}: {len(data)} bytes, shorter than the 5-byte "
                                                        "Confluent header (magic byte 0, 4-byte schema id)")
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_LENGTH], "big")
            writer = self.writer_schema(schema_id)
            if writer is None:
                raise AvroDecodeError("avro_unknown_schema",
                                      f"schema id {schema_id} is not in the schema registry ({self.name})")
            start = CONFLUENT_HEADER_LENGTH
        elif data[:2] == SINGLE_OBJECT_MARKER:
            if len(data) < _SINGLE_OBJECT_HEADER_LENGTH:
                raise AvroDecodeError("avro_truncated", f"{self.name}: {len(data)} bytes, shorter than the "
                                                        "single-object header (C3 01 and an 8-byte fingerprint)")
            writer = legacy.get(bytes(data[2:_SINGLE_OBJECT_HEADER_LENGTH]))
            if writer is None:
                raise AvroDecodeError(
                    "avro_unknown_schema",
                    f"single-object encoding (the format before the schema registry) with writer fingerprint "
                    f"{bytes(data[2:_SINGLE_OBJECT_HEADER_LENGTH]).hex()}, not a version of {self.name!r} in "
                    f"schemas/history/: add that version there to read it")
            start = _SINGLE_OBJECT_HEADER_LENGTH
        else:
            raise AvroDecodeError(
                "avro_bad_magic",
                f"expected the Confluent wire format (magic byte 00, 4-byte schema id) or the former Avro "
                f"single-object encoding (C3 01), got {bytes(data[:10])!r}")
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            record = fastavro.schemaless_reader(buf, writer, None if writer is reader else reader)
        except EOFError as exc:
            raise AvroDecodeError("avro_truncated", f"{self.name}: the record ends early ({len(data)} bytes): "
                                                    f"{exc}") from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise AvroDecodeError("avro_schema_mismatch", f"{self.name}: the writer schema cannot be read as "
                                                          f"{self.name}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on corrupt input
            raise AvroDecodeError("avro_corrupt", f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise AvroDecodeError("avro_corrupt", f"{self.name}: {len(data) - buf.tell()} trailing bytes after the record")
        if not isinstance(record, dict):  # every schema orderflow decodes is a record
            raise AvroDecodeError("avro_corrupt", f"{self.name}: not a record")
        return record
