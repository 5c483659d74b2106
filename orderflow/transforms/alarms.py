"""Windowed volume alarms: a rule fires when a window's traded total crosses its threshold.

Rules come from configuration (``--alarm_rules``, JSON; see ``parse_rules``):

    [{"id": "client-daily-1m", "scope": "client", "window": "day", "threshold": "1000000"},
     {"id": "all-1h-5m", "scope": "all", "window": {"size_seconds": 3600, "period_seconds": 300},
      "threshold": "50000000"}]

- ``window``: ``"day"`` (a calendar day in the exchange time zone, see ``rule_windows``) or sliding ``size`` /
  ``period`` (a fixed window when they are equal); each rule is its own branch with a standard WindowFn;
- ``scope``: ``"all"`` (one total over every client, scope key ``'*'``) or ``"client"`` (one per client token);
- ``threshold``: exact decimal; the alarm fires when the window total is ``>=`` it.

Per-element cost is paid per group, not per order: each batch of orders is first summed per
(rule, scope, slice), where a slice is the day for day rules and one ``period`` for sliding rules (every
sliding window aligned on the period grid is a union of whole slices), and only those partial sums enter
the Beam windows. Windows fire early on every new partial sum (accumulating panes, so a pane carries the
window's whole total and nothing is counted twice), on time at the watermark, and once per late partial
sum within the allowed lateness; later data is dropped. A crossing emits an ``Alarm``; firing once per
rule and window is enforced where it is recorded (``orderflow.io.sns_alarms``: Postgres unique key).

The input must already be free of duplicates (the owned orders of ``WriteOrdersToPostgres``).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import zoneinfo
from decimal import Decimal
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from orderflow.config import DEFAULT_TIMEZONE

ALL_CLIENTS = "*"
DAY = "day"


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
        if self.window not in (DAY, "sliding"):
            raise ValueError(f"rule {self.rule_id}: window must be 'day' or sliding size/period")
        if self.window == "sliding" and (self.period_seconds <= 0 or self.size_seconds <= 0
                                         or self.size_seconds % self.period_seconds):
            raise ValueError(f"rule {self.rule_id}: sliding size must be a positive multiple of the period")
        if self.threshold <= 0:
            raise ValueError(f"rule {self.rule_id}: threshold must be > 0")


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
            size, period = int(window["size_seconds"]), int(window.get("period_seconds", window["size_seconds"]))
            rules.append(AlarmRule(str(raw["id"]), raw.get("scope", "all"), Decimal(str(raw["threshold"])),
                                   "sliding", size, period))
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


def _local_midnight_millis(day: datetime.date, zone: zoneinfo.ZoneInfo) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def rule_windows(rule: AlarmRule, timezone: str):
    """The standard WindowFn of a rule (standard, so that Flink rebuilds it in Java for its GroupByKey).

    Sliding: ``SlidingWindows(size, period)``. Day: ``FixedWindows`` of 24 h starting at local midnight
    at the zone's current UTC offset (exact for zones without daylight saving time, like São Paulo since
    2019; in a DST zone the day window is an hour off in summer, while orders still go to their own day
    because day partial sums are stamped at local noon).
    """
    if rule.window == DAY:
        offset = datetime.datetime.now(zoneinfo.ZoneInfo(timezone)).utcoffset()
        return window.FixedWindows(86400, offset=(-int(offset.total_seconds())) % 86400)
    return window.SlidingWindows(rule.size_seconds, rule.period_seconds)


class _SumPerSliceFn(beam.DoFn):
    """One batch of owned orders -> one timestamped partial sum per (rule, scope, slice)."""

    def __init__(self, rules: list[AlarmRule], timezone: str):
        self.rules = rules
        self.timezone = timezone
        self.partial_sums = Metrics.counter("orders", "alarm_partial_sums")

    def setup(self):
        self._zone = zoneinfo.ZoneInfo(self.timezone)
        self._day_starts: dict[datetime.date, int] = {}

    def _day_stamp(self, day: datetime.date) -> int:
        # Local noon: inside the day's window whatever daylight saving time does to its bounds.
        stamp = self._day_starts.get(day)
        if stamp is None:
            stamp = self._day_starts[day] = _local_midnight_millis(day, self._zone) + 12 * 3_600_000
        return stamp

    def process(self, orders):
        sums: dict[tuple[str, str, int], Decimal] = {}
        for order in orders:
            total = order["total"]
            event_ms = int(order["event_time"].timestamp() * 1000)
            for rule in self.rules:
                scope = order["client_token"] if rule.scope == "client" else ALL_CLIENTS
                if rule.window == DAY:
                    slice_start = self._day_stamp(order["trade_day"])
                else:
                    period_ms = rule.period_seconds * 1000
                    slice_start = event_ms - event_ms % period_ms
                key = (rule.rule_id, scope, slice_start)
                sums[key] = sums.get(key, 0) + total
        self.partial_sums.inc(len(sums))
        for (rule_id, scope, slice_start), total in sums.items():
            yield TimestampedValue(((rule_id, scope), total), slice_start / 1000)


class _DetectCrossingsFn(beam.DoFn):
    def __init__(self, rules: list[AlarmRule]):
        self.thresholds = {rule.rule_id: rule.threshold for rule in rules}
        self.crossings = Metrics.counter("orders", "alarm_crossings")

    def process(self, keyed_total, window=beam.DoFn.WindowParam):
        (rule_id, scope), total = keyed_total
        threshold = self.thresholds[rule_id]
        if total >= threshold:
            self.crossings.inc()
            yield Alarm(rule_id, scope, window.start.to_utc_datetime(has_tz=True),
                        window.end.to_utc_datetime(has_tz=True), total, threshold)


def _no_alarm(_batch) -> tuple:
    return ()


class WindowedAlarms(beam.PTransform):
    """Batches of owned PricedOrders -> ``Alarm`` for every pane whose window total crosses its rule.

    Args:
        rules: the alarm rules, each its own windowed branch.
        timezone: the exchange time zone (day windows).
        allowed_lateness_seconds: how late a partial sum may arrive and still update its window.

    A window may emit its alarm in several panes (early, on time, late); recording is idempotent per
    (rule, scope, window start), so it fires once. The output is in the global window (each ``Alarm``
    names its own window).
    """

    def __init__(self, rules: list[AlarmRule], timezone: str = DEFAULT_TIMEZONE,
                 allowed_lateness_seconds: int = 3600):
        super().__init__()
        self.rules = list(rules)
        self.timezone = timezone
        self.allowed_lateness_seconds = allowed_lateness_seconds

    def expand(self, batches):
        if not self.rules:  # alarms switched off (--alarm_rules=[]): no branch, and nothing to flatten
            return batches | "NoRules" >> beam.FlatMap(_no_alarm)
        index = {rule.rule_id: i for i, rule in enumerate(self.rules)}
        by_rule = (batches
                   | "SumPerSlice" >> beam.ParDo(_SumPerSliceFn(self.rules, self.timezone))
                   | "ByRule" >> beam.Partition(lambda keyed, _n: index[keyed[0][0]], len(self.rules)))
        crossings = []
        for rule, partial_sums in zip(self.rules, by_rule, strict=True):
            crossings.append(
                partial_sums
                | f"Window[{rule.rule_id}]" >> beam.WindowInto(
                    rule_windows(rule, self.timezone),
                    trigger=trigger.AfterWatermark(early=trigger.AfterCount(1), late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self.allowed_lateness_seconds))
                | f"WindowTotal[{rule.rule_id}]" >> beam.CombinePerKey(sum)
                | f"DetectCrossings[{rule.rule_id}]" >> beam.ParDo(_DetectCrossingsFn(self.rules))
                # An Alarm carries its own window; the branches' windowing strategies differ (fixed, sliding),
                # and a Flatten needs one.
                | f"ToGlobalWindow[{rule.rule_id}]" >> beam.WindowInto(window.GlobalWindows()))
        return crossings | "AllCrossings" >> beam.Flatten()
