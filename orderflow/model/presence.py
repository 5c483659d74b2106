"""The presence business rules as pure functions over millisecond timestamps (no Beam, no I/O).

A restaurant is **online** at instant ``t`` only when all of these hold:

- ``t`` is inside opening hours (``OpeningHours``, default 10:00-23:00 America/Sao_Paulo);
- it sent a keep-alive in the last ``gap`` (two minutes): some ping ``p`` with ``p <= t < p + gap``, i.e.
  ``t`` lies in a *connected interval* ``[first ping, last ping + gap)`` (a session window);
- its status is available: not set UNAVAILABLE by the restaurant, and no scheduled unavailability
  covers ``t`` (a schedule counts from ``starts_at`` to ``ends_at``, or to its cancellation if earlier);
- its MQTT connection, if it has one, was not cut abruptly: a ``DISCONNECTED`` change (the broker's last
  will, ``orderflow.bridge``) makes it offline from that instant until a ``CONNECTED`` change (its
  reconnection), whatever its last keep-alive says. A clean disconnect sends no will: only the two-minute
  rule applies then.

Inside opening hours every instant that is not online is offline, either **offline_scheduled** (a
schedule covers it; the reason is the schedule's) or **offline_unexplained** (reason ``disconnected``,
``no_keepalive`` or ``unavailable``, in that precedence). Outside opening hours nothing is recorded. Status intervals are split at opening-hour
boundaries and at local midnight, and each carries the local calendar day of its start.

Intervals are half-open ``(start_ms, end_ms)`` tuples; "normalised" lists are sorted and disjoint.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import itertools
from collections.abc import Iterable
from typing import NamedTuple
from zoneinfo import ZoneInfo

from orderflow.config import DEFAULT_TIMEZONE

__all__ = ["AVAILABLE", "AvailabilityChange", "CONNECTED", "CONNECTION_KINDS", "DEFAULT_KEEPALIVE_GAP_MS",
           "DISCONNECTED", "InvalidAvailabilityChange", "KeepaliveStamp", "OpeningHours", "PresenceRules", "REASON_DISCONNECTED",
           "SCHEDULE_CANCELLED", "SCHEDULE_CREATED", "SET_STATUS", "StatusInterval", "TimelineProgress",
           "UNAVAILABLE", "current_status", "evaluate", "keepalive_kafka_record", "merge_pings", "ms_to_datetime",
           "normalize", "schedules", "session_markers", "stamp_keepalive", "state_changes", "to_ms",
           "validate_change"]

ONLINE = "online"
OFFLINE_SCHEDULED = "offline_scheduled"
OFFLINE_UNEXPLAINED = "offline_unexplained"

# Reasons why a restaurant is offline (hot state answers and unexplained intervals).
REASON_OUTSIDE_HOURS = "outside_opening_hours"
REASON_NO_KEEPALIVE = "no_keepalive"
REASON_UNAVAILABLE = "unavailable"
REASON_SCHEDULED = "scheduled_unavailability"
REASON_DISCONNECTED = "disconnected"

AVAILABLE = "AVAILABLE"
UNAVAILABLE = "UNAVAILABLE"
SET_STATUS = "SET_STATUS"
SCHEDULE_CREATED = "SCHEDULE_CREATED"
SCHEDULE_CANCELLED = "SCHEDULE_CANCELLED"
# The connection changes the MQTT bridge derives from a restaurant's status topic: its last will
# (``offline``, an abrupt disconnect) and its ``online`` after each connect.
DISCONNECTED = "DISCONNECTED"
CONNECTED = "CONNECTED"
CONNECTION_KINDS = (DISCONNECTED, CONNECTED)

DEFAULT_KEEPALIVE_GAP_MS = 120_000
FOREVER_MS = 2**62

Interval = tuple[int, int]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)


def to_ms(value) -> int | None:
    """Epoch milliseconds from an int (already ms), an aware datetime (fastavro's timestamp-millis) or None."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return (value - _EPOCH) // _ONE_MS
    raise TypeError(f"not a timestamp: {value!r}")


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


# -- interval algebra ------------------------------------------------------------------------------
def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint union of the intervals (overlapping ones merge; touching ones stay apart, as
    Beam's ``Sessions`` does: a ping exactly ``gap`` after the previous one leaves a zero-length gap)."""
    out: list[list[int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start < out[-1][1]:
            if end > out[-1][1]:
                out[-1][1] = end
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def clip(intervals: Iterable[Interval], start: int, end: int) -> list[Interval]:
    return [(max(s, start), min(e, end)) for s, e in intervals if e > start and s < end]


def _covers(normalised: list[Interval], starts: list[int], t: int) -> bool:
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and normalised[i][1] > t


def merge_pings(pings_ms: Iterable[int], gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS) -> list[Interval]:
    """Connected intervals ``[first, last + gap)`` of a restaurant's pings: what session windows compute."""
    return normalize((p, p + gap_ms) for p in pings_ms)


def session_markers(start_ms: int, end_ms: int, gap_ms: int) -> list[int]:
    """The fewest ping times whose connected intervals ``[t, t + gap)`` union to exactly ``[start, end)``
    (``end >= start + gap``): ``start``, then steps of ``gap - 1 ms`` (consecutive ones overlap, so they merge
    into one session), then ``end - gap``. One stands for a whole ``gap`` of connected time."""
    return [*range(start_ms, end_ms - gap_ms, gap_ms - 1), end_ms - gap_ms]


class TimelineProgress(NamedTuple):
    """How far a restaurant's status timeline is final: every status interval before ``final_until_ms`` is
    written. Stored with the intervals (``restaurant_presence_progress``), so a restarted pipeline goes on
    from there instead of from state a runner kept."""

    restaurant_id: str
    final_until_ms: int
    first_ms: int        # where the restaurant's timeline starts (its first event)
    last_input_ms: int   # the end of its latest input (a session's end, a change's time)


# -- opening hours ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OpeningHours:
    """Daily opening hours in a time zone; ``closes <= opens`` means the window crosses midnight
    (e.g. 18:00-02:00). Both bounds are local wall-clock times; a window belongs to the day it opens."""

    opens: dt.time = dt.time(10, 0)
    closes: dt.time = dt.time(23, 0)
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self):
        if self.opens == self.closes:
            raise ValueError("opening hours need a closed period: opens == closes")
        ZoneInfo(self.timezone)  # fail fast on an unknown zone

    @classmethod
    def parse(cls, spec: str, timezone: str = DEFAULT_TIMEZONE) -> OpeningHours:
        """``"10:00-23:00"`` -> OpeningHours."""
        try:
            opens, closes = (dt.time.fromisoformat(p.strip()) for p in spec.split("-"))
        except ValueError as exc:
            raise ValueError(f"opening hours must look like 10:00-23:00, got {spec!r}") from exc
        return cls(opens, closes, timezone)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local_date(self, ms: int) -> dt.date:
        return _local_date(self.timezone, ms // 1000)

    def _local_ms(self, day: dt.date, at: dt.time) -> int:
        return _local_instant_ms(self.timezone, day, at)

    def windows(self, start_ms: int, end_ms: int) -> list[Interval]:
        """The opening windows intersecting ``[start_ms, end_ms)``, clipped to it."""
        return clip(self._windows_around(start_ms, end_ms), start_ms, end_ms)

    def _windows_around(self, start_ms: int, end_ms: int) -> list[Interval]:
        first = self.local_date(start_ms) - dt.timedelta(days=1)
        last = self.local_date(end_ms) + dt.timedelta(days=1)
        return [self.day_window(first + dt.timedelta(days=i)) for i in range((last - first).days + 1)]

    def day_window(self, day: dt.date) -> Interval:
        """The opening window that opens on local ``day``."""
        close_day = day if self.closes > self.opens else day + dt.timedelta(days=1)
        return self._local_ms(day, self.opens), self._local_ms(close_day, self.closes)

    def longest_window_ms(self) -> int:
        """An upper bound of one opening window's length: its wall-clock length plus an hour for a
        daylight-saving change inside it."""
        opens = self.opens.hour * 3600 + self.opens.minute * 60 + self.opens.second
        closes = self.closes.hour * 3600 + self.closes.minute * 60 + self.closes.second
        return ((closes - opens) % 86_400 + 3600) * 1000

    def is_open(self, ms: int) -> bool:
        return any(s <= ms < e for s, e in self._windows_around(ms, ms))

    def next_close(self, after_ms: int) -> int:
        """The first closing instant strictly after ``after_ms``."""
        return min(e for _, e in self._windows_around(after_ms, after_ms + 2 * 86_400_000) if e > after_ms)

    def relevant_windows(self, start_ms: int, end_ms: int, gap_ms: int) -> list[Interval]:
        """``[opens - gap, closes + gap)`` windows around ``[start_ms, end_ms)``: the only stretches where a
        ping can change a status (a ping at ``opens - gap`` still counts at ``opens``)."""
        return normalize((s - gap_ms, e + gap_ms) for s, e in self._windows_around(start_ms, end_ms))

    def midnights(self, start_ms: int, end_ms: int) -> list[int]:
        """Local midnights strictly inside ``(start_ms, end_ms)``."""
        day = self.local_date(start_ms) + dt.timedelta(days=1)
        out: list[int] = []
        while True:
            ms = self._local_ms(day, dt.time(0))
            if ms >= end_ms:
                return out
            if ms > start_ms:
                out.append(ms)
            day += dt.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class PresenceRules:
    """The configurable part of the rules: opening hours (in their time zone) and the keep-alive timeout.

    One definition for everyone: ``from_settings`` reads it from ``orderflow.config.Settings``
    (``ORDERFLOW_OPENING_HOURS``, ``ORDERFLOW_PRESENCE_TIMEZONE``, ``ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS``),
    which the presence pipeline (its options override the environment) and the HTTP API both load.
    """

    hours: OpeningHours = dataclasses.field(default_factory=OpeningHours)
    gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS

    def __post_init__(self):
        if self.gap_ms <= 0:
            raise ValueError(f"the keep-alive timeout must be positive, got {self.gap_ms} ms")

    @classmethod
    def from_settings(cls, settings) -> PresenceRules:
        """The rules of ``settings`` (an ``orderflow.config.Settings``)."""
        return cls(OpeningHours.parse(settings.opening_hours, settings.presence_timezone),
                   round(settings.keepalive_timeout_seconds * 1000))


@functools.lru_cache(maxsize=4096)
def _local_instant_ms(timezone: str, day: dt.date, at: dt.time) -> int:
    return int(dt.datetime.combine(day, at, tzinfo=ZoneInfo(timezone)).timestamp() * 1000)


@functools.lru_cache(maxsize=65536)
def _local_date(timezone: str, epoch_s: int) -> dt.date:
    return dt.datetime.fromtimestamp(epoch_s, tz=ZoneInfo(timezone)).date()


# -- keep-alive records ------------------------------------------------------------------------------
def keepalive_kafka_record(codec, restaurant_id: str, sent_at_ms: int) -> tuple[bytes, bytes, int]:
    """``(key, value, timestamp)`` of a keep-alive as every ingest path writes it (the HTTP API, the MQTT
    bridge): key = the restaurant id, value = Avro ``RestaurantKeepalive`` by ``codec``, Kafka timestamp =
    ``sent_at``: event time, so the pipeline's watermark and a replay from a time follow it."""
    value = codec.encode({"restaurant_id": restaurant_id, "sent_at": sent_at_ms})
    return restaurant_id.encode(), value, sent_at_ms


class KeepaliveStamp(NamedTuple):
    """The event time a keep-alive is recorded with, and how far the restaurant's own ``sent_at`` was off."""

    sent_at_ms: int                 # the record's sent_at and Kafka timestamp
    skew_seconds: float | None      # sent_at minus the server's clock when it was replaced, else None

    @property
    def restamped(self) -> bool:
        return self.skew_seconds is not None

    def describe(self) -> str:
        """What happened to a restamped keep-alive's sent_at, in words."""
        skew = self.skew_seconds or 0.0
        direction = "ahead of" if skew > 0 else "behind"
        return f"sent_at was {abs(skew):.0f} s {direction} the server's clock; recorded at the server's time"


def stamp_keepalive(sent_at_ms: int | None, now_ms: int, max_skew_seconds: float) -> KeepaliveStamp:
    """The event time of a keep-alive that arrives at ``now_ms``: its own ``sent_at`` when that is within
    ``max_skew_seconds`` of arrival, else the arrival time (restamped).

    Why: it becomes the record's Kafka timestamp, so it must be near arrival (one far ahead would push the
    pipeline's watermark past everyone else's pings, one far behind would land outside the replay position
    of its time). Refusing it instead would leave a restaurant whose clock is off offline for good: the ping
    still says the restaurant is there now. Past days are not sent as keep-alives (see docs/presence.md).
    """
    if sent_at_ms is None:
        return KeepaliveStamp(now_ms, None)
    skew = (sent_at_ms - now_ms) / 1000
    if abs(skew) <= max_skew_seconds:
        return KeepaliveStamp(sent_at_ms, None)
    return KeepaliveStamp(now_ms, skew)


# -- availability ----------------------------------------------------------------------------------
class AvailabilityChange(NamedTuple):
    """A decoded ``RestaurantAvailabilityEvent`` with millisecond timestamps."""

    event_id: str
    restaurant_id: str
    kind: str
    status: str | None
    schedule_id: str | None
    reason: str | None
    starts_at: int | None
    ends_at: int | None
    occurred_at: int

    @classmethod
    def event(cls, event_id: str, restaurant_id: str, kind: str, occurred_at: int, *, status: str | None = None,
              schedule_id: str | None = None, reason: str | None = None, starts_at: int | None = None,
              ends_at: int | None = None) -> AvailabilityChange:
        """A new event; ``._asdict()`` is its Avro record (timestamps as epoch milliseconds), as the API, the
        generators and the feed produce it."""
        return cls(event_id, restaurant_id, kind, status, schedule_id, reason, starts_at, ends_at, occurred_at)

    @classmethod
    def from_record(cls, record: dict) -> AvailabilityChange:
        occurred_at = to_ms(record["occurred_at"])
        assert occurred_at is not None  # required by the Avro schema
        return cls(record["event_id"], record["restaurant_id"], record["kind"], record.get("status"),
                   record.get("schedule_id"), record.get("reason"), to_ms(record.get("starts_at")),
                   to_ms(record.get("ends_at")), occurred_at)


class InvalidAvailabilityChange(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def validate_change(change: AvailabilityChange) -> AvailabilityChange:
    """Raises InvalidAvailabilityChange when a change lacks what its kind needs."""
    if change.kind == SET_STATUS and change.status is None:
        raise InvalidAvailabilityChange("missing_status", f"SET_STATUS event {change.event_id} has no status")
    if change.kind in (SCHEDULE_CREATED, SCHEDULE_CANCELLED) and not change.schedule_id:
        raise InvalidAvailabilityChange("missing_schedule_id", f"{change.kind} event {change.event_id} has no schedule_id")
    if change.kind == SCHEDULE_CREATED:
        if change.starts_at is None or change.reason is None:
            raise InvalidAvailabilityChange(
                "incomplete_schedule", f"schedule {change.schedule_id} needs starts_at and reason")
        if change.ends_at is not None and change.ends_at <= change.starts_at:
            raise InvalidAvailabilityChange(
                "empty_schedule", f"schedule {change.schedule_id} ends at or before it starts")
    return change


def state_changes(changes: Iterable[AvailabilityChange], kinds: tuple[str, ...]) -> list[AvailabilityChange]:
    """The changes of ``kinds`` in the order they take effect (by occurred_at; the latest wins)."""
    return sorted((c for c in changes if c.kind in kinds), key=lambda c: (c.occurred_at, c.event_id))


def _stretches(ordered: list[AvailabilityChange], opens) -> list[Interval]:
    """Where the state set by ``ordered`` changes was "on" (``opens(change)``), initially off; a change lasts
    until the next."""
    out, since = [], None
    for change in ordered:
        if opens(change) and since is None:
            since = change.occurred_at
        elif not opens(change) and since is not None:
            out.append((since, change.occurred_at))
            since = None
    if since is not None:
        out.append((since, FOREVER_MS))
    return normalize(out)


def unavailable_intervals(changes: Iterable[AvailabilityChange]) -> list[Interval]:
    """Where the restaurant's own status was UNAVAILABLE (initially AVAILABLE; a change lasts until the next)."""
    return _stretches(state_changes(changes, (SET_STATUS,)), lambda c: c.status == UNAVAILABLE)


def disconnected_intervals(changes: Iterable[AvailabilityChange]) -> list[Interval]:
    """Where the restaurant's MQTT connection was cut abruptly: from a DISCONNECTED change (its last will) to
    the next CONNECTED (initially connected: a restaurant without MQTT never has one)."""
    return _stretches(state_changes(changes, CONNECTION_KINDS), lambda c: c.kind == DISCONNECTED)


class Schedule(NamedTuple):
    schedule_id: str
    reason: str
    starts_at: int
    ends_at: int | None
    cancelled_at: int | None

    @property
    def effective(self) -> Interval:
        """A cancelled schedule stops counting when it is cancelled (cancelled before it starts: never counts)."""
        end = self.ends_at if self.ends_at is not None else FOREVER_MS
        if self.cancelled_at is not None:
            end = min(end, self.cancelled_at)
        return self.starts_at, max(end, self.starts_at)


def schedules(changes: Iterable[AvailabilityChange]) -> list[Schedule]:
    """Folds SCHEDULE_CREATED / SCHEDULE_CANCELLED events into schedules (a cancellation seen before its
    creation still applies)."""
    created: dict[str, AvailabilityChange] = {}
    cancelled: dict[str, int] = {}
    for c in changes:
        sid = c.schedule_id
        assert sid is not None or c.kind not in (SCHEDULE_CREATED, SCHEDULE_CANCELLED)  # validated on arrival
        if c.kind == SCHEDULE_CREATED and sid is not None:
            created[sid] = c
        elif c.kind == SCHEDULE_CANCELLED and sid is not None:
            cancelled[sid] = min(c.occurred_at, cancelled.get(sid, c.occurred_at))
    out = []
    for sid, c in created.items():
        assert c.reason is not None and c.starts_at is not None  # a created schedule has both (validated)
        out.append(Schedule(sid, c.reason, c.starts_at, c.ends_at, cancelled.get(sid)))
    return sorted(out, key=lambda s: (s.starts_at, s.schedule_id))


# -- evaluation ------------------------------------------------------------------------------------
class StatusInterval(NamedTuple):
    """One row of ``restaurant_status_intervals``."""

    restaurant_id: str
    start_ms: int
    end_ms: int
    status: str
    reason: str | None
    day: dt.date

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def evaluate(restaurant_id: str, start_ms: int, end_ms: int, connected: Iterable[Interval],
             changes: Iterable[AvailabilityChange], hours: OpeningHours) -> list[StatusInterval]:
    """Status intervals of one restaurant over ``[start_ms, end_ms)``, inside opening hours only, split at
    opening-hour boundaries and local midnight; adjacent pieces with the same status, reason and day merge."""
    if end_ms <= start_ms:
        return []
    changes = list(changes)
    open_windows = hours.windows(start_ms, end_ms)
    if not open_windows:
        return []
    connected_n = normalize(clip(connected, start_ms, end_ms))
    unavailable = clip(unavailable_intervals(changes), start_ms, end_ms)
    disconnected = clip(disconnected_intervals(changes), start_ms, end_ms)
    scheduled = [(s.effective, s.reason) for s in schedules(changes)]
    scheduled = [((max(s, start_ms), min(e, end_ms)), r) for (s, e), r in scheduled if e > start_ms and s < end_ms and e > s]

    cuts = {start_ms, end_ms}
    for intervals in (open_windows, connected_n, unavailable, disconnected, [iv for iv, _ in scheduled]):
        for s, e in intervals:
            cuts.add(s)
            cuts.add(e)
    cuts.update(hours.midnights(start_ms, end_ms))
    points = sorted(t for t in cuts if start_ms <= t <= end_ms)

    open_starts = [s for s, _ in open_windows]
    conn_starts = [s for s, _ in connected_n]
    unav_starts = [s for s, _ in unavailable]
    disc_starts = [s for s, _ in disconnected]
    out: list[StatusInterval] = []
    for a, b in itertools.pairwise(points):
        if not _covers(open_windows, open_starts, a):
            continue
        reason_scheduled = next((r for (s, e), r in scheduled if s <= a < e), None)
        if reason_scheduled is not None:
            status, reason = OFFLINE_SCHEDULED, reason_scheduled
        elif _covers(disconnected, disc_starts, a):
            status, reason = OFFLINE_UNEXPLAINED, REASON_DISCONNECTED
        elif not _covers(connected_n, conn_starts, a):
            status, reason = OFFLINE_UNEXPLAINED, REASON_NO_KEEPALIVE
        elif _covers(unavailable, unav_starts, a):
            status, reason = OFFLINE_UNEXPLAINED, REASON_UNAVAILABLE
        else:
            status, reason = ONLINE, None
        day = hours.local_date(a)
        prev = out[-1] if out else None
        if prev and prev.end_ms == a and prev.status == status and prev.reason == reason and prev.day == day:
            out[-1] = prev._replace(end_ms=b)
        else:
            out.append(StatusInterval(restaurant_id, a, b, status, reason, day))
    return out


def current_status(now_ms: int, last_keepalive_ms: int | None, status: str | None,
                   active_schedule_reasons: list[str], hours: OpeningHours,
                   gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS, connection: str | None = None,
                   open_now: bool | None = None) -> tuple[str, list[str]]:
    """``("online" | "offline", reasons)`` at ``now_ms``; reasons is empty exactly when online. ``connection``
    is the kind of the latest connection change (DISCONNECTED, CONNECTED) or None. ``open_now``:
    ``hours.is_open(now_ms)`` when the caller already has it (one evaluation for many restaurants)."""
    reasons = []
    if not (hours.is_open(now_ms) if open_now is None else open_now):
        reasons.append(REASON_OUTSIDE_HOURS)
    if connection == DISCONNECTED:
        reasons.append(REASON_DISCONNECTED)
    if last_keepalive_ms is None or now_ms - last_keepalive_ms >= gap_ms:
        reasons.append(REASON_NO_KEEPALIVE)
    if status == UNAVAILABLE:
        reasons.append(REASON_UNAVAILABLE)
    reasons.extend(f"{REASON_SCHEDULED}:{r}" for r in active_schedule_reasons)
    return ("offline" if reasons else "online"), reasons
