"""Money as text: the one format of every amount orderflow shows."""
from __future__ import annotations

from decimal import Decimal

__all__ = ["money"]


def money(value) -> str | None:
    """Money as a decimal string in plain notation without trailing zeros: ``"4217"``, ``"181952785.6963"``.

    The one format of every amount the API answers (order price and total, volumes, alarm totals)."""
    return None if value is None else format(Decimal(value).normalize(), "f")
