"""Normalises every accepted order input model into the canonical ``Order`` (``schemas/order.avsc``).

Accepted payloads (one Kafka record value, or one HTTP body):

- plain JSON: ``{"ativo": "WEGE3", "quantidade": 100, "token": "vitor"}`` (also a JSON list of them);
  English names ``asset`` / ``quantity`` / ``client_token`` and an optional ``id`` / ``order_id`` and
  ``timestamp`` / ``event_time`` (epoch millis or ISO-8601) are accepted too;
- the Kafka REST-proxy envelope: ``{"records": [{"value": {...}}, ...]}``;
- CSV: one or more lines ``ativo,quantidade,token[,order_id]`` (an optional header line is skipped);
- canonical Avro: single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint + body) of ``Order``.

A payload is all or nothing: if one of its orders is invalid the whole payload is rejected with the
reason and the index of the offending order, and goes to the dead-letter topic untouched, so it can be
fixed and replayed as it was sent.

An order without an id gets a deterministic one from where it came from (``source``, the Kafka
coordinates ``topic/partition/offset``, plus its index in the payload): a redelivered record is
recognised as the same order. Without a source the id is a digest of the payload and the index.
"""
from __future__ import annotations

import datetime
import hashlib
import re
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

from orderflow.io.avro import AvroCodec, AvroDecodeError
from orderflow.io.dead_letter import DeadLetter
from orderflow.io.kafka_record import KafkaRecord
from orderflow.transforms.order_batch import OrderBatch

SOURCE_FORMATS = ("JSON", "REST_PROXY", "CSV", "AVRO")
DEAD_LETTER_TAG = "dead_letter"
STAGE = "normalize_orders"

_AVRO_MAGIC = b"\xc3\x01"  # single-object encoding marker
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.]{0,15}$")
_ASSET_FIELDS = ("ativo", "asset")
_QUANTITY_FIELDS = ("quantidade", "quantity")
_TOKEN_FIELDS = ("token", "client_token")
_ID_FIELDS = ("order_id", "id")
_TIME_FIELDS = ("event_time", "timestamp")
_UTC = datetime.timezone.utc


class InvalidOrder(ValueError):
    """A payload that is not a valid order: ``reason`` is machine-readable, ``detail`` is for people.

    Reasons: ``unparseable``, ``missing_asset``, ``invalid_asset``, ``invalid_quantity``, ``missing_token``,
    ``invalid_order_id``, ``invalid_event_time``.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_ORDER_CODEC = AvroCodec("order")


def encode_order_avro(order: dict) -> bytes:
    """Canonical Avro single-object encoding of an Order dict (what the Avro input model carries)."""
    return _ORDER_CODEC.encode(order)


def _decode_order_avro(payload: bytes) -> dict:
    try:
        return _ORDER_CODEC.decode(payload)
    except AvroDecodeError as exc:
        raise InvalidOrder("unparseable", f"{exc.reason}: {exc.detail}") from None


def _first(record: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        value = record.get(name)
        if value is not None:
            return value
    return None


def _quantity(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise InvalidOrder("invalid_quantity", f"{where}: quantity {value!r} is not an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidOrder("invalid_quantity", f"{where}: quantity {value!r} is not an integer") from None
    elif isinstance(value, float):
        if not value.is_integer():
            raise InvalidOrder("invalid_quantity", f"{where}: quantity {value!r} is not an integer")
        value = int(value)
    elif not isinstance(value, int):
        raise InvalidOrder("invalid_quantity", f"{where}: quantity {value!r} is missing or not an integer")
    if value <= 0:
        raise InvalidOrder("invalid_quantity", f"{where}: quantity must be > 0, got {value}")
    if value >= 2**63:
        raise InvalidOrder("invalid_quantity", f"{where}: quantity {value} does not fit a long")
    return value


def _event_time(value: Any, default_ms: int | None, where: str) -> datetime.datetime:
    if value is None:
        if default_ms is None:
            return datetime.datetime.now(_UTC)
        return datetime.datetime.fromtimestamp(default_ms / 1000, _UTC)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_UTC)
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.datetime.fromtimestamp(value / 1000, _UTC)
        if isinstance(value, str):
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise InvalidOrder("invalid_event_time", f"{where}: event time {value!r} is neither epoch millis nor ISO-8601")


def _order_id(value: Any, source: str, payload: bytes, index: int, where: str) -> str:
    if value is None or value == "":
        if source:
            return f"{source}#{index}"
        return f"sha256:{hashlib.sha256(payload).hexdigest()[:32]}#{index}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidOrder("invalid_order_id", f"{where}: order id {value!r} is not a string")
    value = str(value).strip()
    if not value or len(value) > 200:
        raise InvalidOrder("invalid_order_id", f"{where}: order id must have 1..200 characters")
    return value


def _canonical(asset: Any, quantity: Any, token: Any, order_id: Any, event_time: Any, source_format: str,
               *, source: str, payload: bytes, index: int, timestamp_ms: int | None) -> dict:
    where = f"order {index}"
    if asset is None or (isinstance(asset, str) and not asset.strip()):
        raise InvalidOrder("missing_asset", f"{where}: no asset (ativo)")
    if not isinstance(asset, str) or not _TICKER.match(asset.strip().upper()):
        raise InvalidOrder("invalid_asset", f"{where}: asset {asset!r} is not a ticker")
    if token is None or not isinstance(token, str) or not token.strip():
        raise InvalidOrder("missing_token", f"{where}: no client token")
    return {
        "order_id": _order_id(order_id, source, payload, index, where),
        "client_token": token.strip(),
        "asset": asset.strip().upper(),
        "quantity": _quantity(quantity, where),
        "event_time": _event_time(event_time, timestamp_ms, where),
        "source_format": source_format,
    }


def _from_mapping(record: Any, source_format: str, **context) -> dict:
    if not isinstance(record, dict):
        raise InvalidOrder("unparseable", f"order {context['index']}: expected a JSON object, got {type(record).__name__}")
    return _canonical(_first(record, _ASSET_FIELDS), _first(record, _QUANTITY_FIELDS), _first(record, _TOKEN_FIELDS),
                      _first(record, _ID_FIELDS), _first(record, _TIME_FIELDS), source_format, **context)


def _parse_json(payload: bytes, source: str, timestamp_ms: int | None) -> list[dict]:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidOrder("unparseable", f"invalid JSON: {exc}") from None
    context = {"source": source, "payload": payload, "timestamp_ms": timestamp_ms}
    if isinstance(document, dict) and "records" in document:
        records = document["records"]
        if not isinstance(records, list) or not records:
            raise InvalidOrder("unparseable", "REST-proxy envelope: 'records' must be a non-empty list")
        orders = []
        for index, record in enumerate(records):
            value = record.get("value") if isinstance(record, dict) else None
            if isinstance(value, str):  # some producers send the value as embedded JSON text
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise InvalidOrder("unparseable", f"order {index}: value is not JSON") from None
            orders.append(_from_mapping(value, "REST_PROXY", index=index, **context))
        return orders
    if isinstance(document, list):
        if not document:
            raise InvalidOrder("unparseable", "empty JSON list")
        return [_from_mapping(item, "JSON", index=i, **context) for i, item in enumerate(document)]
    return [_from_mapping(document, "JSON", index=0, **context)]


def _parse_csv(payload: bytes, source: str, timestamp_ms: int | None) -> list[dict]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidOrder("unparseable", "neither JSON, Avro nor UTF-8 CSV") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].split(",")[0].strip().lower() in ("ativo", "asset"):
        lines = lines[1:]
    if not lines:
        raise InvalidOrder("unparseable", "empty payload")
    orders = []
    for index, line in enumerate(lines):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) not in (3, 4):
            raise InvalidOrder("unparseable", f"order {index}: CSV line needs ativo,quantidade,token[,order_id]: {line[:80]!r}")
        orders.append(_canonical(fields[0], fields[1], fields[2], fields[3] if len(fields) == 4 else None, None,
                                 "CSV", source=source, payload=payload, index=index, timestamp_ms=timestamp_ms))
    return orders


def parse_orders(payload: bytes, *, source: str = "", timestamp_ms: int | None = None) -> list[dict]:
    """Parses one payload in any accepted model into canonical Order dicts, or raises InvalidOrder.

    ``source`` (e.g. Kafka coordinates) makes ids of orders without one deterministic; ``timestamp_ms``
    is the event time of orders without one (the Kafka record timestamp; now when absent).
    """
    if not payload:
        raise InvalidOrder("unparseable", "empty payload")
    if isinstance(payload, str):
        payload = payload.encode()
    if payload.startswith(_AVRO_MAGIC):
        record = _decode_order_avro(payload)
        return [_canonical(record["asset"], record["quantity"], record["client_token"], record["order_id"],
                           record["event_time"], "AVRO", source=source, payload=payload, index=0,
                           timestamp_ms=timestamp_ms)]
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        return _parse_json(payload, source, timestamp_ms)
    return _parse_csv(payload, source, timestamp_ms)


class _NormalizeBatch(beam.DoFn):
    """One call per batch of Kafka records: a list of Order dicts out, dead letters on their tag.

    Each order dict also carries ``source`` (Kafka coordinates + index), the identity of the record that
    delivered it, which the Postgres sink uses to recognise a replay of the same record.
    """

    def __init__(self):
        self.records_in = Metrics.counter("orders", "records_in")
        self.orders_out = Metrics.counter("orders", "orders_normalized")
        self.dead_letters = Metrics.counter("orders", "dead_letters_normalize")
        self._reason_counters = {}

    def _dead(self, reason: str):
        counter = self._reason_counters.get(reason)
        if counter is None:
            counter = self._reason_counters[reason] = Metrics.counter("orders", f"dead_letter_{reason}")
        return counter

    def process(self, batch):
        records = batch if isinstance(batch, list) else [batch]
        orders = OrderBatch()
        for record in records:
            if isinstance(record, KafkaRecord):
                payload, source, timestamp_ms = record.value, record.coordinates, record.timestamp_ms
            else:
                payload, source, timestamp_ms = record, "", None
            try:
                parsed = parse_orders(payload or b"", source=source, timestamp_ms=timestamp_ms)
            except InvalidOrder as invalid:
                self._dead(invalid.reason).inc()
                self.dead_letters.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    invalid.reason, invalid.detail, payload or b"", source, STAGE))
                continue
            for index, order in enumerate(parsed):
                # Without coordinates there is no record identity to recognise a replay by.
                order["source"] = f"{source}#{index}" if source else ""
            orders.extend(parsed)
        self.records_in.inc(len(records))
        self.orders_out.inc(len(orders))
        if orders:
            yield orders


class NormalizeOrders(beam.PTransform):
    """KafkaRecord, bytes, or lists of them (batches) -> ``OrderBatch`` (list of Order dicts) per element.

    Returns a DoOutputsTuple: the main output (batches of orders) and ``"dead_letter"`` (DeadLetter).
    """

    def expand(self, records):
        return records | "ParseOrders" >> beam.ParDo(_NormalizeBatch()).with_output_types(OrderBatch).with_outputs(
            DEAD_LETTER_TAG, main="orders")
