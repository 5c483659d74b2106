"""runner.py: streaming runs default to Prism with the project's binary and a job-service deadline that
outlives them; explicit options win."""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, PrismRunnerOptions, StandardOptions

from orderflow.pipelines.runner import PRISM_BINARY, STREAMING_JOB_SERVER_TIMEOUT, apply_streaming_defaults


def test_streaming_defaults_to_prism_with_a_deadline_longer_than_the_run():
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
