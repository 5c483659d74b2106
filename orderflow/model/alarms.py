"""Alarm rules: which windows an order counts in, and when a window's total fires its alarm.

Rules come from configuration (``--alarm_rules``, JSON; see ``parse_rules``)::

    [{"id": "client-daily-1m", "scope": "client", "window": "day", "threshold": "1000000"},
     {"id": "all-1h-5m", "scope": "all", "window": {"size_seconds": 3600, "period_seconds": 300},
      "threshold": "50000000"}]

- ``window``: ``"day"`` (the order's trading day, midnight to midnight in the exchange time zone) or sliding
  ``size`` / ``period`` seconds (windows start on the period grid; a fixed window when both are equal);
- ``scope``: ``"all"`` (one total over every client, scope ``'*'``) or ``"client"`` (one per client token);
- ``threshold``: exact decimal; a window fires when its exact total becomes ``>=`` it, once.

An order counts in its windows through a *slice*: its trading day for day rules, its ``period`` for sliding
rules (every sliding window on the period grid is a union of whole slices). ``window_increments`` sums a
batch of orders per (rule, scope, window); ``orderflow.io.alarm_windows`` adds those sums to the stored
window totals in the transaction that inserts the orders, so a total counts every order exactly once
whatever crashes, restarts and replays happen: nothing of it lives in a runner's state.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import zoneinfo
from collections.abc import Iterable
from decimal import Decimal
from typing import NamedTuple

__all__ = ["ALL_CLIENTS", "DAY", "SLIDING", "DEFAULT_RULES_JSON", "Alarm", "AlarmRule", "WindowKey", "parse_rules",
           "window_increments", "windows_of_slice"]

ALL_CLIENTS = "*"
DAY = "day"
SLIDING = "sliding"


@dataclasses.dataclass(frozen=True)
class AlarmRule:
    rule_id: str
    scope: str                 # "all" | "client"
    threshold: Decimal
    window: str = DAY          # "day" | "sliding"
    size_seconds: int = 0      # sliding only
    period_seconds: int = 0    # sliding only

    def __post_init__(self):
        if self.scope not in ("all", "client"):
            raise ValueError(f"rule {self.rule_id}: scope must be 'all' or 'client', not {self.scope!r}")
        if self.window not in (DAY, SLIDING):
            raise ValueError(f"rule {self.rule_id}: window must be 'day' or sliding size/period")
        if self.window == SLIDING and (self.period_seconds <= 0 or self.size_seconds <= 0
                                       or self.size_seconds % self.period_seconds):
            raise ValueError(f"rule {self.rule_id}: sliding size must be a positive multiple of the period")
        if self.threshold <= 0:
            raise ValueError(f"rule {self.rule_id}: threshold must be > 0")

    def windows_definition(self, timezone: str) -> str:
        """What a stored window total of this rule depends on (not the threshold): when it changes, the
        rule's totals are computed again from the stored orders."""
        return json.dumps({"scope": self.scope, "window": self.window, "size_seconds": self.size_seconds,
                           "period_seconds": self.period_seconds,
                           "timezone": timezone if self.window == DAY else None}, sort_keys=True)

    def scope_of(self, client_token: str) -> str:
        return client_token if self.scope == "client" else ALL_CLIENTS


DEFAULT_RULES_JSON = json.dumps([
    {"id": "client-daily-5m", "scope": "client", "window": "day", "threshold": "5000000"},
    {"id": "all-1h-every-5m", "scope": "all", "window": {"size_seconds": 3600, "period_seconds": 300},
     "threshold": "500000000"},
])


def parse_rules(text: str) -> list[AlarmRule]:
    """Rules from JSON text, or from a file when ``text`` is ``@path``; raises ValueError with the reason."""
    if text.startswith("@"):
        with open(text[1:]) as source:
            text = source.read()
    rules = []
    for raw in json.loads(text):
        window = raw.get("window", DAY)
        if isinstance(window, dict):
            size = int(window["size_seconds"])
            period = int(window.get("period_seconds", size))
            rules.append(AlarmRule(str(raw["id"]), raw.get("scope", "all"), Decimal(str(raw["threshold"])),
                                   SLIDING, size, period))
        else:
            rules.append(AlarmRule(str(raw["id"]), raw.get("scope", "all"), Decimal(str(raw["threshold"])), window))
    if len({r.rule_id for r in rules}) != len(rules):
        raise ValueError("alarm rule ids must be unique")
    return rules


class Alarm(NamedTuple):
    rule_id: str
    scope: str
    window_start: datetime.datetime
    window_end: datetime.datetime
    total: Decimal
    threshold: Decimal


class WindowKey(NamedTuple):
    rule_id: str
    scope: str
    start_ms: int
    end_ms: int


def _local_midnight_ms(day: datetime.date, zone: zoneinfo.ZoneInfo) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def windows_of_slice(rule: AlarmRule, slice_key: datetime.date | int, zone: zoneinfo.ZoneInfo) -> list[tuple[int, int]]:
    """The ``(start_ms, end_ms)`` windows a slice belongs to: its day (local midnight to the next, so 23 or 25
    hours long on a daylight-saving change), or every sliding window on the period grid that covers the
    period with index ``slice_key``."""
    if rule.window == DAY:
        assert isinstance(slice_key, datetime.date)
        return [(_local_midnight_ms(slice_key, zone), _local_midnight_ms(slice_key + datetime.timedelta(days=1), zone))]
    assert isinstance(slice_key, int)
    period, size = rule.period_seconds * 1000, rule.size_seconds * 1000
    slice_start = slice_key * period
    return [(start, start + size) for start in range(slice_start - size + period, slice_start + period, period)]


def slice_of(rule: AlarmRule, trade_day: datetime.date, event_ms: int) -> datetime.date | int:
    return trade_day if rule.window == DAY else event_ms // (rule.period_seconds * 1000)


def window_increments(rules: Iterable[AlarmRule], orders: Iterable[dict], timezone: str) -> dict[WindowKey, Decimal]:
    """The sum of ``total`` per window of every rule, over ``orders`` (priced orders: ``client_token``,
    ``total``, ``event_time``, ``trade_day``). Summed per slice first: a batch costs one entry per
    (rule, scope, slice), not per order."""
    rules = list(rules)
    zone = zoneinfo.ZoneInfo(timezone)
    per_slice: dict[tuple[AlarmRule, str, datetime.date | int], Decimal] = {}
    for order in orders:
        event_ms = int(order["event_time"].timestamp() * 1000)
        for rule in rules:
            key = (rule, rule.scope_of(order["client_token"]), slice_of(rule, order["trade_day"], event_ms))
            per_slice[key] = per_slice.get(key, Decimal(0)) + order["total"]
    return sum_slices(per_slice, zone)


def sum_slices(per_slice: dict[tuple[AlarmRule, str, datetime.date | int], Decimal],
               zone: zoneinfo.ZoneInfo) -> dict[WindowKey, Decimal]:
    """Slice sums ``{(rule, scope, slice): amount}`` -> window sums ``{WindowKey: amount}``."""
    windows: dict[WindowKey, Decimal] = {}
    for (rule, scope, slice_key), amount in per_slice.items():
        for start, end in windows_of_slice(rule, slice_key, zone):
            key = WindowKey(rule.rule_id, scope, start, end)
            windows[key] = windows.get(key, Decimal(0)) + amount
    return windows

