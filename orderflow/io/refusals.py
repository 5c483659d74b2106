"""``write_isolating``: write a batch, and when a store refuses it because of the data, find the records at fault.

A store that refuses a batch for one bad record (Postgres on a value it cannot hold, DynamoDB on a key too
long) says which statement failed, not which record. Halving the batch until each refused record is alone
keeps every other record written, at the cost of O(k log n) extra writes for k bad records, and gives each
refused record the store's own message for its dead letter.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["write_isolating"]

T = TypeVar("T")
R = TypeVar("R")


def write_isolating(write: Callable[[list[T]], R], batch: list[T],
                    refusal: Callable[[Exception], str | None]) -> tuple[list[R], list[tuple[T, str]]]:
    """``write(batch)``; if it raises an error that ``refusal`` names the data's fault, each half alone, down
    to single records.

    Args:
        write: writes one part of the batch, all or nothing (its own transaction, savepoint or request).
        batch: the records.
        refusal: the message of an exception that refuses the data (the record is dead-lettered with it), or
            None for any other failure (an outage), which propagates to the caller.

    Returns:
        (what each written part's ``write`` returned, ``[(refused record, message)]``).
    """
    try:
        return [write(batch)], []
    except Exception as exc:
        message = refusal(exc)
        if message is None:
            raise
        if len(batch) <= 1:
            return [], [(record, message) for record in batch]
    middle = len(batch) // 2
    written, refused = write_isolating(write, batch[:middle], refusal)
    written_second, refused_second = write_isolating(write, batch[middle:], refusal)
    return written + written_second, refused + refused_second
