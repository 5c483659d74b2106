# ruff: noqa: B008 - Beam declares state, timers and keys as DoFn parameter defaults
"""Status intervals per restaurant: sessions + availability changes + opening hours -> online / offline.

``RestaurantStatusIntervals`` takes ``(sessions, changes)``: the connected intervals of
``KeepaliveSessions`` and the ``AvailabilityChange`` stream, both keyed by restaurant. A stateful DoFn per
restaurant keeps what it has not finalised yet and, on an event-time timer, finalises the timeline up to
the timer's instant with ``presence_rules.evaluate``:

- at the end of each session (optional, for fresher intervals in streaming): when the watermark passes a
  session's end, every session that ended before it has been delivered (the session's GroupByKey holds the
  watermark), and no later session can start before it;
- at ``closes + gap`` of each opening day: keep-alive sessions never extend past it (pings after closing
  time are dropped upstream), so the whole day is known, including offline time after the last session
  of a restaurant that stopped pinging;
- at ``as_of + gap`` in bounded mode, evaluating up to ``as_of``, the cut-off: pings at or after it are
  dropped upstream, so every session that started before it has ended (and been delivered) by then.
  Time after the cut-off is never evaluated, so a session still open at the end of input stays online up
  to the cut-off instead of being closed early at its last ping.

A restaurant's timeline starts at ``track_from_ms`` when given (bounded runs over a known period), else at
its first known event (first session or availability change). Day
closes keep being evaluated (offline time accrues) until ``max_idle_days`` pass without any input for the
restaurant; then its timers stop, so state and timers stay bounded (and a drained pipeline terminates).
Intervals are emitted once per finalisation; the Postgres sink upserts them by (restaurant, start).
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from orderflow.transforms.presence_rules import (
    DEFAULT_KEEPALIVE_GAP_MS,
    SCHEDULE_CANCELLED,
    SCHEDULE_CREATED,
    SET_STATUS,
    OpeningHours,
    evaluate,
    schedules,
)

_SESSION = "S"
_CHANGE = "A"


def _item_start(item) -> int:
    return item[1] if item[0] == _SESSION else item[1].occurred_at


def _retained(items: list, until: int) -> list:
    """What state still needs after the timeline is final up to ``until``."""
    sessions = [i for i in items if i[0] == _SESSION and i[2] > until]
    changes = [i[1] for i in items if i[0] == _CHANGE]
    statuses = sorted((c for c in changes if c.kind == SET_STATUS), key=lambda c: (c.occurred_at, c.event_id))
    current = [c for c in statuses if c.occurred_at <= until][-1:]
    later = [c for c in statuses if c.occurred_at > until]
    finished = {s.schedule_id for s in schedules(changes) if s.effective[1] <= until}
    schedule_changes = [c for c in changes if c.kind in (SCHEDULE_CREATED, SCHEDULE_CANCELLED)
                        and c.schedule_id not in finished]
    return sessions + [(_CHANGE, c) for c in current + later + schedule_changes]


class _EvaluateStatusFn(beam.DoFn):
    PENDING = BagStateSpec("pending", PickleCoder())
    FINAL_UNTIL = ReadModifyWriteStateSpec("final_until", VarIntCoder())
    NEXT_TIMER = ReadModifyWriteStateSpec("next_timer", VarIntCoder())
    LAST_INPUT = ReadModifyWriteStateSpec("last_input", VarIntCoder())
    FINALIZE = TimerSpec("finalize", TimeDomain.WATERMARK)

    def __init__(self, hours: OpeningHours, gap_ms: int, as_of_ms: int | None, finalize_at_session_end: bool,
                 max_idle_days: int, track_from_ms: int | None):
        self._track_from = track_from_ms
        self._hours = hours
        self._max_idle_ms = max_idle_days * 86_400_000
        self._gap = gap_ms
        self._as_of = as_of_ms
        self._at_session_end = finalize_at_session_end
        self._intervals = Metrics.counter("RestaurantStatusIntervals", "intervals")
        self._late = Metrics.counter("RestaurantStatusIntervals", "late_inputs_ignored")

    def _day_close_after(self, t: int) -> int:
        return self._hours.next_close(t - self._gap) + self._gap

    def _cap(self, t: int) -> int:
        if self._as_of is None:
            return t
        return min(t, self._as_of + self._gap)

    def _arm(self, candidate: int | None, next_timer, timer) -> None:
        if candidate is None:
            return
        current = next_timer.read()
        if current is None or candidate < current:
            next_timer.write(candidate)
            timer.set(Timestamp(micros=candidate * 1000))

    def process(self, element, pending=beam.DoFn.StateParam(PENDING),
                final_until=beam.DoFn.StateParam(FINAL_UNTIL), next_timer=beam.DoFn.StateParam(NEXT_TIMER),
                last_input=beam.DoFn.StateParam(LAST_INPUT), timer=beam.DoFn.TimerParam(FINALIZE)):
        _, item = element
        done = final_until.read()
        end = item[2] if item[0] == _SESSION else item[1].occurred_at
        if done is not None and end <= done and item[0] == _SESSION:
            self._late.inc()  # its time is already final
            return
        pending.add(item)
        start = _item_start(item)
        if (last_input.read() or 0) < end:
            last_input.write(end)
        if done is None and self._track_from is not None:
            start = min(start, self._track_from)
        after = max(start, done) if done is not None else start
        candidate = self._day_close_after(after + 1)
        if item[0] == _SESSION and self._at_session_end:
            candidate = min(candidate, item[2])
        if self._as_of is not None and after >= self._as_of:
            return  # beyond the cut-off: never evaluated
        self._arm(self._cap(candidate), next_timer, timer)

    @on_timer(FINALIZE)
    def finalize(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING), final_until=beam.DoFn.StateParam(FINAL_UNTIL),
                 next_timer=beam.DoFn.StateParam(NEXT_TIMER), last_input=beam.DoFn.StateParam(LAST_INPUT),
                 timer=beam.DoFn.TimerParam(FINALIZE)):
        next_timer.clear()
        items = list(pending.read())
        until = fired.micros // 1000
        if self._as_of is not None:
            until = min(until, self._as_of)
        done = final_until.read()
        if done is None:
            if not items:
                return
            done = min(_item_start(i) for i in items)
            if self._track_from is not None:
                done = min(done, self._track_from)
        if until > done:
            sessions = [(i[1], i[2]) for i in items if i[0] == _SESSION]
            changes = [i[1] for i in items if i[0] == _CHANGE]
            intervals = evaluate(key, done, until, sessions, changes, self._hours)
            self._intervals.inc(len(intervals))
            yield from intervals
            final_until.write(until)
            done = until
            kept = _retained(items, until)
            pending.clear()
            for item in kept:
                pending.add(item)
            items = kept
        if self._as_of is not None and done >= self._as_of:
            return
        candidates = []
        if done - (last_input.read() or done) < self._max_idle_ms:
            candidates.append(self._day_close_after(done + 1))
        if self._at_session_end:
            candidates += [i[2] for i in items if i[0] == _SESSION and i[2] > done]
        if candidates:
            self._arm(self._cap(min(candidates)), next_timer, timer)


class RestaurantStatusIntervals(beam.PTransform):
    """``(sessions, changes)`` -> ``StatusInterval`` rows (online / offline_scheduled / offline_unexplained).

    ``sessions``: ``(restaurant_id, (start_ms, end_ms))`` from ``KeepaliveSessions``; ``changes``:
    ``AvailabilityChange`` elements timestamped at ``occurred_at``. ``as_of_ms`` (bounded runs) is the
    cut-off: nothing after it is evaluated and the last intervals end there (``KeepaliveSessions`` must get
    the same cut-off). ``track_from_ms``: where every restaurant's timeline starts (default: its first event). ``finalize_at_session_end``
    emits intervals as each session closes (streaming freshness) instead of only per opening day.
    """

    def __init__(self, opening_hours: OpeningHours | None = None, gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS,
                 as_of_ms: int | None = None, finalize_at_session_end: bool = True, max_idle_days: int = 30,
                 track_from_ms: int | None = None):
        super().__init__()
        self._hours = opening_hours or OpeningHours()
        self._gap = gap_ms
        self._as_of = as_of_ms
        self._at_session_end = finalize_at_session_end
        self._max_idle_days = max_idle_days
        self._track_from = track_from_ms

    def expand(self, inputs):
        sessions, changes = inputs
        keyed_sessions = sessions | "TagSessions" >> beam.Map(lambda kv: (kv[0], (_SESSION, kv[1][0], kv[1][1])))
        keyed_changes = (changes
                         | "ChangesToGlobalWindow" >> beam.WindowInto(GlobalWindows())
                         | "TagChanges" >> beam.Map(lambda c: (c.restaurant_id, (_CHANGE, c))))
        return (
            (keyed_sessions, keyed_changes)
            | "Together" >> beam.Flatten().with_output_types(tuple[str, typing.Any])
            | "Evaluate" >> beam.ParDo(_EvaluateStatusFn(
                self._hours, self._gap, self._as_of, self._at_session_end, self._max_idle_days, self._track_from))
        )

