"""``OrderBatchCoder``: the Beam coder of ``OrderBatch`` (``orderflow.model.orders``), registered on import.

Without it Beam's FastPrimitivesCoder would encode a batch value by value, pickling every datetime and
Decimal on its own wherever the runner materialises a PCollection (e.g. before the ParDo that reads the
reference-data side input), and its size estimate would encode the whole batch. The coder writes each
order as a tuple of plain values (str, int, None) in the field order of ``FIELDS``, so the bytes name no
class or module: a batch encoded by one version decodes in the next one as long as the fields stay.

The orders transforms import this module, so the coder is registered wherever an orders pipeline is built.
"""
from __future__ import annotations

import datetime
import pickle
from decimal import Decimal

from apache_beam import coders

from orderflow.model.orders import OrderBatch

__all__ = ["FIELDS", "OrderBatchCoder"]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _moment(value: datetime.datetime) -> tuple[int, int]:
    """A timezone-aware datetime as (microseconds since the epoch, UTC offset in seconds)."""
    offset = value.utcoffset()
    return (value - _EPOCH) // _MICROSECOND, int(offset.total_seconds()) if offset is not None else 0


def _from_moment(value: tuple[int, int]) -> datetime.datetime:
    micros, offset = value
    zone = datetime.timezone.utc if offset == 0 else datetime.timezone(datetime.timedelta(seconds=offset))
    return (_EPOCH + datetime.timedelta(microseconds=micros)).astimezone(zone)


def _same(value):
    return value


def _decimal_text(value: Decimal) -> str:
    return str(value)


# (field, to plain value, from plain value): the fields of ``Order`` and ``PricedOrder``.
FIELDS = (
    ("order_id", _same, _same),
    ("client_token", _same, _same),
    ("asset", _same, _same),
    ("quantity", _same, _same),
    ("event_time", _moment, _from_moment),
    ("source_format", _same, _same),
    ("source", _same, _same),
    ("trade_day", datetime.date.toordinal, datetime.date.fromordinal),
    ("pricing_code", _same, _same),
    ("price", _decimal_text, Decimal),
    ("total", _decimal_text, Decimal),
)
_NAMES = frozenset(name for name, _, _ in FIELDS)


def _encode_order(order: dict) -> tuple:
    unknown = order.keys() - _NAMES
    if unknown:
        # Silently dropping a field would lose data between two stages; name it so FIELDS gets it.
        raise TypeError(f"OrderBatchCoder: order fields {sorted(unknown)} are not in FIELDS")
    present = 0
    values = []
    for bit, (name, to_plain, _) in enumerate(FIELDS):
        if name in order:
            present |= 1 << bit
            value = order[name]
            values.append(None if value is None else to_plain(value))
    return present, *values


def _decode_order(encoded: tuple) -> dict:
    present, *values = encoded
    order = {}
    plain = iter(values)
    for bit, (name, _, from_plain) in enumerate(FIELDS):
        if present & (1 << bit):
            value = next(plain)
            order[name] = None if value is None else from_plain(value)
    return order


class OrderBatchCoder(coders.Coder):
    """An ``OrderBatch`` as one pickle of plain tuples (see ``FIELDS``). Not deterministic: never a key."""

    def encode(self, value: OrderBatch) -> bytes:
        return pickle.dumps([_encode_order(order) for order in value], pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> OrderBatch:
        return OrderBatch(map(_decode_order, pickle.loads(encoded)))

    def estimate_size(self, value: OrderBatch) -> int:
        # Runners sample element sizes; measuring by encoding would cost a whole batch's encoding.
        return 64 + 320 * len(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return OrderBatch


coders.registry.register_coder(OrderBatch, OrderBatchCoder)
