"""The value types of the API's contract, each stated once, with the rule its JSON Schema documents.

pydantic's lax parsing accepts more than a schema says (``"0"`` as a date, ``1700000000`` as a
date-time, ``"5"`` as an integer); every type here accepts exactly what its schema documents, so the
OpenAPI spec and the answers agree (``tests/api/test_schemathesis.py`` checks it).
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator, Field

from orderflow.model.orders import CSV_QUANTITY, MAX_EPOCH_MILLIS, MAX_QUANTITY, ORDER_ID, TICKER, TOKEN

__all__ = ["CSV_QUANTITY", "ClientToken", "Day", "EventTime", "ORDER_ID", "OrderId", "PATH_ID", "Quantity", "TICKER",
           "TOKEN", "Ticker", "Timestamp"]

# The order fields' patterns and bounds are the model's (``orderflow.model.orders``: its parser applies them
# to every order body); path ids follow the same rule as tokens.
PATH_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, dt.datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("expected an ISO-8601 date-time with offset, e.g. 2026-03-01T12:00:00Z")


def _iso_date_text(value: Any) -> Any:
    if isinstance(value, dt.date) or (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
        return value
    raise ValueError("expected a date YYYY-MM-DD")


def _integral_number(value: Any) -> Any:
    # JSON Schema's "integer" is any number without a fractional part (159.0 included), never a string.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]
Day = Annotated[dt.date, BeforeValidator(_iso_date_text)]


def integer(**constraints):
    """An integer type (``ge``, ``le``, ``description``, ...): the constraints go on the int itself, before the
    validator, so that the schema states them as ``minimum``/``maximum``."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral_number)]


Ticker = Annotated[str, Field(pattern=f"^{TICKER}$", description="asset ticker, e.g. WEGE3 (upper-cased)")]
Quantity = integer(ge=1, le=MAX_QUANTITY, description="units, > 0")
ClientToken = Annotated[str, Field(pattern=f"^{TOKEN}$", description="client token: letters, digits and "
                                                                      "'._:@-', starting with a letter or digit")]
OrderId = Annotated[str, Field(pattern=f"^{ORDER_ID}$", description="your id for the order (same set as tokens); "
                                                                     "default: minted, api-<32 hex>-<index>")]
EventTime = Annotated[
    integer(ge=0, le=MAX_EPOCH_MILLIS, title="epoch millis") | Timestamp,
    Field(description="when the order was placed (epoch millis or ISO-8601 with offset); default: arrival. At "
                      "most 3,660 days before the server's clock and 1 day ahead (the orders pipeline's limits, "
                      "--order_max_event_age_days / --order_max_event_lead_hours), else 422 "
                      "(event_time_out_of_range): a window that moves with the clock, which JSON Schema cannot "
                      "state"),
]

