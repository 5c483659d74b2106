"""Portability check: a pipeline runs as a portable pipeline proto, not only on the DirectRunner.

No Flink cluster runs on this machine (Beam's Flink job server jar cannot be downloaded), so this is
the closest executable stand-in for a Flink submission: the pipeline is translated to the portable
pipeline proto (``beam_runner_api_pb2.Pipeline``, what FlinkRunner sends to Flink), the proto is
checked statically for transforms a portable runner cannot execute, and then it runs through Beam's
``PortableRunner`` with the in-process job service (``--job_endpoint=embed``) and the SDK worker in
this process (``--environment_type=LOOPBACK``). The job service sees nothing but the proto and
executes every DoFn through the Fn API (gRPC data/state/control planes), so anything that only works
because the legacy DirectRunner runs the Python objects in place (its TestStream evaluator, its
in-memory unbounded reads, transforms without a portable translation) fails here.

The in-process job service is a batch runner: pipelines run on bounded input (``--bounded``), and
TestStream is not supported by it (TestStream is test-only; time semantics stay covered by the
DirectRunner tests). ``python -m orderflow.portability orders --bounded ...`` runs one pipeline.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.portable_runner import PortableRunner

from orderflow.pipelines import PIPELINES

# In-process job service, SDK worker in this process: runs anywhere, no Flink or Docker needed.
PORTABLE_ARGS = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")

# The primitives of the runner side (mirror of Java's QueryablePipeline.PRIMITIVE_URNS, which Flink's
# portable translators and fuser start from). A leaf transform with any other URN is dropped by the
# runner: harmless for a pass-through (e.g. Create's no-op MaybeReshuffle in streaming), fatal when it
# produces a PCollection (its consumers would read a PCollection nobody produces).
_urns = common_urns.primitives
_sdf = common_urns.sdf_components
_combine = common_urns.combine_components
PRIMITIVE_URNS = frozenset({
    _urns.PAR_DO.urn, _urns.FLATTEN.urn, _urns.GROUP_BY_KEY.urn, _urns.IMPULSE.urn, _urns.ASSIGN_WINDOWS.urn,
    _urns.TEST_STREAM.urn, _urns.MAP_WINDOWS.urn,
    common_urns.deprecated_primitives.READ.urn, common_urns.deprecated_primitives.CREATE_VIEW.urn,
    _combine.COMBINE_PER_KEY_PRECOMBINE.urn, _combine.COMBINE_PER_KEY_MERGE_ACCUMULATORS.urn,
    _combine.COMBINE_PER_KEY_EXTRACT_OUTPUTS.urn,
    _sdf.PAIR_WITH_RESTRICTION.urn, _sdf.SPLIT_AND_SIZE_RESTRICTIONS.urn,
    _sdf.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn, _sdf.TRUNCATE_SIZED_RESTRICTION.urn,
    common_urns.composites.RESHUFFLE.urn,
})
# Primitives the runner executes itself; every other primitive runs in an SDK environment and must name one.
RUNNER_EXECUTED_URNS = frozenset({
    _urns.IMPULSE.urn, _urns.GROUP_BY_KEY.urn, _urns.FLATTEN.urn, _urns.TEST_STREAM.urn,
    common_urns.composites.RESHUFFLE.urn,
})


# WindowFns a Java runner can rebuild from the proto. Flink hydrates the WindowFn of every GroupByKey input
# (and of side inputs) in Java, where a pickled Python WindowFn cannot be read (merging ones:
# apache/beam#20641); the SDK-side runners (DirectRunner, the in-process job service) accept any.
STANDARD_WINDOW_FN_URNS = frozenset({
    common_urns.global_windows.urn, common_urns.fixed_windows.urn, common_urns.sliding_windows.urn,
    common_urns.session_windows.urn,
})


class NotPortable(AssertionError):
    """The pipeline proto holds transforms no portable runner can execute."""


def portability_problems(proto: beam_runner_api_pb2.Pipeline) -> list[str]:
    """Static check of a translated pipeline; returns one line per problem (empty list: portable)."""
    components = proto.components
    problems = []
    if not proto.root_transform_ids:
        problems.append("the pipeline has no root transforms")
    for transform in components.transforms.values():
        if transform.subtransforms:
            continue  # composites are only structure; their leaves run
        urn = transform.spec.urn
        if urn in PRIMITIVE_URNS:
            if urn in RUNNER_EXECUTED_URNS:
                continue
            if not transform.environment_id:
                problems.append(f"{transform.unique_name}: {urn} names no SDK environment to run in")
            elif transform.environment_id not in components.environments:
                problems.append(f"{transform.unique_name}: environment {transform.environment_id!r} is missing")
            continue
        if set(transform.outputs.values()) <= set(transform.inputs.values()):
            continue  # a pass-through: dropping it changes nothing
        kind = ("a Python-only primitive the SDK can only pickle" if urn == python_urns.PICKLED_TRANSFORM
                else "not a primitive of the portable runners")
        problems.append(f"{transform.unique_name}: {urn or 'no URN'} is {kind}; a portable runner drops it "
                        "and its output is never produced")
    for transform, pcoll_id, role in _runner_windowed_inputs(components):
        pcoll = components.pcollections[pcoll_id]
        window_fn = components.windowing_strategies[pcoll.windowing_strategy_id].window_fn.urn
        if window_fn not in STANDARD_WINDOW_FN_URNS:
            problems.append(f"{transform.unique_name}: its {role} {pcoll.unique_name} is windowed by {window_fn}, "
                            "which Flink cannot rebuild in Java; use a standard WindowFn (global, fixed, "
                            "sliding, sessions)")
    for pcoll in components.pcollections.values():
        if pcoll.coder_id not in components.coders:
            problems.append(f"PCollection {pcoll.unique_name}: coder {pcoll.coder_id!r} is missing")
    return problems


def _runner_windowed_inputs(components):
    """(transform, PCollection id, role) of inputs whose windowing the runner itself interprets."""
    for transform in components.transforms.values():
        if transform.subtransforms:
            continue
        if transform.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn:
            for pcoll_id in transform.inputs.values():
                yield transform, pcoll_id, "input"
        elif transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            for tag in payload.side_inputs:
                yield transform, transform.inputs[tag], "side input"


def summarize_proto(proto: beam_runner_api_pb2.Pipeline) -> dict[str, object]:
    """Counts and names that say what a translated pipeline needs from its runner."""
    components = proto.components
    leaves = [t for t in components.transforms.values() if not t.subtransforms]
    urns: dict[str, int] = {}
    for transform in leaves:
        urns[transform.spec.urn] = urns.get(transform.spec.urn, 0) + 1
    return {
        "transforms": len(components.transforms),
        "leaf_transforms": len(leaves),
        "leaf_urns": dict(sorted(urns.items())),
        "environments": sorted(env.urn for env in components.environments.values()),
        "requirements": sorted(proto.requirements),
        "problems": portability_problems(proto),
    }


def translate(pipeline: beam.Pipeline, options: PipelineOptions) -> beam_runner_api_pb2.Pipeline:
    """The portable proto a portable runner would receive for ``pipeline`` under ``options``."""
    return PortableRunner.get_proto_pipeline(pipeline, options)


@dataclasses.dataclass
class PortableRun:
    """What a portable run produced: its final state, its Beam counters and the translated graph."""

    state: str
    counters: dict[str, int]
    graph: dict[str, object]

    def counter(self, name: str, namespace: str | None = None) -> int:
        """Sum of counter ``name`` (over every step, optionally only in ``namespace``)."""
        return sum(v for k, v in self.counters.items()
                   if k.rsplit(":", 1)[-1] == name and (namespace is None or k.rsplit(":", 1)[0] == namespace))


def portable_options(argv: Sequence[str] = ()) -> PipelineOptions:
    options = PipelineOptions([*PORTABLE_ARGS, *argv])
    if options.view_as(StandardOptions).streaming:
        raise ValueError("the in-process job service runs bounded pipelines only: drop --streaming")
    return options


def run_portable(build: Callable[[beam.Pipeline, PipelineOptions], object],
                 argv: Sequence[str] = (), *, check: bool = True) -> PortableRun:
    """Builds a pipeline with ``build(pipeline, options)``, checks its proto and runs it portably.

    ``build`` is a pipeline module's ``build`` (or any function wiring transforms onto the pipeline);
    ``argv`` are the pipeline's options (``--bounded`` and its knobs). Raises NotPortable before running
    if the proto holds transforms a portable runner cannot execute (``check=False`` runs anyway and
    leaves the problems in ``PortableRun.graph``), and RuntimeError if the job fails.
    """
    options = portable_options(argv)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    graph = summarize_proto(translate(pipeline, options))
    if graph["problems"] and check:
        raise NotPortable("; ".join(graph["problems"]))
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != beam.runners.runner.PipelineState.DONE:
        raise RuntimeError(f"portable run ended in state {state}")
    counters: dict[str, int] = {}
    for counter in result.metrics().query()["counters"]:
        key = f"{counter.key.metric.namespace}:{counter.key.metric.name}"
        counters[key] = counters.get(key, 0) + (counter.committed or 0)
    return PortableRun(state=str(state), counters=counters, graph=graph)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in PIPELINES:
        print(f"usage: python -m orderflow.portability {{{'|'.join(PIPELINES)}}} --bounded [pipeline options]",
              file=sys.stderr)
        return 2
    run = run_portable(PIPELINES[argv[0]].build, argv[1:])
    print(f"{argv[0]}: {run.state}; {run.graph['leaf_transforms']} leaf transforms; counters {run.counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
