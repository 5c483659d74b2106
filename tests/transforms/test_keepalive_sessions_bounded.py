"""KeepaliveSessions on bounded input (a bounded replay) groups one piece per restaurant and bundle in the global
window instead of merging session windows of markers: the sessions it emits, their pings and their timestamps
must be exactly those of the session-window path on the same pings."""
from __future__ import annotations

import datetime as dt
import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from orderflow.transforms.keepalive_sessions import KeepaliveSessions
from tests.support.presence_timeline import HOURS, at, pings

AS_OF = at(23, 30, day=dt.date(2026, 3, 11))
_STREAMED: list = []  # what the session-window path emitted (the in-process runner shares this module)


def _keep(session) -> None:
    _STREAMED.append(session)  # looked up by name: a pickled bound method would carry a copy of the list


def _pings() -> list[dict]:
    """Pings of a day and a half: regular runs with outages, lone pings, pings just before opening time and
    across closing time and midnight, duplicates, out of order, and some after the cut-off."""
    rng = random.Random(15)
    out = []
    for r in range(12):
        rid = f"r{r}"
        t = at(9, 40) + rng.randrange(0, 120_000)
        while t < AS_OF + 600_000:
            run_end = t + rng.choice([30_000, 90_000, 600_000, 3_600_000, 5 * 3_600_000])
            out += [{"restaurant_id": rid, "sent_at": p} for p in pings(t, run_end, every_s=rng.choice([20, 30, 60]))]
            t = run_end + rng.choice([60_000, 119_000, 121_000, 300_000, 3_600_000])
    out += [{"restaurant_id": "lone", "sent_at": at(9, 57, 30)}, {"restaurant_id": "lone", "sent_at": at(22, 59, 59)}]
    out += rng.sample(out, 200)  # duplicates
    rng.shuffle(out)             # and out of order
    return out


def _sessions(pipeline, keepalives):
    # max_buffered=1: each batch is merged and clipped on its own (a flush per element), on both paths alike,
    # whatever bundles the runner makes (clipping a whole run of pings can keep pings and time that clipping
    # its parts drops, so the flushes must be the same for the outputs to be comparable).
    return (keepalives
            | KeepaliveSessions(opening_hours=HOURS, until_ms=AS_OF, max_buffered=1)
            | beam.Map(lambda kv, t=beam.DoFn.TimestampParam: (kv[0], tuple(kv[1]), t.micros)))


def test_bounded_sessions_equal_the_session_window_path():
    records = _pings()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = TestStream()
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        stream.add_elements([TimestampedValue(chunk, min(r["sent_at"] for r in chunk) / 1000)])
    stream = stream.advance_watermark_to_infinity()
    _STREAMED.clear()

    # The session-window path: unbounded input.
    with TestPipeline(options=options) as p:
        streamed = p | stream
        assert not streamed.is_bounded
        _ = _sessions(p, streamed) | beam.Map(_keep)
    expected = list(_STREAMED)
    assert len(expected) > 30 and {rid for rid, _, _ in expected} >= {"r0", "lone"}

    # The bounded path on the same batches: the pieces of a session from several batches meet only in the
    # grouping, overlapping, out of order, some only touching.
    with TestPipeline() as p:
        keepalives = p | beam.Create([records[i:i + 500] for i in range(0, len(records), 500)])
        assert keepalives.is_bounded
        assert_that(_sessions(p, keepalives), equal_to(expected))
