"""The portability harness (orderflow.portability) on a small pipeline that uses what the real pipelines
use: event-time windows, a side input, per-key state with an event-time timer, counters.

The small pipeline is a pipeline module of its own (``tests/support/tiny_pipeline.py``), so
tests/test_flink_submit.py can resolve and dry-run a submission of it exactly like orders/presence.
"""
from __future__ import annotations

import re

import apache_beam as beam
import pytest
from apache_beam.coders import StrUtf8Coder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from orderflow.portability import (
    NotPortable,
    portability_problems,
    portable_options,
    run_portable,
    translate,
)
from tests.support.tiny_pipeline import EVENTS, build


def test_tiny_pipeline_runs_portably_with_windows_side_input_and_state():
    def build_and_check(pipeline, options):
        assert_that(build(pipeline, options),
                    equal_to([("a", 0, 2), ("b", 0, 1), ("a", 60, 1), ("b", 60, 2)]))

    run = run_portable(build_and_check)

    assert run.state == "DONE"
    assert run.counter("seen", "tiny") == len(EVENTS)
    assert run.counter("emitted", "tiny") == 5  # (a,0) (b,0) (a,60) (b,60) (c,60); c is then filtered out
    # The graph really went through the Fn API: stateful ParDo and an SDK environment in the proto.
    assert "beam:requirement:pardo:stateful:v1" in run.graph["requirements"]
    assert run.graph["environments"] == ["beam:env:embedded_python_loopback:v1"]
    assert run.graph["problems"] == []


def test_pipeline_options_reach_the_portable_workers():
    def build_and_check(pipeline, options):
        # 120-second windows: one window, and the minimum of 3 leaves a (3) and b (3); c (1) is dropped.
        assert_that(build(pipeline, options), equal_to([("a", 0, 3), ("b", 0, 3)]))

    run = run_portable(build_and_check, ["--tiny_window_seconds=120", "--tiny_min_count=3"])
    assert run.counter("emitted", "tiny") == 3


def test_a_failing_assertion_fails_the_portable_run():
    def build_and_check(pipeline, options):
        assert_that(build(pipeline, options), equal_to([("a", 0, 99)]))

    with pytest.raises(Exception, match="Failed assert"):
        run_portable(build_and_check)


class _InPlaceOnly(beam.PTransform):
    """A primitive with no portable translation (the SDK can only pickle it): DirectRunner-style code."""

    def expand(self, pbegin):
        return beam.pvalue.PCollection(pbegin.pipeline, is_bounded=True)

    def get_windowing(self, inputs):
        return beam.transforms.core.Windowing(window.GlobalWindows())


def test_a_transform_without_portable_translation_is_rejected_before_running():
    options = portable_options()
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "InPlaceOnly" >> _InPlaceOnly() | beam.Map(str)

    problems = portability_problems(translate(pipeline, options))

    assert len(problems) == 1
    assert problems[0].startswith("InPlaceOnly: beam:transform:pickled_python:v1 is a Python-only primitive")
    with pytest.raises(NotPortable, match="InPlaceOnly"):
        run_portable(lambda p, o: p | "InPlaceOnly" >> _InPlaceOnly() | beam.Map(str))


def test_streaming_is_refused_by_the_in_process_job_service():
    with pytest.raises(ValueError, match="bounded"):
        portable_options(["--streaming"])


def test_proto_uses_only_standard_coders_at_runner_boundaries():
    """GroupByKey inputs are what Flink itself must decode: a KV of standard coders here."""
    options = portable_options()
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline | beam.Create([("k", 1)]).with_output_types(beam.typehints.KV[str, int])
         | beam.GroupByKey())
    proto = translate(pipeline, options)
    gbk = next(t for t in proto.components.transforms.values() if t.spec.urn == "beam:transform:group_by_key:v1")
    coder = proto.components.coders[proto.components.pcollections[next(iter(gbk.inputs.values()))].coder_id]
    assert coder.spec.urn == "beam:coder:kv:v1"
    component_urns = [proto.components.coders[c].spec.urn for c in coder.component_coder_ids]
    assert component_urns == [StrUtf8Coder().to_runner_api(None).spec.urn, "beam:coder:varint:v1"]


class _EvenOddWindows(window.NonMergingWindowFn):
    """A custom (pickled) WindowFn: fine for Python runners, unreadable for Flink's Java side."""

    def assign(self, context):
        start = int(context.timestamp) // 2 * 2
        return [window.IntervalWindow(start, start + 2)]

    def get_window_coder(self):
        return beam.coders.coders.IntervalWindowCoder()


def test_a_custom_window_fn_before_a_group_by_key_is_flagged_for_flink():
    def build_custom(pipeline, options):
        return (pipeline | beam.Create([("k", 1)]) | beam.Map(lambda kv: window.TimestampedValue(kv, 3))
                | "EvenOdd" >> beam.WindowInto(_EvenOddWindows()) | "Group" >> beam.GroupByKey())

    options = portable_options()
    pipeline = beam.Pipeline(options=options)
    build_custom(pipeline, options)
    problems = portability_problems(translate(pipeline, options))

    assert len(problems) == 1
    assert re.match(r"Group: its input \S*EvenOdd\S* is windowed by beam:window_fn:pickled_python:v1", problems[0])
    with pytest.raises(NotPortable, match="Flink cannot rebuild in Java"):
        run_portable(build_custom)
