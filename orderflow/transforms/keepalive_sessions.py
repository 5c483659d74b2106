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

from orderflow.model.presence import DEFAULT_KEEPALIVE_GAP_MS, OpeningHours, to_ms


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

    def __init__(self, gap_ms: int, hours: OpeningHours, max_buffered: int, until_ms: int | None):
        self._until = until_ms if until_ms is not None else 2**62
        self._gap = gap_ms
        self._hours = hours
        self._max_buffered = max_buffered
        self._pings = Metrics.counter("KeepaliveSessions", "pings")
        self._outside = Metrics.counter("KeepaliveSessions", "intervals_outside_opening_hours")
        self._after_cut_off = Metrics.counter("KeepaliveSessions", "pings_after_cut_off")
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
        relevant = self._hours.relevant_windows(self._min_ms, self._max_ms, self._gap)
        starts = [s for s, _ in relevant]
        gap, step = self._gap, self._gap - 1
        emitted = outside = 0
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
                        last = max(e - gap, s)
                        markers = [*range(s, last, step), last]
                        emitted += len(markers)
                        for t in markers:
                            # the interval's pings ride on its first marker (counted in late panes)
                            value = (restaurant_id, pings)
                            pings = 0
                            yield (GlobalWindows.windowed_value(value, _ts(t)) if as_windowed
                                   else window.TimestampedValue(value, _ts(t)))
                    j += 1
                if not kept:
                    outside += 1
        self._markers.inc(emitted)
        self._outside.inc(outside)
        self._buffer, self._buffered, self._min_ms, self._max_ms = {}, 0, None, None


class _EmitSessionFn(beam.DoFn):
    def __init__(self):
        self._sessions = Metrics.counter("KeepaliveSessions", "sessions")
        self._late_sessions = Metrics.counter("KeepaliveSessions", "late_sessions")
        self._late_pings = Metrics.counter("KeepaliveSessions", "late_pings")

    def process(self, element, session=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        restaurant_id, counts = element
        pings = sum(counts)
        self._sessions.inc()
        if pane.timing == PaneInfoTiming.LATE:
            self._late_sessions.inc()
            self._late_pings.inc(pings)
        yield restaurant_id, (session.start.micros // 1000, session.end.micros // 1000, pings)


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
    ``ReadFromKafka(batch_size=...)`` after ``DecodeAvro``). Output: ``(restaurant_id, (start_ms, end_ms,
    pings))`` in the global window, timestamped at the session's end, emitted when the watermark passes the
    end (and again, with the new bounds and the late pings' count, for each late pane).
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
        return (
            keepalives
            | "MergePingsPerRestaurant" >> beam.ParDo(
                _MergePingsFn(self._gap_ms, self._hours, self._max_buffered, self._until)
            ).with_output_types(tuple[str, int])
            | "SessionWindows" >> beam.WindowInto(
                Sessions(self._gap_ms / 1000), allowed_lateness=Duration(micros=self._allowed_lateness_ms * 1000))
            | "GroupSessions" >> beam.GroupByKey()
            | "EmitSessions" >> beam.ParDo(_EmitSessionFn()).with_output_types(tuple[str, tuple[int, int]])
            | "ToGlobalWindow" >> beam.WindowInto(GlobalWindows())
        )
