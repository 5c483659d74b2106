# ruff: noqa: B008 - Beam declares state, timers and keys as DoFn parameter defaults
"""Status intervals per restaurant: sessions + availability changes + opening hours -> online / offline.

``RestaurantStatusIntervals`` takes ``(sessions, changes)``: the connected intervals of
``KeepaliveSessions`` and the ``AvailabilityChange`` stream. A stateful DoFn (keyed by a shard of
restaurants) keeps what it has not finalised yet and, on event-time timers, finalises each restaurant's
timeline with ``presence_rules.evaluate`` up to the latest instant known to be final:

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

A restaurant's timeline starts at its own first known event (first session or availability change). With
``track_from_ms`` (bounded runs over a known period), a restaurant that already had events by then starts
exactly there (the time before its first event of the period counts against it), and one first seen later
still starts at its first event: a restaurant is never charged for time before it existed, whatever else
its shard holds (every restaurant is finalised from its own start; a shard's timer only says *when*).
Day closes keep being evaluated (offline time accrues) until ``max_idle_days`` pass without any input for the
restaurant; then its timers stop, so state and timers stay bounded (and a drained pipeline terminates).
Intervals are emitted once per finalisation; the Postgres sink upserts them by (restaurant, start).

Metrics (namespace ``RestaurantStatusIntervals``): ``intervals`` emitted, ``restaurant_finalizations``,
``late_sessions_ignored`` / ``late_pings_ignored``: sessions (and the keep-alives they carry) that arrived
after the restaurant's timeline was final over their whole span, so they could not change anything.
"""
from __future__ import annotations

import typing
import zlib

import apache_beam as beam
from apache_beam.coders import Coder, ListCoder, NullableCoder, StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from orderflow.model.presence import (
    CONNECTION_KINDS,
    DEFAULT_KEEPALIVE_GAP_MS,
    SCHEDULE_CANCELLED,
    SCHEDULE_CREATED,
    SET_STATUS,
    AvailabilityChange,
    OpeningHours,
    TimelineProgress,
    evaluate,
    schedules,
    state_changes,
)

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
INTERVALS = ("RestaurantStatusIntervals", "intervals")
LATE_PINGS_IGNORED = ("RestaurantStatusIntervals", "late_pings_ignored")

__all__ = ["PROGRESS_TAG", "RestaurantStatusIntervals", "PendingItemCoder", "ShardProgressCoder", "shard_of", "INTERVALS",
           "LATE_PINGS_IGNORED"]

_SESSION = "S"
_CHANGE = "A"
_PROGRESS = "P"  # a restaurant's stored TimelineProgress, restored when a pipeline starts (never kept as pending)
PROGRESS_TAG = "progress"
_KEYED = tuple[int, typing.Any]  # (shard, (restaurant_id, item)): what the evaluation takes


def _item_start(item) -> int:
    return item[1] if item[0] == _SESSION else item[1].occurred_at


def _retained(items: list, until: int) -> list:
    """What state still needs after the timeline is final up to ``until``."""
    sessions = [i for i in items if i[0] == _SESSION and i[2] > until]
    changes = [i[1] for i in items if i[0] == _CHANGE]
    current, later = [], []
    for kinds in ((SET_STATUS,), CONNECTION_KINDS):  # each a state the latest change sets
        ordered = state_changes(changes, kinds)
        current += [c for c in ordered if c.occurred_at <= until][-1:]
        later += [c for c in ordered if c.occurred_at > until]
    finished = {s.schedule_id for s in schedules(changes) if s.effective[1] <= until}
    schedule_changes = [c for c in changes if c.kind in (SCHEDULE_CREATED, SCHEDULE_CANCELLED)
                        and c.schedule_id not in finished]
    return sessions + [(_CHANGE, c) for c in current + later + schedule_changes]


def _pings(session: tuple) -> int:
    return session[2] if len(session) > 2 else 1


# -- the state's coders ------------------------------------------------------------------------------------
# State outlives the code that wrote it (a Flink savepoint is restored by the next release), so its bytes
# are an explicit format built from Beam's standard coders, with no Python class or module path in them
# (a pickle would name them, and moving a class would break the restore). Each value starts with its
# format version; a new layout gets a new version and the decoder keeps reading the old ones.
_FORMAT_V1 = 1
_INT, _OPTIONAL_INT, _STR, _OPTIONAL_STR = VarIntCoder(), NullableCoder(VarIntCoder()), StrUtf8Coder(), NullableCoder(StrUtf8Coder())
# AvailabilityChange, field by field in its declared order.
_CHANGE_V1 = TupleCoder([_STR, _STR, _STR, _OPTIONAL_STR, _OPTIONAL_STR, _OPTIONAL_STR, _OPTIONAL_INT, _OPTIONAL_INT, _INT])
# (version, restaurant_id, session (start_ms, end_ms) or None, change or None): exactly one of the two is set.
_PENDING_V1 = TupleCoder([_INT, _STR, NullableCoder(TupleCoder([_INT, _INT])), NullableCoder(_CHANGE_V1)])
# (version, [(restaurant_id, final_until or None, last_input, first), ...])
_PROGRESS_V1 = TupleCoder([_INT, ListCoder(TupleCoder([_STR, _OPTIONAL_INT, _INT, _INT]))])


def _check_version(version: int, what: str) -> None:
    if version != _FORMAT_V1:
        raise ValueError(f"{what} state in format version {version}; this release reads version {_FORMAT_V1}")


class PendingItemCoder(Coder):
    """Coder of the status evaluation's pending inputs: ``(restaurant_id, ("S", start_ms, end_ms))`` or
    ``(restaurant_id, ("A", AvailabilityChange))``."""

    def encode(self, value) -> bytes:
        restaurant_id, item = value
        if item[0] == _SESSION:
            return _PENDING_V1.encode((_FORMAT_V1, restaurant_id, (item[1], item[2]), None))
        return _PENDING_V1.encode((_FORMAT_V1, restaurant_id, None, tuple(item[1])))

    def decode(self, encoded: bytes):
        version, restaurant_id, session, change = _PENDING_V1.decode(encoded)
        _check_version(version, "pending")
        if session is not None:
            return restaurant_id, (_SESSION, session[0], session[1])
        return restaurant_id, (_CHANGE, AvailabilityChange(*change))

    def is_deterministic(self) -> bool:
        return True


class ShardProgressCoder(Coder):
    """Coder of a shard's progress: ``{restaurant_id: [final_until or None, last_input, first]}`` (ms)."""

    def encode(self, value: dict) -> bytes:
        return _PROGRESS_V1.encode((_FORMAT_V1, [(rid, *entry) for rid, entry in value.items()]))

    def decode(self, encoded: bytes) -> dict:
        version, entries = _PROGRESS_V1.decode(encoded)
        _check_version(version, "progress")
        return {rid: [final_until, last_input, first] for rid, final_until, last_input, first in entries}

    def is_deterministic(self) -> bool:
        return True


def shard_of(restaurant_id: str, shards: int) -> int:
    """Stable shard of a restaurant (the same on every worker and run)."""
    return zlib.crc32(restaurant_id.encode()) % shards


class _EvaluateStatusFn(beam.DoFn):
    """Keyed by shard: state holds the pending inputs and the progress of every restaurant of the shard.

    Per-restaurant keys would cost a few state reads and writes per restaurant per bundle, and the Python
    SDK harness' state cache measures the deep size of every value it caches (objsize, milliseconds each
    with Beam's module graph loaded): that dominated the whole pipeline. A shard's state is one bag and
    one small dict however many restaurants it holds, so state traffic grows with shards, not restaurants.
    """

    PENDING = BagStateSpec("pending", PendingItemCoder())          # (restaurant_id, item)
    PROGRESS = ReadModifyWriteStateSpec("progress", ShardProgressCoder())  # restaurant_id -> [final_until, last_input, first]
    NEXT_TIMER = ReadModifyWriteStateSpec("next_timer", VarIntCoder())
    FINALIZE = TimerSpec("finalize", TimeDomain.WATERMARK)

    def __init__(self, hours: OpeningHours, gap_ms: int, as_of_ms: int | None, finalize_at_session_end: bool,
                 max_idle_days: int, track_from_ms: int | None, granularity_ms: int):
        self._track_from = track_from_ms
        self._hours = hours
        self._max_idle_ms = max_idle_days * 86_400_000
        self._gap = gap_ms
        self._as_of = as_of_ms
        self._at_session_end = finalize_at_session_end
        self._granularity = max(1, granularity_ms)
        self._intervals = Metrics.counter(*INTERVALS)
        self._late_sessions = Metrics.counter("RestaurantStatusIntervals", "late_sessions_ignored")
        self._late_pings = Metrics.counter(*LATE_PINGS_IGNORED)
        self._finalized = Metrics.counter("RestaurantStatusIntervals", "restaurant_finalizations")
        self._restored = Metrics.counter("RestaurantStatusIntervals", "restored_timelines")

    def _day_close_after(self, t: int) -> int:
        """The first ``closes + gap`` strictly after ``t``."""
        return self._hours.next_close(t - self._gap) + self._gap

    def _timer_at(self, point: int) -> int:
        if self._as_of is not None:
            point = min(point, self._as_of + self._gap)
        return -(-point // self._granularity) * self._granularity  # one firing per granule for the shard

    def _arm(self, point: int, next_timer, timer) -> None:
        at = self._timer_at(point)
        current = next_timer.read()
        if current is None or at < current:
            next_timer.write(at)
            timer.set(Timestamp(micros=at * 1000))

    def _start(self, progress_entry) -> int:
        """Where the restaurant's unfinalised timeline starts: where it was final, else its first event
        (``track_from`` if it had events by then)."""
        done, _, first = progress_entry
        if done is not None:
            return done
        return first if self._track_from is None else max(first, self._track_from)

    def process(self, element, pending=beam.DoFn.StateParam(PENDING), progress=beam.DoFn.StateParam(PROGRESS),
                next_timer=beam.DoFn.StateParam(NEXT_TIMER), timer=beam.DoFn.TimerParam(FINALIZE)):
        _, (restaurant_id, item) = element
        if item[0] == _PROGRESS:
            self._restore(restaurant_id, item[1], progress, next_timer, timer)
            return
        if item[0] == _SESSION:
            pings, item = item[3], item[:3]
        state = progress.read() or {}
        entry = state.get(restaurant_id)
        start = _item_start(item)
        end = item[2] if item[0] == _SESSION else item[1].occurred_at
        if entry is None:
            entry = state[restaurant_id] = [None, end, start]
        elif entry[0] is not None and item[0] == _SESSION and end <= entry[0]:
            self._late_sessions.inc()  # its time is already final
            self._late_pings.inc(pings)
            return
        entry[1] = max(entry[1], end)
        if entry[0] is None:
            entry[2] = min(entry[2], start)
        pending.add((restaurant_id, item))
        progress.write(state)
        after = max(start, self._start(entry))
        if self._as_of is not None and after >= self._as_of:
            return  # beyond the cut-off: never evaluated
        point = self._day_close_after(after)
        if item[0] == _SESSION and self._at_session_end:
            point = min(point, item[2])
        self._arm(point, next_timer, timer)

    def _restore(self, restaurant_id: str, stored: TimelineProgress, progress, next_timer, timer) -> None:
        """Goes on from the restaurant's stored progress: its timeline is final up to there, whatever of its
        inputs reached this (restarted) evaluation first."""
        state = progress.read() or {}
        entry = state.get(restaurant_id)
        if entry is None:
            entry = state[restaurant_id] = [stored.final_until_ms, stored.last_input_ms, stored.first_ms]
        else:
            entry[0] = stored.final_until_ms if entry[0] is None else max(entry[0], stored.final_until_ms)
            entry[1] = max(entry[1], stored.last_input_ms)
            entry[2] = min(entry[2], stored.first_ms)
        progress.write(state)
        self._restored.inc()
        if self._as_of is None or entry[0] < self._as_of:
            self._arm(self._day_close_after(entry[0]), next_timer, timer)

    def _horizon(self, done: int, sessions_ends: list[int], fired: int) -> int | None:
        """The latest instant in ``(done, fired]`` up to which the restaurant's timeline is final."""
        best = None
        close = self._day_close_after(done)
        while close <= fired:
            best, close = close, self._day_close_after(close)
        if self._at_session_end:
            ends = [e for e in sessions_ends if done < e <= fired]
            if ends:
                best = max(ends) if best is None else max(best, max(ends))
        if self._as_of is not None:
            if fired >= self._as_of + self._gap:
                best = self._as_of
            elif best is not None:
                best = min(best, self._as_of)
        return best if best is not None and best > done else None

    @on_timer(FINALIZE)
    def finalize(self, fired=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
                 progress=beam.DoFn.StateParam(PROGRESS), next_timer=beam.DoFn.StateParam(NEXT_TIMER),
                 timer=beam.DoFn.TimerParam(FINALIZE)):
        next_timer.clear()
        fired_ms = fired.micros // 1000
        state = progress.read() or {}
        by_restaurant: dict[str, list] = {}
        for restaurant_id, item in pending.read():
            by_restaurant.setdefault(restaurant_id, []).append(item)
        changed = False
        next_point = None
        for restaurant_id in list(state):
            entry = state[restaurant_id]
            items = by_restaurant.get(restaurant_id, [])
            done = self._start(entry)
            until = self._horizon(done, [i[2] for i in items if i[0] == _SESSION], fired_ms)
            if until is not None:
                sessions = [(i[1], i[2]) for i in items if i[0] == _SESSION]
                changes = [i[1] for i in items if i[0] == _CHANGE]
                intervals = evaluate(restaurant_id, done, until, sessions, changes, self._hours)
                self._intervals.inc(len(intervals))
                self._finalized.inc()
                yield from intervals
                entry[0] = done = until
                # After its intervals: stored in their transaction or a later one, never ahead of them.
                yield beam.pvalue.TaggedOutput(PROGRESS_TAG, TimelineProgress(restaurant_id, until, entry[1], entry[2]))
                by_restaurant[restaurant_id] = items = _retained(items, until)
                changed = True
            if self._as_of is not None and done >= self._as_of:
                continue
            points = []
            if done - entry[1] < self._max_idle_ms:
                points.append(self._day_close_after(done))
            elif not items:
                del state[restaurant_id]  # idle for too long: forget it
                changed = True
                continue
            if self._at_session_end:
                points += [i[2] for i in items if i[0] == _SESSION and i[2] > done]
            if points:
                point = min(points)
                next_point = point if next_point is None else min(next_point, point)
        if changed:
            progress.write(state)
            pending.clear()
            for restaurant_id, items in by_restaurant.items():
                if restaurant_id in state:
                    for item in items:
                        pending.add((restaurant_id, item))
        if next_point is not None:
            self._arm(next_point, next_timer, timer)


class RestaurantStatusIntervals(beam.PTransform):
    """``(sessions, changes[, restored])`` -> ``StatusInterval`` rows (online / offline_scheduled /
    offline_unexplained).

    Args:
        opening_hours, gap_ms: the presence rules (``PresenceRules``).
        as_of_ms: bounded runs' cut-off: nothing after it is evaluated and the last intervals end there
            (``KeepaliveSessions`` must get the same cut-off).
        finalize_at_session_end: emit intervals as each session closes (streaming freshness) instead of
            only per opening day.
        max_idle_days: a restaurant without input for this long stops being evaluated.
        track_from_ms: the start of the evaluated period: a restaurant with events by then starts there,
            one first seen later at its first event (default: every restaurant at its first event).
        shards: state is kept per shard of restaurants.
        granularity_ms: a shard's timer fires at most once per this much event time (each restaurant is
            still finalised exactly at its own safe instants).
        with_progress: also return, as the ``progress`` output, a ``TimelineProgress`` after each restaurant's
            finalisation (after its intervals), for ``WriteStatusIntervals`` to store with them; the result is
            then a ``DoOutputsTuple`` (``intervals``, ``progress``).

    ``sessions``: ``(restaurant_id, (start_ms, end_ms[, pings]))`` from ``KeepaliveSessions``; ``changes``:
    ``AvailabilityChange`` elements timestamped at ``occurred_at``; ``restored`` (optional): the stored
    ``TimelineProgress`` and ``AvailabilityChange``s a restarted pipeline goes on from
    (``orderflow.io.presence_restore.RestorePresenceState``).
    """

    def __init__(self, opening_hours: OpeningHours | None = None, gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS,
                 as_of_ms: int | None = None, finalize_at_session_end: bool = True, max_idle_days: int = 30,
                 track_from_ms: int | None = None, shards: int = 128, granularity_ms: int = 60_000,
                 with_progress: bool = False):
        super().__init__()
        self._with_progress = with_progress
        self._shards = shards
        self._granularity = granularity_ms
        self._hours = opening_hours or OpeningHours()
        self._gap = gap_ms
        self._as_of = as_of_ms
        self._at_session_end = finalize_at_session_end
        self._max_idle_days = max_idle_days
        self._track_from = track_from_ms

    def expand(self, inputs):
        sessions, changes, *restored = inputs
        shards = self._shards
        # Every input tagged with one element type, so one coder: a Flatten's input with a coder of its own
        # gets a stage of its own on Prism, one more bundle per input bundle.
        keyed_sessions = sessions | "TagSessions" >> beam.Map(
            lambda kv: (shard_of(kv[0], shards), (kv[0], (_SESSION, kv[1][0], kv[1][1], _pings(kv[1]))))
        ).with_output_types(_KEYED)
        keyed_changes = (changes
                         | "ChangesToGlobalWindow" >> beam.WindowInto(GlobalWindows())
                         | "TagChanges" >> beam.Map(
                             lambda c: (shard_of(c.restaurant_id, shards), (c.restaurant_id, (_CHANGE, c))))
                         .with_output_types(_KEYED))
        keyed = [keyed_sessions, keyed_changes]
        if restored:
            keyed.append(restored[0]
                         | "RestoredToGlobalWindow" >> beam.WindowInto(GlobalWindows())
                         | "TagRestored" >> beam.Map(_tag_restored, shards).with_output_types(_KEYED))
        evaluated = (
            tuple(keyed)
            | "Together" >> beam.Flatten().with_output_types(_KEYED)
            | "Evaluate" >> beam.ParDo(_EvaluateStatusFn(
                self._hours, self._gap, self._as_of, self._at_session_end, self._max_idle_days, self._track_from,
                self._granularity)).with_outputs(PROGRESS_TAG, main="intervals")
        )
        return evaluated if self._with_progress else evaluated.intervals


def _tag_restored(item: TimelineProgress | AvailabilityChange, shards: int):
    kind = _PROGRESS if isinstance(item, TimelineProgress) else _CHANGE
    return shard_of(item.restaurant_id, shards), (item.restaurant_id, (kind, item))

