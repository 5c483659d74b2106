"""Orders: every accepted input model parsed and validated into the canonical ``Order`` (``schemas/order.avsc``).

Accepted payloads (one Kafka record value, or one HTTP body):

- plain JSON: ``{"ativo": "WEGE3", "quantidade": 100, "token": "vitor"}`` (also a JSON list of them);
  English names ``asset`` / ``quantity`` / ``client_token`` and an optional ``id`` / ``order_id`` and
  ``timestamp`` / ``event_time`` (epoch millis or ISO-8601) are accepted too;
- the Kafka REST-proxy envelope: ``{"records": [{"value": {...}}, ...]}``;
- CSV: one or more lines ``ativo,quantidade,token[,order_id]`` (an optional header line is skipped);
- canonical Avro ``Order``: the Confluent wire format (``00`` + the 4-byte registry id of the writer schema +
  body; decoded by the registry-backed ``decode_avro`` the caller passes), or the single-object encoding
  (``C3 01`` + CRC-64-AVRO fingerprint + body), which needs no registry: dead letters' payloads use it.

A payload is all or nothing: if one of its orders is invalid the whole payload is rejected with the
reason and the index of the offending order, and goes to the dead-letter topic untouched, so it can be
fixed and replayed as it was sent.

An order without an id gets a deterministic one from where it came from (``source``, the Kafka
coordinates ``topic/partition/offset``, plus its index in the payload): a redelivered record is
recognised as the same order. Without a source the id is a digest of the payload and the index. A
caller that mints its own ids (the HTTP API) passes ``minted_id_prefix``: ids are then ``<prefix>-<index>``.

An Avro order keeps the input model its record states in ``source_format`` (the HTTP API encodes what it
accepted as JSON, REST-proxy or CSV into Avro, and that model is what is stored).

Every order is checked here against what every sink can hold (``OrderLimits``), so that a record no
sink would take never gets past the edge (the HTTP API shares this parser and answers 422 with the same
reason). The limits and their dead-letter reasons:

- ``client_token`` and ``order_id``: text of 1..``max_key_bytes`` (256) UTF-8 bytes without control
  characters (U+0000-U+001F, U+007F-U+009F; NUL is what Postgres text cannot hold). 256 bytes stays far
  under every sink's key limit: DynamoDB's 2,048-byte partition key, Postgres' 2,704-byte B-tree index
  row, Kafka's record key. Reasons ``invalid_token`` / ``token_too_long``, ``invalid_order_id`` /
  ``order_id_too_long``.
- ``quantity``: a whole number in 1..``max_quantity`` (10^12): a JSON/Avro integer (or integral float) or
  a string of ASCII digits only (``"5_000"``, ``"+5"`` and non-ASCII digits such as Arabic-Indic ones are
  refused, although Python's ``int()`` takes them). 10^12 keeps ``price * quantity`` (price: Avro
  decimal(18, 6)) and a client's daily sum within DynamoDB's 38 significant digits. Reasons
  ``invalid_quantity`` (not a positive whole number) and ``quantity_out_of_range`` (too large).
- ``event_time``: inside ``[now - max_event_age, now + max_event_lead]`` (default 3,660 days back, one
  day ahead; ``--order_max_event_age_days`` / ``--order_max_event_lead_hours``), which also keeps it
  far from the year 1 and year 9999 ends where time-zone arithmetic overflows. Reasons
  ``invalid_event_time`` (not a time) and ``event_time_out_of_range``.

``NormalizeOrders`` (``orderflow.transforms.normalize_orders``) counts each reason by the Beam counter
``orders/dead_letter_<reason>``.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
import reprlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypedDict

import orjson

from orderflow.model.avro import AvroCodec, AvroDecodeError, payload_format
from orderflow.model.dead_letter import DeadLetter

# Values quoted in refusals are shown bounded: a hostile value may be huge or nested a thousand deep (a plain
# repr of a 900-deep list raises RecursionError).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def _shown(value) -> str:
    return _REPR.repr(value)

SOURCE_FORMATS = ("JSON", "REST_PROXY", "CSV", "AVRO")
# The reason of a record the parser itself failed on (a bug the record exposed): it is kept as a dead letter.
NORMALIZE_FAILED = "normalize_failed"

_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.]{0,15}$")
_ASSET_FIELDS = ("ativo", "asset")
_QUANTITY_FIELDS = ("quantidade", "quantity")
_TOKEN_FIELDS = ("token", "client_token")
_ID_FIELDS = ("order_id", "id")
_TIME_FIELDS = ("event_time", "timestamp")
_UTC = datetime.timezone.utc
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MAX_KEY_BYTES = 256
MAX_QUANTITY = 10**12
MAX_EVENT_AGE = datetime.timedelta(days=3660)
MAX_EVENT_LEAD = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class OrderLimits:
    """What an order may hold so that every sink takes it (see the module docstring for the reasons).

    Args:
        max_key_bytes: most UTF-8 bytes of ``client_token`` and of a given ``order_id``.
        max_quantity: largest quantity.
        max_event_age: how far before now an event time may be.
        max_event_lead: how far after now an event time may be (clock skew).
    """

    max_key_bytes: int = MAX_KEY_BYTES
    max_quantity: int = MAX_QUANTITY
    max_event_age: datetime.timedelta = MAX_EVENT_AGE
    max_event_lead: datetime.timedelta = MAX_EVENT_LEAD

    def event_time_range(self, now: datetime.datetime | None = None) -> tuple[datetime.datetime, datetime.datetime]:
        """The accepted ``[earliest, latest]`` event times around ``now`` (default: the current time)."""
        now = now or datetime.datetime.now(_UTC)
        return now - self.max_event_age, now + self.max_event_lead


DEFAULT_LIMITS = OrderLimits()


class Order(TypedDict, total=False):
    """A canonical order (``schemas/order.avsc``), what ``parse_orders`` returns. ``source`` (the Kafka
    coordinates and index of the record that delivered it) is added by ``NormalizeOrders``."""

    order_id: str
    client_token: str
    asset: str
    quantity: int
    event_time: datetime.datetime
    source_format: str
    source: str


class PricedOrder(Order, total=False):
    """An ``Order`` with its price (``schemas/priced_order.avsc``), what ``pricing.price_order`` returns."""

    trade_day: datetime.date
    pricing_code: str
    price: Decimal
    total: Decimal


class OrderBatch(list):
    """A list of ``Order`` / ``PricedOrder`` dicts processed by one DoFn call: the element type of the orders
    pipeline between its per-batch DoFns (``orderflow.transforms.order_batch`` registers its Beam coder)."""

    def __reduce__(self):
        return OrderBatch, (list(self),)


class InvalidOrder(ValueError):
    """A payload that is not a valid order: ``reason`` is machine-readable, ``detail`` is for people.

    Reasons: ``unparseable``, ``missing_asset``, ``invalid_asset``, ``invalid_quantity``,
    ``quantity_out_of_range``, ``missing_token``, ``invalid_token``, ``token_too_long``, ``invalid_order_id``,
    ``order_id_too_long``, ``invalid_event_time``, ``event_time_out_of_range``.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_ORDER_CODEC = AvroCodec("order")


def encode_order_avro(order: dict) -> bytes:
    """An Order dict as Avro without a registry (single-object encoding): the payload of an order's dead letter,
    which ``ordem-ativo`` still reads when it is replayed there."""
    return _ORDER_CODEC.encode_single_object(order)


def _decode_order_avro(payload: bytes, decode: Callable[[bytes], dict] | None) -> dict:
    try:
        return (decode or _ORDER_CODEC.decode)(payload)
    except AvroDecodeError as exc:
        raise InvalidOrder("unparseable", f"{exc.reason}: {exc.detail}") from None


def _first(record: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        value = record.get(name)
        if value is not None:
            return value
    return None


def _quantity(value: Any, limits: OrderLimits, where: str) -> int:
    if isinstance(value, bool):
        raise InvalidOrder("invalid_quantity", f"{where}: quantity {_shown(value)} is not an integer")
    if isinstance(value, str):
        digits = value.strip()
        # ASCII digits only: int() would also take "5_000", "+5" and any Unicode digit (e.g. Arabic-Indic).
        if not (digits.isascii() and digits.isdigit()):
            raise InvalidOrder("invalid_quantity", f"{where}: quantity {value[:40]!r} is not a whole number "
                                                   "of ASCII digits")
        if len(digits) > 24 and len(digits.lstrip("0")) > 24:  # no huge conversions (and int()'s 4,300 cap)
            raise InvalidOrder("quantity_out_of_range",
                               f"{where}: quantity of {len(digits)} digits exceeds {limits.max_quantity}")
        value = int(digits)
    elif isinstance(value, float):
        if not value.is_integer():
            raise InvalidOrder("invalid_quantity", f"{where}: quantity {_shown(value)} is not an integer")
        value = int(value)
    elif not isinstance(value, int):
        raise InvalidOrder("invalid_quantity", f"{where}: quantity {_shown(value)} is missing or not an integer")
    if value <= 0:
        raise InvalidOrder("invalid_quantity", f"{where}: quantity must be > 0, got {value}")
    if value > limits.max_quantity:
        raise InvalidOrder("quantity_out_of_range", f"{where}: quantity {value} exceeds {limits.max_quantity}")
    return value


def _parse_event_time(value: Any, default_ms: int | None, now: datetime.datetime, where: str) -> datetime.datetime:
    if value is None:
        if default_ms is None:
            return now
        value = default_ms  # the Kafka record timestamp, checked like any other time
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
    raise InvalidOrder("invalid_event_time",
                       f"{where}: event time {str(value)[:60]!r} is neither epoch millis nor ISO-8601")


def _event_time(value: Any, default_ms: int | None, now: datetime.datetime,
                window: tuple[datetime.datetime, datetime.datetime], where: str) -> datetime.datetime:
    moment = _parse_event_time(value, default_ms, now, where)
    earliest, latest = window
    try:
        inside = earliest <= moment <= latest
    except (OverflowError, ValueError):  # an offset that moves the time past year 1 or 9999
        inside = False
    if not inside:
        raise InvalidOrder("event_time_out_of_range",
                           f"{where}: event time {moment.isoformat()} is outside {earliest.isoformat()} .. "
                           f"{latest.isoformat()}")
    return moment


def _key_text(value: str, limits: OrderLimits, field: str, where: str) -> str:
    """``value`` if it is 1..max_key_bytes UTF-8 bytes without control characters, else InvalidOrder."""
    if value.isascii():  # the usual case: bytes = characters, and the ASCII controls are the non-printables
        size = len(value)
        clean = value.isprintable()
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: not text any sink can store
            raise InvalidOrder(f"invalid_{field}", f"{where}: {field} is not valid Unicode text") from None
        clean = _CONTROL_CHARACTERS.search(value) is None
    if size > limits.max_key_bytes:
        raise InvalidOrder(f"{field}_too_long",
                           f"{where}: {field} of {size} bytes exceeds {limits.max_key_bytes} bytes")
    if not clean:
        control = _CONTROL_CHARACTERS.search(value)
        assert control is not None  # found above
        raise InvalidOrder(f"invalid_{field}", f"{where}: {field} holds the control character "
                                               f"U+{ord(control.group()):04X} at position {control.start()}")
    return value


def _order_id(value: Any, source: str, payload: bytes, index: int, limits: OrderLimits, where: str,
              minted_id_prefix: str | None) -> str:
    if value is None or value == "":
        if minted_id_prefix:
            return f"{minted_id_prefix}-{index}"
        if source:
            return f"{source}#{index}"
        return f"sha256:{hashlib.sha256(payload).hexdigest()[:32]}#{index}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidOrder("invalid_order_id", f"{where}: order id {_shown(value)} is not a string")
    value = str(value).strip()
    if not value:
        raise InvalidOrder("invalid_order_id", f"{where}: order id is blank")
    if value.isascii() and value.isprintable() and len(value) <= limits.max_key_bytes:
        return value  # the usual case, without a call
    return _key_text(value, limits, "order_id", where)


def _canonical(asset: Any, quantity: Any, token: Any, order_id: Any, event_time: Any, source_format: str,
               *, source: str, payload: bytes, index: int, timestamp_ms: int | None, limits: OrderLimits,
               now: datetime.datetime, window: tuple[datetime.datetime, datetime.datetime],
               minted_id_prefix: str | None = None) -> Order:
    where = f"order {index}"
    if asset is None or (isinstance(asset, str) and not asset.strip()):
        raise InvalidOrder("missing_asset", f"{where}: no asset (ativo)")
    if not isinstance(asset, str) or not _TICKER.match(asset.strip().upper()):
        raise InvalidOrder("invalid_asset", f"{where}: asset {str(asset)[:40]!r} is not a ticker")
    if token is None or not isinstance(token, str) or not token.strip():
        raise InvalidOrder("missing_token", f"{where}: no client token")
    token = token.strip()
    if not (token.isascii() and token.isprintable() and len(token) <= limits.max_key_bytes):
        token = _key_text(token, limits, "token", where)  # refuses, or passes non-ASCII text
    return {
        "order_id": _order_id(order_id, source, payload, index, limits, where, minted_id_prefix),
        "client_token": token,
        "asset": asset.strip().upper(),
        "quantity": _quantity(quantity, limits, where),
        "event_time": _event_time(event_time, timestamp_ms, now, window, where),
        "source_format": source_format,
    }


def _from_mapping(record: Any, source_format: str, **context) -> Order:
    if not isinstance(record, dict):
        raise InvalidOrder("unparseable", f"order {context['index']}: expected a JSON object, got {type(record).__name__}")
    return _canonical(_first(record, _ASSET_FIELDS), _first(record, _QUANTITY_FIELDS), _first(record, _TOKEN_FIELDS),
                      _first(record, _ID_FIELDS), _first(record, _TIME_FIELDS), source_format, **context)


def _parse_json(payload: bytes, context: dict) -> list[Order]:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidOrder("unparseable", f"invalid JSON: {exc}") from None
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


def _parse_csv(payload: bytes, context: dict) -> list[Order]:
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
                                 "CSV", index=index, **context))
    return orders


def parse_orders(payload: bytes, *, source: str = "", timestamp_ms: int | None = None,
                 limits: OrderLimits = DEFAULT_LIMITS, now: datetime.datetime | None = None,
                 minted_id_prefix: str | None = None,
                 decode_avro: Callable[[bytes], dict] | None = None) -> list[Order]:
    """Parses one payload in any accepted model into canonical Order dicts, or raises InvalidOrder.

    ``source`` (e.g. Kafka coordinates) makes ids of orders without one deterministic; ``timestamp_ms``
    is the event time of orders without one (the Kafka record timestamp; now when absent). Every order is
    checked against ``limits``, event times around ``now`` (default: the current time).
    ``minted_id_prefix``, when given, names orders without an id ``<prefix>-<index>`` instead.
    ``decode_avro`` decodes an Avro payload (a registry-backed ``AvroCodec.decode``, which may raise
    ``SchemaRegistryUnavailable``: not the record's fault, so it is not an ``InvalidOrder``); without it, only
    the single-object encoding is read.
    """
    if not payload:
        raise InvalidOrder("unparseable", "empty payload")
    if isinstance(payload, str):
        payload = payload.encode()
    now = now or datetime.datetime.now(_UTC)
    context: dict[str, Any] = {"source": source, "payload": payload, "timestamp_ms": timestamp_ms, "limits": limits, "now": now,
               "window": limits.event_time_range(now), "minted_id_prefix": minted_id_prefix}
    if payload_format(payload) != "unknown":
        record = _decode_order_avro(payload, decode_avro)
        source_format = str(record["source_format"]) if record.get("source_format") in SOURCE_FORMATS else "AVRO"
        return [_canonical(record["asset"], record["quantity"], record["client_token"], record["order_id"],
                           record["event_time"], source_format, index=0, **context)]
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            return _parse_json(payload, context)
        except RecursionError:
            raise InvalidOrder("unparseable", "JSON nested too deeply") from None
    return _parse_csv(payload, context)


def order_dead_letter(order: dict, reason: str, detail: str, stage: str) -> DeadLetter:
    """A dead letter for an order past the parser: its payload is the order as canonical Avro (valid input
    for ``ordem-ativo`` once the data is fixed), its source the Kafka coordinates that delivered it."""
    return DeadLetter(reason, detail, encode_order_avro(order), order.get("source", "").rpartition("#")[0], stage)
