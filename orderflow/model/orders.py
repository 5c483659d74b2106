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
from typing import Any, NamedTuple, TypedDict

import orjson

from orderflow.model.avro import AvroCodec, AvroDecodeError, payload_format
from orderflow.model.dead_letter import DeadLetter

__all__ = ["AVRO_CONTRACT", "CSV_CONTRACT", "CSV_PATTERN", "CSV_QUANTITY", "ContractError", "DEFAULT_LIMITS",
           "InvalidOrder", "InvalidOrders", "MAX_EPOCH_MILLIS", "MAX_KEY_BYTES", "MAX_QUANTITY", "NORMALIZE_FAILED",
           "ORDER_ID", "Order", "OrderBatch", "OrderLimits", "PricedOrder", "SOURCE_FORMATS", "TICKER", "TOKEN",
           "contract_detail", "encode_order_avro", "order_dead_letter", "parse_orders"]

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

# The API's contract for orders (``parse_orders(..., contract=...)``), narrower than what the pipeline takes from
# Kafka producers: client tokens and order ids travel in URL paths (/clients/{token}/volume, /orders/{order_id},
# the client:<token> scope), so they are letters, digits and '._:@-', starting with a letter or digit (never
# '.' or '..', which clients resolve away); JSON types are strict and unknown fields are refused. The API's
# OpenAPI schema states the same patterns (``orderflow.api.contract``).
MAX_TOKEN_LENGTH = 128
MAX_ORDER_ID_LENGTH = 200
TICKER = r"[A-Za-z0-9][A-Za-z0-9.]{0,15}"
TOKEN = rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_TOKEN_LENGTH - 1}}}"
ORDER_ID = rf"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{MAX_ORDER_ID_LENGTH - 1}}}"
MAX_EPOCH_MILLIS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_QUANTITY = 10**12
MAX_EVENT_AGE = datetime.timedelta(days=3660)
MAX_EVENT_LEAD = datetime.timedelta(days=1)
# CSV quantities: 1..MAX_QUANTITY (10^12) as ASCII digits.
CSV_QUANTITY = rf"(?:[1-9][0-9]{{0,{len(str(MAX_QUANTITY)) - 2}}}|{MAX_QUANTITY})"
_CSV_LINE = rf"{TICKER},{CSV_QUANTITY},{TOKEN}(?:,{ORDER_ID})?"
CSV_PATTERN = (rf"(?:(?:ativo|asset),(?:quantidade|quantity),(?:token|client_token)(?:,order_id)?\r?\n)?"
               rf"{_CSV_LINE}(?:\r?\n{_CSV_LINE})*(?:\r?\n)?")


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


# -- the API's contract -----------------------------------------------------------------------------------
class ContractError(NamedTuple):
    """One thing the API's contract refuses in a body: where (``loc``, keys and indexes from the body's root)
    and why, in the words of the OpenAPI schema's validator."""

    loc: tuple[str | int, ...]
    msg: str


class InvalidOrders(InvalidOrder):
    """A payload that ``parse_orders(..., contract=...)`` refuses, with every error found.

    ``rule_errors``: the pipeline's own refusals (``InvalidOrder``, one per refused order), empty when only the
    contract refuses it; ``contract_errors``: what the API's contract refuses, by location (JSON bodies);
    ``contract_detail``: the contract's refusal in words (every body kind). ``reason`` and ``detail`` are
    those of the first rule error, else ``"contract"`` and ``contract_detail``.
    """

    def __init__(self, rule_errors: list[InvalidOrder], contract_errors: list[ContractError],
                 contract_detail: str):
        first = rule_errors[0] if rule_errors else InvalidOrder("contract", contract_detail)
        super().__init__(first.reason, first.detail)
        self.rule_errors = rule_errors
        self.contract_errors = contract_errors
        self.contract_detail = contract_detail


_API_TICKER, _API_TOKEN, _API_ORDER_ID = (re.compile(pattern) for pattern in (TICKER, TOKEN, ORDER_ID))
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")
_CSV_BODY = re.compile(CSV_PATTERN)
_PORTUGUESE = ("ativo", "quantidade", "token")
_ENGLISH = ("asset", "quantity", "client_token")
_OPTIONAL = ("order_id", "event_time")
_OBJECT = "Input should be a valid dictionary or object to extract fields from"
_EXTRA = "Extra inputs are not permitted"
_REQUIRED = "Field required"
_NOT_INTEGER = "Value error, expected an integer"
CSV_CONTRACT = ("a text/csv body holds lines ativo,quantidade,token[,order_id] (quantity a positive integer; tokens "
                "and ids of letters, digits and '._:@-'), with an optional header")
AVRO_CONTRACT = ("an application/avro body is one Order in the Confluent wire format (00 and a 4-byte schema id) "
                 "or Avro single-object encoding (C3 01 ...)")


def _text_errors(value: Any, pattern: re.Pattern, loc: tuple) -> list[ContractError]:
    if not isinstance(value, str):
        return [ContractError(loc, "Input should be a valid string")]
    if not pattern.fullmatch(value):
        return [ContractError(loc, f"String should match pattern '^{pattern.pattern}$'")]
    return []


def _integer_errors(value: Any, minimum: int, maximum: int, loc: tuple) -> list[ContractError]:
    """JSON Schema's "integer": a number without a fractional part (159.0 included), never a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        return [ContractError(loc, _NOT_INTEGER)]
    if value < minimum:
        return [ContractError(loc, f"Input should be greater than or equal to {minimum}")]
    if value > maximum:
        return [ContractError(loc, f"Input should be less than or equal to {maximum}")]
    return []


def _event_time_errors(value: Any, loc: tuple) -> list[ContractError]:
    if value is None or (isinstance(value, (int, float)) and not _integer_errors(value, 0, MAX_EPOCH_MILLIS, loc)):
        return []
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return []
        except ValueError:
            pass
    return [ContractError(loc, f"Value error, expected epoch millis (0..{MAX_EPOCH_MILLIS}) or an ISO-8601 "
                               "date-time with offset, e.g. 2026-03-01T12:00:00Z")]


def _order_errors(value: Any, loc: tuple) -> list[ContractError]:
    """An order object: Portuguese or English names (English when any English name is present)."""
    if not isinstance(value, dict):
        return [ContractError(loc, _OBJECT)]
    asset, quantity, token = _ENGLISH if any(name in value for name in _ENGLISH) else _PORTUGUESE
    errors = [ContractError((*loc, name), _REQUIRED) for name in (asset, quantity, token) if name not in value]
    errors += [ContractError((*loc, str(name)), _EXTRA) for name in value
               if name not in (asset, quantity, token, *_OPTIONAL)]
    if asset in value:
        errors += _text_errors(value[asset], _API_TICKER, (*loc, asset))
    if quantity in value:
        errors += _integer_errors(value[quantity], 1, MAX_QUANTITY, (*loc, quantity))
    if token in value:
        errors += _text_errors(value[token], _API_TOKEN, (*loc, token))
    if value.get("order_id") is not None:
        errors += _text_errors(value["order_id"], _API_ORDER_ID, (*loc, "order_id"))
    return errors + _event_time_errors(value.get("event_time"), (*loc, "event_time"))


def _envelope_errors(document: Any) -> list[ContractError]:
    """A Confluent REST Proxy v2 produce request with the JSON embedded format."""
    if not isinstance(document, dict):
        return [ContractError((), _OBJECT)]
    errors = [ContractError((str(name),), _EXTRA) for name in document if name != "records"]
    records = document.get("records")
    if "records" not in document:
        return errors + [ContractError(("records",), _REQUIRED)]
    if not isinstance(records, list):
        return errors + [ContractError(("records",), "Input should be a valid list")]
    if not records:
        return errors + [ContractError(("records",), "List should have at least 1 item")]
    for index, record in enumerate(records):
        loc = ("records", index)
        if not isinstance(record, dict):
            errors.append(ContractError(loc, _OBJECT))
            continue
        errors += [ContractError((*loc, str(name)), _EXTRA) for name in record if name not in ("value", "key")]
        errors += _order_errors(record["value"], (*loc, "value")) if "value" in record else [
            ContractError((*loc, "value"), _REQUIRED)]
    return errors


def _json_contract_errors(document: Any, contract: str) -> list[ContractError]:
    if contract == "REST_PROXY":
        return _envelope_errors(document)
    if isinstance(document, list):
        if not document:
            return [ContractError((), "List should have at least 1 item")]
        return [error for index, item in enumerate(document) for error in _order_errors(item, (index,))]
    return _order_errors(document, ())


def contract_detail(errors: list[ContractError], most: int = 20) -> str:
    """The first ``most`` contract errors in one line: ``records.3.value.ativo: String should match ...; ...``."""
    return "; ".join(f"{'.'.join(str(part) for part in error.loc) or 'body'}: {error.msg}" for error in errors[:most])


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


def _each(items, parse_one: Callable[[int, Any], Order], errors: list[InvalidOrder] | None) -> list[Order]:
    """``parse_one(index, item)`` of every item; with ``errors``, an order's refusal is kept there and the
    other orders are still parsed, else the first refusal is raised."""
    orders = []
    for index, item in enumerate(items):
        try:
            orders.append(parse_one(index, item))
        except InvalidOrder as refused:
            if errors is None:
                raise
            errors.append(refused)
    return orders


def _parse_json(payload: bytes, context: dict, errors: list[InvalidOrder] | None = None) -> list[Order]:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidOrder("unparseable", f"invalid JSON: {exc}") from None
    if isinstance(document, dict) and "records" in document:
        records = document["records"]
        if not isinstance(records, list) or not records:
            raise InvalidOrder("unparseable", "REST-proxy envelope: 'records' must be a non-empty list")

        def from_record(index: int, record: Any) -> Order:
            value = record.get("value") if isinstance(record, dict) else None
            if isinstance(value, str):  # some producers send the value as embedded JSON text
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise InvalidOrder("unparseable", f"order {index}: value is not JSON") from None
            return _from_mapping(value, "REST_PROXY", index=index, **context)

        return _each(records, from_record, errors)
    if isinstance(document, list):
        if not document:
            raise InvalidOrder("unparseable", "empty JSON list")
        return _each(document, lambda index, item: _from_mapping(item, "JSON", index=index, **context), errors)
    return [_from_mapping(document, "JSON", index=0, **context)]


def _parse_csv(payload: bytes, context: dict, errors: list[InvalidOrder] | None = None) -> list[Order]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidOrder("unparseable", "neither JSON, Avro nor UTF-8 CSV") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].split(",")[0].strip().lower() in ("ativo", "asset"):
        lines = lines[1:]
    if not lines:
        raise InvalidOrder("unparseable", "empty payload")

    def from_line(index: int, line: str) -> Order:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) not in (3, 4):
            raise InvalidOrder("unparseable", f"order {index}: CSV line needs ativo,quantidade,token[,order_id]: {line[:80]!r}")
        return _canonical(fields[0], fields[1], fields[2], fields[3] if len(fields) == 4 else None, None,
                          "CSV", index=index, **context)

    return _each(lines, from_line, errors)


def parse_orders(payload: bytes, *, source: str = "", timestamp_ms: int | None = None,
                 limits: OrderLimits = DEFAULT_LIMITS, now: datetime.datetime | None = None,
                 minted_id_prefix: str | None = None,
                 decode_avro: Callable[[bytes], dict] | None = None, contract: str | None = None) -> list[Order]:
    """Parses one payload in any accepted model into canonical Order dicts, or raises InvalidOrder.

    ``source`` (e.g. Kafka coordinates) makes ids of orders without one deterministic; ``timestamp_ms``
    is the event time of orders without one (the Kafka record timestamp; now when absent). Every order is
    checked against ``limits``, event times around ``now`` (default: the current time).
    ``minted_id_prefix``, when given, names orders without an id ``<prefix>-<index>`` instead.
    ``decode_avro`` decodes an Avro payload (a registry-backed ``AvroCodec.decode``, which may raise
    ``SchemaRegistryUnavailable``: not the record's fault, so it is not an ``InvalidOrder``); without it, only
    the single-object encoding is read.

    ``contract`` (one of ``SOURCE_FORMATS``: the body kind an HTTP request declared) also holds the payload to
    the API's contract, and every error is collected: ``InvalidOrders`` lists what the contract refuses and
    each order the rules refuse (the dead-letter reason the pipeline would give).
    """
    if not payload:
        raise InvalidOrder("unparseable", "empty payload")
    if isinstance(payload, str):
        payload = payload.encode()
    now = now or datetime.datetime.now(_UTC)
    context: dict[str, Any] = {"source": source, "payload": payload, "timestamp_ms": timestamp_ms, "limits": limits, "now": now,
               "window": limits.event_time_range(now), "minted_id_prefix": minted_id_prefix}
    if contract is not None:
        return _parse_under_contract(payload, contract, context, decode_avro)
    return _parse_payload(payload, context, decode_avro)


def _parse_payload(payload: bytes, context: dict, decode_avro: Callable[[bytes], dict] | None,
                   errors: list[InvalidOrder] | None = None) -> list[Order]:
    if payload_format(payload) != "unknown":
        record = _decode_order_avro(payload, decode_avro)
        source_format = str(record["source_format"]) if record.get("source_format") in SOURCE_FORMATS else "AVRO"
        return [_canonical(record["asset"], record["quantity"], record["client_token"], record["order_id"],
                           record["event_time"], source_format, index=0, **context)]
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            return _parse_json(payload, context, errors)
        except RecursionError:
            raise InvalidOrder("unparseable", "JSON nested too deeply") from None
    return _parse_csv(payload, context, errors)


def _parse_under_contract(payload: bytes, contract: str, context: dict,
                          decode_avro: Callable[[bytes], dict] | None) -> list[Order]:
    """``parse_orders`` held to the API's contract for a body of kind ``contract``, every error collected."""
    if contract not in SOURCE_FORMATS:
        raise ValueError(f"contract must be one of {SOURCE_FORMATS}, got {contract!r}")
    contract_errors: list[ContractError] = []
    detail = ""
    if contract in ("JSON", "REST_PROXY"):
        try:
            contract_errors = _json_contract_errors(orjson.loads(payload), contract)
        except orjson.JSONDecodeError as exc:
            contract_errors = [ContractError((), f"Invalid JSON: {exc}")]
        except RecursionError:
            contract_errors = [ContractError((), "Invalid JSON: nested too deeply")]
    elif contract == "CSV":
        try:
            if not _CSV_BODY.fullmatch(payload.decode("utf-8")):
                detail = CSV_CONTRACT
        except UnicodeDecodeError:
            detail = "a text/csv body must be UTF-8"
    elif payload_format(payload) == "unknown":
        detail = AVRO_CONTRACT
    rule_errors: list[InvalidOrder] = []
    try:
        orders = _parse_payload(payload, context, decode_avro, rule_errors)
    except InvalidOrder as refused:  # the payload as a whole (not JSON, an empty list, ...)
        orders, rule_errors = [], [refused]
    if contract == "AVRO" and not detail:
        detail = _avro_contract_detail(orders, context["minted_id_prefix"])
    detail = detail or contract_detail(contract_errors)
    if rule_errors or detail:
        raise InvalidOrders(rule_errors, contract_errors, detail)
    return orders


def _avro_contract_detail(orders: list[Order], minted_id_prefix: str | None) -> str:
    """The contract's token and id patterns, which an Avro record (not checked by a JSON schema) must meet too."""
    for index, order in enumerate(orders):
        if not _API_TOKEN.fullmatch(order["client_token"]):
            return (f"order {index}: client token {order['client_token'][:80]!r} must be letters, digits or "
                    "'._:@-', starting with a letter or digit")
        minted = minted_id_prefix is not None and order["order_id"].startswith(f"{minted_id_prefix}-")
        if not minted and not _API_ORDER_ID.fullmatch(order["order_id"]):
            return (f"order {index}: order id {order['order_id'][:80]!r} must be letters, digits or '._:@-', "
                    "starting with a letter or digit")
    return ""


def order_dead_letter(order: dict, reason: str, detail: str, stage: str) -> DeadLetter:
    """A dead letter for an order past the parser: its payload is the order as canonical Avro (valid input
    for ``ordem-ativo`` once the data is fixed), its source the Kafka coordinates that delivered it."""
    return DeadLetter(reason, detail, encode_order_avro(order), order.get("source", "").rpartition("#")[0], stage)
