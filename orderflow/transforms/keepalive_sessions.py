"""Session windows over keep-alives: each restaurant's connected intervals ``[first ping, last ping + gap)``.

A plain ``beam.WindowInto(Sessions(gap))`` over every ping costs one Beam element (and one window merge)
per ping. Pings of one restaurant that arrive together can be merged first without changing the result:
a run of pings less than ``gap`` apart *is* one session ``[first, last + gap)``. So the transform

1. merges the pings of each restaurant seen in a bundle into intervals (``_MergePingsFn``; the bundle's
   buffer is flushed when it grows past ``max_buffered`` and at bundle end), and clips them to the only
   stretches where a ping can matter, ``[opens - gap, closes + gap)`` of each day's opening hours, keeping
   only pieces that start before ``closes`` (a piece starting later covers no open time, and its session
   window ``[start, start + gap)`` would reach past ``closes + gap``);
2. re-emits each interval ``[s, e)`` as the fewest *markers* whose session windows ``[t, t + gap)``
   cover exactly ``[s, e)``: ``s``, then steps of ``gap - 1 ms``, then ``e - gap`` (one marker per
   ``gap`` of connected time instead of one per ping: 4x fewer at a 30 s cadence and a 2 min gap, and a
   single marker for a lone ping);
3. windows the markers with Beam's standard ``Sessions(gap)`` (a runner such as Flink merges standard
   session windows natively; a custom Python WindowFn it cannot rebuild) and groups by restaurant: when
   the watermark passes a session's end, it fires once with its final bounds, emitted as
   ``(restaurant_id, (start_ms, end_ms, pings))`` in the global window.

**Bounded input** (``PCollection.is_bounded``: a ``--bounded`` replay) skips steps 2-3: every ping is there
before any session could fire, so each flush emits its clipped intervals themselves (an interval shorter than
``gap`` after clipping extended to ``gap``, as its single marker's window would be), grouped per restaurant in
the global window and merged where they overlap, as the session windows would merge (pieces that only touch
stay apart, as windows do). Same sessions, pings and timestamps, one element per interval and flush instead
of one per ``gap`` of connected time through a merging GroupByKey (which held every marker as a windowed value,
~230 B each: 0.7 GB at 100,000 restaurants x 1 h, and most of a bounded run's time).

Clipping so also bounds every session within ``[opens - gap, closes + gap)`` of one opening day, which lets
the status evaluation close a day as soon as the watermark passes ``closes + gap``.

**Late pings.** A ping that arrives after the watermark passed its session is *late*. The session windows
allow lateness up to the longest ``[opens - gap, closes + gap)`` of a day (``allowed_lateness_ms``): a
late ping fires a late pane at once, the session with its new bounds, which the status evaluation still
uses wherever its timeline is not final yet. Each marker carries the number of pings it stands for, so
late panes are counted in pings: ``KeepaliveSessions/late_pings``; the evaluation counts the late pings it
could no longer use in ``RestaurantStatusIntervals/late_pings_ignored``. A ping later than the allowed
lateness is dropped by the runner itself (Flink counts it in its ``droppedDueToLateness`` metric): by then
the watermark has passed ``closes + gap`` of its day, which the evaluation has closed, so it could not have
changed anything either.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.window import GlobalWindows, Sessions
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from orderflow.model.presence import DEFAULT_KEEPALIVE_GAP_MS, OpeningHours, session_markers, to_ms

__all__ = ["KeepaliveSessions", "LATE_PINGS", "PINGS_AFTER_CUT_OFF", "SESSIONS"]

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
SESSIONS = ("KeepaliveSessions", "sessions")
LATE_PINGS = ("KeepaliveSessions", "late_pings")
PINGS_AFTER_CUT_OFF = ("KeepaliveSessions", "pings_after_cut_off")


def _ts(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def _merge_counted(flat: list[int]) -> list[int]:
    """Flat ``[start, end, pings, ...]`` intervals merged where they overlap (pings summed), sorted."""
    merged: list[int] = []
    for i in sorted(range(0, len(flat), 3), key=lambda i: flat[i]):
        start, end, pings = flat[i], flat[i + 1], flat[i + 2]
        if merged and start < merged[-2]:
            merged[-2] = max(merged[-2], end)
            merged[-1] += pings
        else:
            merged.extend((start, end, pings))
    return merged


class _MergePingsFn(beam.DoFn):
    """Keep-alive dicts (or lists of them) -> ``(restaurant_id, pings)`` session markers (see module doc):
    the first marker of an interval carries the number of pings merged into it, the others 0."""

    def __init__(self, gap_ms: int, hours: OpeningHours, max_buffered: int, until_ms: int | None,
                 as_intervals: bool = False):
        self._as_intervals = as_intervals
        self._until = until_ms if until_ms is not None else 2**62
        self._gap = gap_ms
        self._hours = hours
        self._max_buffered = max_buffered
        self._pings = Metrics.counter("KeepaliveSessions", "pings")
        self._outside = Metrics.counter("KeepaliveSessions", "intervals_outside_opening_hours")
        self._after_cut_off = Metrics.counter(*PINGS_AFTER_CUT_OFF)
        self._markers = Metrics.counter("KeepaliveSessions", "session_markers")

    def start_bundle(self):
        self._buffer: dict[str, list[int]] = {}  # restaurant -> flat [s0, e0, n0, s1, e1, n1, ...] (n: pings)
        self._buffered = 0
        self._min_ms = None
        self._max_ms = None

    def process(self, element):
        records = element if isinstance(element, list) else (element,)
        gap, buffer = self._gap, self._buffer
        lo, hi = self._min_ms, self._max_ms
        until, after_cut_off = self._until, 0
        for record in records:
            sent = record["sent_at"]
            ping = sent if isinstance(sent, int) else to_ms(sent)
            if ping >= until:
                after_cut_off += 1
                continue
            if lo is None or ping < lo:
                lo = ping
            if hi is None or ping > hi:
                hi = ping
            flat = buffer.get(record["restaurant_id"])
            if flat is None:
                buffer[record["restaurant_id"]] = [ping, ping + gap, 1]
                self._buffered += 1
            elif flat[-3] <= ping < flat[-2]:  # the usual case: the next ping extends the last interval
                if ping + gap > flat[-2]:
                    flat[-2] = ping + gap
                flat[-1] += 1
            elif ping >= flat[-2]:
                flat.extend((ping, ping + gap, 1))
                self._buffered += 1
            else:  # out of order: rebuild this restaurant's intervals
                flat[:] = _merge_counted([*flat, ping, ping + gap, 1])
        self._pings.inc(len(records))
        if after_cut_off:
            self._after_cut_off.inc(after_cut_off)
        self._min_ms, self._max_ms = lo, hi
        if self._buffered >= self._max_buffered:
            yield from self._flush(as_windowed=False)

    def finish_bundle(self):
        # finish_bundle has no input element whose window an output could take: its outputs name their
        # window, the global one of the keep-alives (Beam's public GlobalWindows.windowed_value).
        yield from self._flush(as_windowed=True)

    def _flush(self, as_windowed: bool) -> Iterable:
        if not self._buffer:
            return
        gap, emitted = self._gap, 0
        for restaurant_id, start, end, pings in self._pieces():
            if self._as_intervals:  # bounded input: the piece itself, merged per restaurant downstream
                value, times = (restaurant_id, (start, end, pings)), (start,)
            else:
                value, times = (restaurant_id, pings), session_markers(start, end, gap)
            emitted += len(times)
            for t in times:
                # the piece's pings ride on its first marker (counted in late panes)
                yield (GlobalWindows.windowed_value(value, _ts(t)) if as_windowed
                       else window.TimestampedValue(value, _ts(t)))
                value = (restaurant_id, 0)
        if not self._as_intervals:
            self._markers.inc(emitted)
        self._buffer, self._buffered, self._min_ms, self._max_ms = {}, 0, None, None

    def _pieces(self) -> Iterable[tuple[str, int, int, int]]:
        """The buffered intervals clipped to the relevant windows, as ``(restaurant_id, start, end, pings)``
        with ``end >= start + gap``: exactly the union of the session windows ``[t, t + gap)`` of the markers
        that stand for the piece."""
        relevant = self._hours.relevant_windows(self._min_ms, self._max_ms, self._gap)
        starts = [s for s, _ in relevant]
        gap = self._gap
        outside = 0
        for restaurant_id, flat in self._buffer.items():
            for i in range(0, len(flat), 3):
                start, end, pings = flat[i], flat[i + 1], flat[i + 2]
                # clip [start, end) to the relevant windows it overlaps (usually exactly one)
                j = max(bisect.bisect_right(starts, start) - 1, 0)
                kept = False
                while j < len(relevant) and relevant[j][0] < end:
                    s, e = max(start, relevant[j][0]), min(end, relevant[j][1])
                    if s < e and s < relevant[j][1] - gap:  # starts before closing time
                        kept = True
                        yield restaurant_id, s, max(e, s + gap), pings
                        pings = 0
                    j += 1
                if not kept:
                    outside += 1
        self._outside.inc(outside)


class _EmitSessionFn(beam.DoFn):
    def __init__(self):
        self._sessions = Metrics.counter(*SESSIONS)
        self._late_sessions = Metrics.counter("KeepaliveSessions", "late_sessions")
        self._late_pings = Metrics.counter(*LATE_PINGS)

    def process(self, element, session=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        restaurant_id, counts = element
        pings = sum(counts)
        self._sessions.inc()
        if pane.timing == PaneInfoTiming.LATE:
            self._late_sessions.inc()
            self._late_pings.inc(pings)
        yield restaurant_id, (session.start.micros // 1000, session.end.micros // 1000, pings)


class _MergeIntervalsFn(beam.DoFn):
    """Bounded input: a restaurant's pieces -> its sessions, as the session windows of their markers would
    merge (overlapping pieces merge; pieces that only touch do not), timestamped like a session window's
    pane (its end - 1 µs)."""

    def __init__(self):
        self._sessions = Metrics.counter(*SESSIONS)

    def process(self, element):
        restaurant_id, pieces = element
        merged = _merge_counted([x for piece in pieces for x in piece])
        self._sessions.inc(len(merged) // 3)
        for i in range(0, len(merged), 3):
            start, end, pings = merged[i], merged[i + 1], merged[i + 2]
            yield window.TimestampedValue((restaurant_id, (start, end, pings)), Timestamp(micros=end * 1000 - 1))


class KeepaliveSessions(beam.PTransform):
    """Decoded keep-alives -> connected intervals per restaurant, one per session window.

    Args:
        gap_ms: the keep-alive timeout: a restaurant is connected until this long after a ping.
        opening_hours: pings outside ``[opens - gap, closes + gap)`` of every day are dropped (counted).
        max_buffered: intervals buffered per bundle before they are flushed as markers.
        until_ms: bounded runs' cut-off; pings at or after it are dropped (counted), so every session
            ends by ``until_ms + gap``.
        allowed_lateness_ms: how late (behind the watermark) a ping may arrive and still fire a late pane;
            default: the longest ``[opens - gap, closes + gap)`` of a day (see the module doc).

    Input: dicts ``{"restaurant_id": str, "sent_at": datetime | int ms}`` or lists of them (the batches of
    ``ReadFromKafka(batch_size=...)`` after ``DecodeAvro``), in one PCollection or a tuple of them (read
    keep-alives and restored ones): each is merged and windowed where it is produced and they meet only at the
    grouping, since a runner such as Prism starts a new stage, one more bundle per input bundle, after a
    ``Flatten``.

    Output: ``(restaurant_id, (start_ms, end_ms, pings))`` in the global window, timestamped at the session's
    end, emitted when the watermark passes the end (and again, with the new bounds and the late pings' count,
    for each late pane).
    """

    def __init__(self, gap_ms: int = DEFAULT_KEEPALIVE_GAP_MS, opening_hours: OpeningHours | None = None,
                 max_buffered: int = 500_000, until_ms: int | None = None, allowed_lateness_ms: int | None = None):
        super().__init__()
        self._gap_ms = gap_ms
        self._hours = opening_hours or OpeningHours()
        self._max_buffered = max_buffered
        self._until = until_ms
        self._allowed_lateness_ms = (self._hours.longest_window_ms() + 2 * gap_ms
                                     if allowed_lateness_ms is None else allowed_lateness_ms)

    def expand(self, keepalives):
        inputs = keepalives if isinstance(keepalives, tuple) else (keepalives,)
        if all(pcoll.is_bounded for pcoll in inputs):
            # Every ping is there before any session could fire: the sessions are the merged pieces, and
            # grouping one piece per restaurant and bundle in the global window gives exactly what the
            # session windows of the markers give, without a merging GroupByKey over ~one marker per gap of
            # connected time (in a bounded run, most of its time and memory).
            return (
                _per_input(inputs, "MergePingsPerRestaurant", lambda: beam.ParDo(_MergePingsFn(
                    self._gap_ms, self._hours, self._max_buffered, self._until, as_intervals=True)
                ).with_output_types(tuple[str, tuple[int, int, int]]))
                | "GroupPieces" >> beam.GroupByKey()
                | "EmitSessions" >> beam.ParDo(_MergeIntervalsFn()).with_output_types(tuple[str, tuple[int, int, int]])
            )
        return (
            _per_input(inputs, "SessionMarkers", lambda: (
                "MergePingsPerRestaurant" >> beam.ParDo(
                    _MergePingsFn(self._gap_ms, self._hours, self._max_buffered, self._until)
                ).with_output_types(tuple[str, int])
                | "SessionWindows" >> beam.WindowInto(
                    Sessions(self._gap_ms / 1000), allowed_lateness=Duration(micros=self._allowed_lateness_ms * 1000))))
            | "GroupSessions" >> beam.GroupByKey()
            | "EmitSessions" >> beam.ParDo(_EmitSessionFn()).with_output_types(tuple[str, tuple[int, int]])
            | "ToGlobalWindow" >> beam.WindowInto(GlobalWindows())
        )


def _per_input(inputs: tuple, label: str, make_transform):
    """``make_transform()`` applied to each input, the outputs flattened: right before a grouping, where the
    flatten costs no stage of its own (a step after a ``Flatten`` would start one)."""
    if len(inputs) == 1:
        return inputs[0] | label >> make_transform()
    outputs = [pcoll | f"{label}[{i}]" >> make_transform() for i, pcoll in enumerate(inputs)]
    return outputs | f"{label}Together" >> beam.Flatten()
