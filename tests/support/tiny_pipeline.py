"""A small pipeline that uses what the real pipelines use: event-time windows, a side input, per-key state with
an event-time timer, counters. A pipeline module like orders/presence (``TinyOptions``, ``build``), run by
tests/test_portability.py and submitted (dry run) by tests/test_flink_submit.py."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import userstate, window


class TinyOptions(PipelineOptions):
    """Knobs of the tiny pipeline (names unique in the process: every PipelineOptions class shares one parser)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--tiny_window_seconds", type=int, default=60)
        parser.add_argument("--tiny_min_count", type=int, default=1)


# (key, event time in seconds): three keys over two one-minute windows.
EVENTS = [("a", 5), ("b", 7), ("a", 30), ("a", 65), ("c", 70), ("b", 119), ("b", 100)]


# State and timer of CountInWindow (module level: Beam reads them from the DoFn methods' defaults).
COUNT = userstate.CombiningValueStateSpec("count", VarIntCoder(), beam.combiners.CountCombineFn())
END_OF_WINDOW = userstate.TimerSpec("end_of_window", userstate.TimeDomain.WATERMARK)
COUNT_STATE = beam.DoFn.StateParam(COUNT)
END_OF_WINDOW_TIMER = beam.DoFn.TimerParam(END_OF_WINDOW)


class CountInWindow(beam.DoFn):
    """Counts a key's elements per window in state and emits the count when the window's timer fires."""

    def __init__(self):
        self.seen = Metrics.counter("tiny", "seen")
        self.emitted = Metrics.counter("tiny", "emitted")

    def process(self, element, count=COUNT_STATE, end_of_window=END_OF_WINDOW_TIMER, w=beam.DoFn.WindowParam):
        count.add(1)
        end_of_window.set(w.max_timestamp())
        self.seen.inc()

    @userstate.on_timer(END_OF_WINDOW)
    def flush(self, key=beam.DoFn.KeyParam, count=COUNT_STATE, w=beam.DoFn.WindowParam):
        self.emitted.inc()
        yield key, int(w.start), count.read()


def build(pipeline: beam.Pipeline, options: PipelineOptions):
    """Keyed counts per fixed window, filtered through a side input of per-key minimum counts."""
    tiny = options.view_as(TinyOptions)
    minimums = pipeline | "Minimums" >> beam.Create([("c", 2)])
    return (
        pipeline
        | "Events" >> beam.Create(EVENTS)
        | "Stamp" >> beam.Map(lambda e: window.TimestampedValue((e[0], 1), e[1]))
        | "Window" >> beam.WindowInto(window.FixedWindows(tiny.tiny_window_seconds))
        | "Key" >> beam.Map(lambda kv: kv).with_output_types(beam.typehints.KV[str, int])
        | "Count" >> beam.ParDo(CountInWindow())
        | "AtLeast" >> beam.Filter(
            lambda row, minimums, default: row[2] >= minimums.get(row[0], default),
            minimums=beam.pvalue.AsDict(minimums), default=tiny.tiny_min_count)
    )
