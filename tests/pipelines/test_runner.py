"""runner.py: streaming runs default to Prism with the binary ORDERFLOW_PRISM_LOCATION names and a job-service
deadline that outlives them; explicit options win; with no binary named, the run refuses to start (never
Beam's download of a Prism release). The Prism ``make prism`` builds (``dev/prism/*.patch``) waits for a bundle
instead of spinning beside it, and asks a running bundle for progress every second, not every 100 ms."""
from __future__ import annotations

import os
import time

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, PrismRunnerOptions, StandardOptions
from apache_beam.transforms.core import RestrictionProvider

from orderflow.config import PRISM_LOCATION_VARIABLE
from orderflow.pipelines.runner import STREAMING_JOB_SERVER_TIMEOUT, apply_streaming_defaults
from orderflow_dev import PRISM_BINARY, developer_environment


@pytest.mark.needs_stack  # the Prism binary, from make setup
def test_streaming_defaults_to_prism_with_a_deadline_longer_than_the_run(monkeypatch):
    monkeypatch.setenv(PRISM_LOCATION_VARIABLE, str(PRISM_BINARY))
    options = apply_streaming_defaults(PipelineOptions([]))
    assert options.view_as(StandardOptions).streaming
    assert options.view_as(StandardOptions).runner == "PrismRunner"
    assert options.view_as(PrismRunnerOptions).prism_location == str(PRISM_BINARY)
    # Beam's default (300 s) is the gRPC deadline of the job's state stream: the run would die after 5 minutes.
    assert options.view_as(PortableOptions).job_server_timeout == STREAMING_JOB_SERVER_TIMEOUT >= 365 * 24 * 3600


def test_explicit_runner_prism_location_and_timeout_are_kept():
    options = apply_streaming_defaults(PipelineOptions(
        ["--runner=PrismRunner", "--prism_location=/opt/prism", "--job_server_timeout=42"]))
    assert options.view_as(PrismRunnerOptions).prism_location == "/opt/prism"
    assert options.view_as(PortableOptions).job_server_timeout == 42
    other = apply_streaming_defaults(PipelineOptions(["--runner=FlinkRunner"]))
    assert other.view_as(StandardOptions).runner == "FlinkRunner"
    assert other.view_as(PrismRunnerOptions).prism_location is None


def test_bounded_is_one_run_mode_option_shared_by_both_pipelines():
    import orderflow.pipelines.orders  # noqa: F401 - registers OrdersOptions
    import orderflow.pipelines.presence  # noqa: F401 - registers PresenceOptions
    from orderflow.pipelines.runner import RunModeOptions

    # Beam parses every registered options class with one parser: --bounded is declared once, in one class.
    options = PipelineOptions(["--bounded", "--orders_batch_size=5", "--presence_batch_size=7"])
    everything = options.get_all_options()
    assert (everything["bounded"], everything["orders_batch_size"], everything["presence_batch_size"]) == (True, 5, 7)
    assert options.view_as(RunModeOptions).bounded is True
    assert PipelineOptions(["--orders_batch_size=5"]).view_as(RunModeOptions).bounded is False


def _read_display_data(module, argv: list[str], settings=None) -> dict[str, dict[str, object]]:
    """Builds a pipeline graph (nothing runs) and returns each Kafka read's display data by label."""
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor
    from apache_beam.transforms.display import DisplayData

    from orderflow.io.kafka_read import ReadFromKafka

    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    module.build(pipeline, pipeline.options, settings=settings)
    reads = {}

    class Visitor(PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, ReadFromKafka):
                reads[node.full_label] = {i.key: i.value for i in DisplayData.create_from(node.transform).items}

    pipeline.visit(Visitor())
    return reads


def test_each_pipeline_passes_its_out_of_order_slack_to_its_kafka_reads():
    from orderflow.pipelines import orders, presence

    orders_reads = _read_display_data(orders, ["--bounded", "--orders_out_of_order_slack_seconds=30"])
    assert [r["out_of_order_slack"] for r in orders_reads.values()] == [30.0]
    presence_reads = _read_display_data(presence, ["--bounded", "--presence_out_of_order_slack_seconds=12.5"])
    assert sorted(r["out_of_order_slack"] for r in presence_reads.values()) == [12.5, 12.5]
    default = _read_display_data(orders, ["--bounded"])
    assert [(r["out_of_order_slack"], r["bounded"]) for r in default.values()] == [(0.0, True)]


def test_both_pipelines_pass_the_read_waits_to_their_kafka_reads():
    from orderflow.io.kafka_read import CAUGHT_UP_DELAY, IDLE_POLL_MAX_INTERVAL
    from orderflow.pipelines import orders, presence

    flags = ["--caught_up_delay_seconds=0.25", "--idle_poll_max_seconds=3"]
    reads = {**_read_display_data(orders, flags), **_read_display_data(presence, flags)}
    assert [(r["caught_up_delay"], r["idle_poll_max_interval"]) for r in reads.values()] == [(0.25, 3.0)] * 3
    default = _read_display_data(orders, [])
    assert [(r["caught_up_delay"], r["idle_poll_max_interval"]) for r in default.values()] == [
        (CAUGHT_UP_DELAY, IDLE_POLL_MAX_INTERVAL)]


def test_options_override_the_settings_a_pipeline_is_given_in_both_pipelines():
    """``build(settings=...)`` (tests, the portability check) applies the command line's overrides on top, as a
    run from the environment does: the orders pipeline ignored them when given settings."""
    import dataclasses

    from orderflow.config import Settings
    from orderflow.pipelines import orders, presence

    given = dataclasses.replace(Settings(), kafka_bootstrap="given:1")
    reads = _read_display_data(orders, ["--bounded", "--orders_topic=from-options",
                                        "--orders_kafka_bootstrap=options:2"], settings=given)
    assert [(r["topics"], r["bootstrap_servers"]) for r in reads.values()] == [("from-options", "options:2")]
    reads = _read_display_data(presence, ["--bounded", "--keepalive_topic=keepalive-from-options",
                                          "--presence_kafka_bootstrap=options:3"], settings=given)
    assert sorted((r["topics"], r["bootstrap_servers"]) for r in reads.values()) == [
        ("keepalive-from-options", "options:3"), (given.topics.availability, "options:3")]


@pytest.mark.parametrize("location", [None, "", "/nonexistent/prism"])
def test_streaming_without_a_prism_binary_refuses_to_start_naming_the_variable(monkeypatch, location):
    if location is None:
        monkeypatch.delenv(PRISM_LOCATION_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PRISM_LOCATION_VARIABLE, location)
    with pytest.raises(FileNotFoundError, match=PRISM_LOCATION_VARIABLE):
        apply_streaming_defaults(PipelineOptions([]))


def test_the_developers_tools_start_pipelines_with_the_repositorys_prism_unless_told_otherwise(monkeypatch):
    for unset in (None, ""):
        if unset is None:
            monkeypatch.delenv(PRISM_LOCATION_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(PRISM_LOCATION_VARIABLE, unset)
        assert developer_environment()[PRISM_LOCATION_VARIABLE] == str(PRISM_BINARY)
    monkeypatch.setenv(PRISM_LOCATION_VARIABLE, "/opt/prism")
    assert developer_environment()[PRISM_LOCATION_VARIABLE] == "/opt/prism"


HOLD_SECONDS = 3.0
_MEASURED: dict[str, float] = {}


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prism_pid() -> int:
    """The Prism job server this process started (a child; the LOOPBACK worker, and so this DoFn, run here)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read().split(b"\0")[0]
                if command == str(PRISM_BINARY).encode() and int(_stat(int(entry))[1]) == os.getpid():
                    return int(entry)
            except (FileNotFoundError, ProcessLookupError):
                continue
    raise AssertionError(f"no Prism ({PRISM_BINARY}) among this process's children")


class _HoldTheBundle(beam.DoFn):
    """Keeps its bundle open for HOLD_SECONDS and measures Prism's CPU meanwhile; outputs nothing, so the stage
    (Impulse + this) has no data outputs."""

    def process(self, _):
        prism = _prism_pid()
        before = _cpu_seconds(prism)
        time.sleep(HOLD_SECONDS)
        _MEASURED["prism_cpu_seconds"] = _cpu_seconds(prism) - before
        return []


@pytest.mark.needs_stack  # the Prism binary, from make setup
def test_the_prism_make_prism_builds_waits_while_a_bundle_of_a_stage_without_outputs_runs():
    # dev/prism/stage-progress-loop-spin.patch: Beam v2.77.0's own Prism burns a core for the whole bundle.
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={PRISM_BINARY}",
                               "--experiments=disable_prism_server_singleton"])
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Impulse() | beam.ParDo(_HoldTheBundle())
    # The stock binary: ~HOLD_SECONDS (a core spinning in stage.Execute's select); the patched one: its progress
    # requests only (every 100 ms, then less), a few milliseconds.
    assert _MEASURED["prism_cpu_seconds"] < 0.2 * HOLD_SECONDS, _MEASURED


_EVENTS: list[tuple[str, float]] = []  # (what, time.monotonic()), appended by the LOOPBACK worker in this process


class _ProgressNotingTracker(OffsetRestrictionTracker):
    """The SDK harness asks the tracker of a running splittable bundle for its progress at each of the runner's
    progress requests (and at each split request)."""

    def current_progress(self):
        _EVENTS.append(("progress", time.monotonic()))
        return super().current_progress()


class _StepsProvider(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, 300)

    def create_tracker(self, restriction):
        return _ProgressNotingTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()  # (not through a tracker's current_progress, which would note an event)


_STEPS = beam.DoFn.RestrictionParam(_StepsProvider())


class _ClaimSteadily(beam.DoFn):
    """Claims a position every 10 ms: a bundle of ~3 s that outputs nothing."""

    def process(self, element, tracker=_STEPS):
        _EVENTS.append(("start", time.monotonic()))
        position = tracker.current_restriction().start
        while tracker.try_claim(position):
            time.sleep(0.01)
            position += 1
        return []


@pytest.mark.needs_stack  # the Prism binary, from make setup
def test_the_prism_make_prism_builds_asks_a_running_bundle_for_progress_once_a_second():
    # dev/prism/progress-requests-every-second.patch: each progress request costs the SDK harness a metrics report
    # of every transform; Beam v2.77.0's own Prism asks every 100 ms (its first request ~0.1 s into the bundle).
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={PRISM_BINARY}",
                               "--experiments=disable_prism_server_singleton"])
    _EVENTS.clear()
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Impulse() | beam.ParDo(_ClaimSteadily())
    started = _EVENTS[0]
    first_progress = next(event for event in _EVENTS if event[0] == "progress")
    assert started[0] == "start", _EVENTS
    assert first_progress[1] - started[1] >= 0.9, _EVENTS
