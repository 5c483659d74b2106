"""Helpers for hand-made presence timelines (local time in America/Sao_Paulo, 2026-03-10 unless told)."""
from __future__ import annotations

import datetime as dt
import itertools

from orderflow.model.presence import AvailabilityChange, OpeningHours

HOURS = OpeningHours()
TZ = HOURS.tz
DAY = dt.date(2026, 3, 10)
_ids = itertools.count()


def at(hh: int, mm: int = 0, ss: int = 0, day: dt.date = DAY) -> int:
    """Epoch ms of a local wall-clock time."""
    extra, hh = divmod(hh, 24)
    return int(dt.datetime.combine(day + dt.timedelta(days=extra), dt.time(hh, mm, ss), tzinfo=TZ).timestamp() * 1000)


def pings(start: int, end: int, every_s: int = 30) -> list[int]:
    """Pings from ``start`` (inclusive) to ``end`` (exclusive) every ``every_s`` seconds."""
    return list(range(start, end, every_s * 1000))


def status(rid: str, when: int, value: str, reason: str | None = None) -> AvailabilityChange:
    return AvailabilityChange(f"e{next(_ids)}", rid, "SET_STATUS", value, None, reason, None, None, when)


def schedule(rid: str, sid: str, created: int, starts: int, ends: int, reason: str = "HOLIDAYS") -> AvailabilityChange:
    return AvailabilityChange(f"e{next(_ids)}", rid, "SCHEDULE_CREATED", None, sid, reason, starts, ends, created)


def cancel(rid: str, sid: str, when: int) -> AvailabilityChange:
    return AvailabilityChange(f"e{next(_ids)}", rid, "SCHEDULE_CANCELLED", None, sid, None, None, None, when)


def connection(rid: str, when: int, kind: str) -> AvailabilityChange:
    """A DISCONNECTED (the MQTT last will) or CONNECTED change, as the MQTT bridge writes it."""
    return AvailabilityChange(f"e{next(_ids)}", rid, kind, None, None, None, None, None, when)


def summarize(intervals) -> list[tuple]:
    """(status, reason, start, end) tuples sorted, with times as local 'HH:MM:SS' strings for readable asserts."""
    def hhmmss(ms):
        return dt.datetime.fromtimestamp(ms / 1000, tz=TZ).strftime("%d %H:%M:%S")
    return [(i.status, i.reason, hhmmss(i.start_ms), hhmmss(i.end_ms))
            for i in sorted(intervals, key=lambda i: (i.restaurant_id, i.start_ms))]


def planned_keepalives(plan) -> dict[str, tuple[int, int]]:
    """Each restaurant of a generated ``orderflow_dev.generate.keepalive.Plan``: how many keep-alives it sends
    and when its last is sent (ms), from the plan's intent: one at the start, then one at ``start + k *
    interval + phase`` for every step ``k`` before the end, but the skipped steps and those after it is gone.
    Counted from the steps here, not by walking ``Plan.pings()`` (the generator's own loop, under test)."""
    out = {}
    for r in plan.restaurants:
        # the steps whose time is before the end: k * interval + phase < end - start
        before_end = -(-(plan.end_ms - plan.start_ms - r.phase_ms) // plan.interval_ms)
        last_step = before_end - 1 if r.gone_after is None else min(before_end - 1, r.gone_after)
        skipped = sum(len(range(a, min(b, last_step + 1))) for a, b in r.skipped)
        # Outages end before the period does (and before a restaurant is gone), so the last step is sent.
        assert not any(a <= last_step < b for a, b in r.skipped), r
        out[r.restaurant_id] = (1 + last_step + 1 - skipped, plan.start_ms + last_step * plan.interval_ms + r.phase_ms)
    return out
