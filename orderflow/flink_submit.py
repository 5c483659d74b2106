"""Submits an orderflow pipeline to Flink through Beam's FlinkRunner (the engine behind ``run_flink.sh``).

``python -m orderflow.flink_submit orders|presence [launcher options] [pipeline options]``

The launcher resolves one streaming submission from a few production knobs (Flink master and version,
parallelism, checkpointing, where the Python SDK workers run, ``--setup_file``) plus every other option
passed through to Beam and to the pipeline's own ``PipelineOptions`` subclass. Before anything is
submitted the whole command line is validated strictly against every registered ``PipelineOptions``
class (Beam's, ``FlinkJobOptions`` below, and the pipeline's own class named in the registry,
``orderflow.pipelines.PIPELINES``), so a typo fails here with a clear message instead of being silently dropped by Beam.

``--dry-run`` does all of that, builds the pipeline graph with the resolved options and translates it to
the portable pipeline proto that FlinkRunner would submit, prints the resolved submission as JSON and
exits. It opens no connection: tests/test_flink_submit.py runs it in a process whose every socket connection
and name look-up fails (an audit hook of the test's own), so a change that reaches out fails there.

Submission itself (without ``--dry-run``) uses ``--flink_submit_uber_jar`` by default: the SDK builds
a jar holding the pipeline proto and its artifacts and posts it to the JobManager's REST API, so no
Beam job server has to run beside the cluster. The Flink job server jar is downloaded from Maven
Central on first use unless ``--flink_job_server_jar`` points at a local copy (as in ``deploy/``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence

from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
)

from orderflow.pipelines import PIPELINES, PipelineEntry
from orderflow.portability import summarize_proto

_LOGGER = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# Flink 1.20 is the long-term-support line of Flink 1.x and a version the Flink Kubernetes operator and
# Beam 2.77 both publish; deploy/ pins the same version in its image and FlinkDeployment.
DEFAULT_FLINK_VERSION = "1.20"
# A checkpoint a minute bounds the replay after a failure to about a minute of input (see docs/deploy.md).
DEFAULT_CHECKPOINTING_INTERVAL_MS = 60_000
# Key groups: the upper bound of any future parallelism, fixed for the life of the job's state
# (changing it invalidates savepoints). 720 divides evenly by every parallelism the capacity plan uses.
DEFAULT_MAX_PARALLELISM = 720
# Production environments only: LOOPBACK runs user code inside the submitting process (tests only).
ENVIRONMENT_TYPES = ("EXTERNAL", "PROCESS", "DOCKER")
BEAM_SDK_IMAGE = "apache/beam_python3.11_sdk:2.77.0"
DEFAULT_ENVIRONMENT_CONFIG = {
    # The SDK worker pool runs as a sidecar of every TaskManager (deploy/flinkdeployment-*.yaml).
    "EXTERNAL": "localhost:50000",
    # The boot binary of the Beam SDK image, present in an image built FROM it.
    "PROCESS": json.dumps({"command": "/opt/apache/beam/boot"}),
    "DOCKER": BEAM_SDK_IMAGE,
}
MAGIC_FLINK_MASTERS = ("[local]", "[auto]")


class SubmissionError(ValueError):
    """The command line cannot be turned into a valid submission; the message says why."""


class FlinkJobOptions(PipelineOptions):
    """Options of the Flink runner that Beam's Python SDK does not declare itself.

    They belong to the Java ``FlinkPipelineOptions`` of the job server and are passed to it unchanged
    (``--checkpointing_interval`` becomes ``checkpointingInterval`` there). Declaring them here lets the
    launcher type-check them before submission; options left unset are not sent at all.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--checkpointing_interval", type=int, default=None,
                            help="Milliseconds between checkpoints; unset = no checkpoints.")
        parser.add_argument("--checkpointing_mode", choices=["EXACTLY_ONCE", "AT_LEAST_ONCE"], default=None,
                            help="Checkpoint barrier alignment mode.")
        parser.add_argument("--checkpoint_timeout_millis", type=int, default=None,
                            help="A checkpoint not complete after this long is aborted.")
        parser.add_argument("--min_pause_between_checkpoints", type=int, default=None,
                            help="Milliseconds the job processes between two checkpoints, however long they take.")
        parser.add_argument("--num_concurrent_checkpoints", type=int, default=None,
                            help="Checkpoints allowed in flight at once.")
        parser.add_argument("--tolerable_checkpoint_failure_number", type=int, default=None,
                            help="Consecutive checkpoint failures tolerated before the job restarts.")
        parser.add_argument("--max_bundle_size", type=int, default=None,
                            help="Elements per bundle sent to the SDK worker.")
        parser.add_argument("--max_bundle_time_mills", type=int, default=None,
                            help="Milliseconds after which a bundle is closed even if not full.")
        parser.add_argument("--auto_watermark_interval", type=int, default=None,
                            help="Milliseconds between watermark emissions of the sources.")
        parser.add_argument("--savepoint_path", default=None,
                            help="Savepoint or retained checkpoint to restore the job's state from.")
        parser.add_argument("--allow_non_restored_state", action="store_true", default=None,
                            help="Accept a savepoint with state for operators the new graph no longer has.")


@dataclasses.dataclass(frozen=True)
class Submission:
    """One resolved submission: which pipeline (its registry entry), and the full Beam command line it runs with."""

    pipeline: str
    entry: PipelineEntry
    beam_args: tuple[str, ...]
    dry_run: bool = False

    @property
    def module(self) -> str:
        return self.entry.module

    def options(self) -> PipelineOptions:
        return PipelineOptions(list(self.beam_args))


def launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_flink.sh",
        description="Submit an orderflow pipeline in streaming mode to Flink through Beam's FlinkRunner.",
        epilog="Any other option is passed to Beam and to the pipeline (e.g. --job_name, --sdk_worker_parallelism, "
               "--flink_job_server_jar, --checkpoint_timeout_millis, the pipeline's own knobs). "
               "Environment: FLINK_MASTER is the default of --flink_master.",
        allow_abbrev=False,
    )
    parser.add_argument("pipeline", help=f"one of: {', '.join(PIPELINES)}")
    parser.add_argument("--flink_master", default=os.environ.get("FLINK_MASTER") or None,
                        help="JobManager REST address host:port (or http[s]://host:port); required")
    parser.add_argument("--flink_version", default=DEFAULT_FLINK_VERSION,
                        help=f"Flink minor version of the cluster (default {DEFAULT_FLINK_VERSION}; "
                             f"one of {', '.join(FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)})")
    parser.add_argument("--parallelism", type=int, default=None,
                        help="parallelism of every operator (default: the topic partitions from Settings)")
    parser.add_argument("--max_parallelism", type=int, default=DEFAULT_MAX_PARALLELISM,
                        help=f"key groups, the ceiling of rescaling (default {DEFAULT_MAX_PARALLELISM})")
    parser.add_argument("--checkpointing_interval", type=int, default=DEFAULT_CHECKPOINTING_INTERVAL_MS,
                        help=f"milliseconds between checkpoints (default {DEFAULT_CHECKPOINTING_INTERVAL_MS})")
    parser.add_argument("--checkpointing_mode", default="EXACTLY_ONCE", choices=["EXACTLY_ONCE", "AT_LEAST_ONCE"])
    parser.add_argument("--environment_type", default="EXTERNAL", type=str.upper,
                        help=f"where the Python SDK workers run: {', '.join(ENVIRONMENT_TYPES)} (default EXTERNAL)")
    parser.add_argument("--environment_config", default=None,
                        help="EXTERNAL: worker pool address (default localhost:50000); DOCKER: SDK image "
                             f"(default {BEAM_SDK_IMAGE}); PROCESS: JSON with the boot command")
    parser.add_argument("--setup_file", default=str(REPO_ROOT / "setup.py"),
                        help="setup.py the workers install orderflow from (default ./setup.py)")
    parser.add_argument("--job_name", default=None, help="Flink job name (default orderflow-<pipeline>)")
    parser.add_argument("--no_uber_jar", action="store_true",
                        help="start a local Beam Flink job server instead of posting an uber jar to the cluster")
    parser.add_argument("--output_executable_path", default=None,
                        help="write a self-contained Flink application jar (the FlinkDeployment's job, see "
                             "docs/deploy.md) instead of submitting; needs Java and the Flink job server jar")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="validate and print the resolved submission as JSON; touch no network")
    return parser


def resolve(argv: Sequence[str], pipelines: Mapping[str, PipelineEntry] = PIPELINES) -> Submission:
    """Turns the launcher's command line into a validated Submission (imports the pipeline module)."""
    parser = launcher_parser()
    args, passthrough = parser.parse_known_args(list(argv))
    if args.pipeline not in pipelines:
        raise SubmissionError(f"unknown pipeline {args.pipeline!r}: choose one of {', '.join(pipelines)}")
    entry = pipelines[args.pipeline]
    _check_passthrough(passthrough)

    if args.output_executable_path:
        # Building an application jar talks to no cluster: the jar runs inside the FlinkDeployment.
        flink_master = (args.flink_master or "[auto]").strip()
    elif not args.flink_master:
        raise SubmissionError(
            "missing --flink_master: give the JobManager REST address (host:port, e.g. "
            "orderflow-orders-rest:8081) or set FLINK_MASTER")
    else:
        flink_master = args.flink_master.strip()
    if args.flink_version not in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS:
        raise SubmissionError(
            f"--flink_version {args.flink_version} is not one Beam publishes a runner for: "
            f"{', '.join(FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)}")
    if args.environment_type not in ENVIRONMENT_TYPES:
        hint = " (LOOPBACK runs user code in the submitting process: tests only)" \
            if args.environment_type == "LOOPBACK" else ""
        raise SubmissionError(
            f"--environment_type {args.environment_type} is not one of {', '.join(ENVIRONMENT_TYPES)}{hint}")
    environment_config = args.environment_config or DEFAULT_ENVIRONMENT_CONFIG[args.environment_type]
    if args.environment_type == "PROCESS":
        try:
            if "command" not in json.loads(environment_config):
                raise ValueError("no 'command'")
        except ValueError as exc:
            raise SubmissionError(
                f"--environment_config for PROCESS must be JSON with a 'command': {exc}") from None
    setup_file = pathlib.Path(args.setup_file).absolute()
    if setup_file.name != "setup.py" or not setup_file.is_file():
        raise SubmissionError(f"--setup_file {setup_file}: no such setup.py")
    parallelism = args.parallelism if args.parallelism is not None else _default_parallelism()
    if parallelism < 1:
        raise SubmissionError(f"--parallelism must be at least 1, got {parallelism}")
    if args.max_parallelism < parallelism:
        raise SubmissionError(
            f"--max_parallelism {args.max_parallelism} is below --parallelism {parallelism}")
    if args.checkpointing_interval <= 0:
        raise SubmissionError("--checkpointing_interval must be positive: the sinks rely on checkpoints "
                              "for exactly-once effects (docs/deploy.md)")

    beam_args = [
        "--runner=FlinkRunner",
        "--streaming",
        f"--flink_master={flink_master}",
        f"--flink_version={args.flink_version}",
        f"--parallelism={parallelism}",
        f"--max_parallelism={args.max_parallelism}",
        f"--checkpointing_interval={args.checkpointing_interval}",
        f"--checkpointing_mode={args.checkpointing_mode}",
        f"--environment_type={args.environment_type}",
        f"--environment_config={environment_config}",
        f"--setup_file={setup_file}",
        f"--job_name={args.job_name or 'orderflow-' + args.pipeline}",
    ]
    if args.output_executable_path:
        # The Java job server writes the jar (the Python uber-jar path can only submit).
        beam_args.append(f"--output_executable_path={pathlib.Path(args.output_executable_path).absolute()}")
    elif not args.no_uber_jar and flink_master not in MAGIC_FLINK_MASTERS:
        beam_args.append("--flink_submit_uber_jar")
    beam_args.extend(passthrough)

    _import_pipeline(args.pipeline, entry)  # registers the pipeline's PipelineOptions subclass
    known = validate_options(beam_args)
    jar = known.get("flink_job_server_jar")
    if jar and "://" not in jar and not pathlib.Path(jar).is_file():
        raise SubmissionError(f"--flink_job_server_jar {jar}: no such file")
    return Submission(args.pipeline, entry, tuple(beam_args), dry_run=args.dry_run)


def _check_passthrough(passthrough: Sequence[str]) -> None:
    for arg in passthrough:
        name = arg.split("=", 1)[0]
        if name == "--runner":
            raise SubmissionError("--runner is fixed to FlinkRunner by run_flink.sh")
        if name in ("--bounded", "--no-streaming", "--no_streaming"):
            raise SubmissionError(
                f"{name} contradicts a streaming Flink submission (bounded runs are for tests and the "
                "portability check, orderflow.portability)")
        if name == "--job_endpoint":
            raise SubmissionError("--job_endpoint is not used: FlinkRunner reaches the cluster through --flink_master")


def _default_parallelism() -> int:
    """One subtask per Kafka partition: more source subtasks than partitions would idle."""
    from orderflow.config import load_settings

    return load_settings().topic_partitions


def _import_pipeline(name: str, entry: PipelineEntry):
    try:
        module = entry.load()
    except ImportError as exc:
        raise SubmissionError(f"pipeline {name!r}: cannot import {entry.module} ({exc})") from exc
    if not callable(getattr(module, "build", None)):
        raise SubmissionError(f"pipeline {name!r}: {entry.module} defines no build(pipeline, options)")
    options_class = getattr(module, entry.options_class, None)
    if not (isinstance(options_class, type) and issubclass(options_class, PipelineOptions)):
        raise SubmissionError(f"pipeline {name!r}: {entry.module} defines no PipelineOptions subclass "
                              f"{entry.options_class}")
    return module


def validate_options(beam_args: Sequence[str]) -> dict[str, object]:
    """Parses ``beam_args`` strictly against every registered PipelineOptions class.

    Beam itself only logs "Discarding unparseable args" for an unknown option and drops it; a
    submission must not lose a knob that way, so unknown options and bad values raise SubmissionError.
    Returns the parsed values.
    """
    options = PipelineOptions(list(beam_args))
    # Beam's parser reports a bad value on stderr and exits (argparse's way): kept as the error's reason.
    reason = io.StringIO()
    try:
        with contextlib.redirect_stderr(reason):
            parsed = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        message = reason.getvalue().strip().splitlines()[-1] if reason.getvalue().strip() else "unparseable"
        raise SubmissionError(f"invalid option: {message.partition('error: ')[2] or message}") from None
    # Every option a registered class declares (their destinations, e.g. --no_use_public_ips's use_public_ips),
    # each at its default: what the retaining parse found beyond them is unknown.
    declared = PipelineOptions([]).get_all_options()
    extra = set(parsed) - set(declared)
    unknown = [arg for arg in beam_args
               if arg.startswith("--") and arg[2:].split("=", 1)[0].replace("-", "_") in extra]
    if extra:
        raise SubmissionError(
            "unknown options (not a Beam, Flink or pipeline option): " + " ".join(unknown or sorted(extra)))
    return {name: value for name, value in parsed.items() if name in declared}


def describe(submission: Submission) -> dict[str, object]:
    """The resolved submission as JSON-able data: options by group and the translated graph.

    Builds the pipeline graph and translates it to the portable proto exactly as FlinkRunner would
    before submitting, except that artifacts are not staged (that would build an sdist).
    """
    import apache_beam as beam
    from apache_beam.runners.portability.flink_runner import FlinkRunner

    entry = submission.entry
    module = _import_pipeline(submission.pipeline, entry)
    options = submission.options()
    flink = options.view_as(FlinkRunnerOptions)
    portable = options.view_as(PortableOptions)
    job = options.view_as(FlinkJobOptions)
    described: dict[str, object] = {
        "pipeline": submission.pipeline,
        "module": submission.module,
        "runner": options.view_as(StandardOptions).runner,
        "streaming": options.view_as(StandardOptions).streaming,
        "flink": {
            "flink_master": flink.flink_master,
            "flink_version": flink.flink_version,
            "flink_submit_uber_jar": flink.flink_submit_uber_jar,
            "flink_job_server_jar": flink.flink_job_server_jar,
            "parallelism": flink.parallelism,
            "max_parallelism": flink.max_parallelism,
            "checkpointing_interval": job.checkpointing_interval,
            "checkpointing_mode": job.checkpointing_mode,
        },
        "output_executable_path": portable.output_executable_path,
        "environment": {
            "environment_type": portable.environment_type,
            "environment_config": portable.environment_config,
            "sdk_worker_parallelism": portable.sdk_worker_parallelism,
        },
        "setup_file": options.view_as(SetupOptions).setup_file,
        "job_name": options.view_as(GoogleCloudOptions).job_name,  # --job_name is declared there
        "beam_args": list(submission.beam_args),
        "options": _jsonable(options.get_all_options(drop_default=True)),
    }
    described["pipeline_options_class"] = entry.options_class
    pipeline_options = options.view_as(getattr(module, entry.options_class)).get_all_options(current_only=True)
    if entry.run_mode:
        from orderflow.pipelines.runner import RunModeOptions

        # The pipeline honours the shared run mode (--bounded): shown with its own knobs.
        pipeline_options = {**options.view_as(RunModeOptions).get_all_options(current_only=True),
                            **pipeline_options}
    described["pipeline_options"] = _jsonable(pipeline_options)

    # Translate without staging: a copy of the options without --setup_file gives the same graph.
    unstaged = PipelineOptions([a for a in submission.beam_args if not a.startswith("--setup_file")])
    pipeline = beam.Pipeline(runner=FlinkRunner(), options=unstaged)
    module.build(pipeline, unstaged)
    proto = FlinkRunner.get_proto_pipeline(pipeline, unstaged)
    described["graph"] = summarize_proto(proto)
    described["network"] = "not contacted (dry run)"
    return described


def _jsonable(values: Mapping[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(dict(values), default=str))


def submit(submission: Submission):
    """Builds the pipeline and submits it; returns the PipelineResult without waiting (streaming)."""
    import apache_beam as beam

    module = _import_pipeline(submission.pipeline, submission.entry)
    options = submission.options()
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, options)
    return pipeline.run()


def main(argv: Sequence[str] | None = None, pipelines: Mapping[str, PipelineEntry] = PIPELINES) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    dry_run = "--dry-run" in argv or "--dry_run" in argv
    try:
        if dry_run:
            described = describe(resolve(argv, pipelines))
            print(json.dumps(described, indent=2, sort_keys=True))
            if described["graph"]["problems"]:
                raise SubmissionError("the pipeline does not translate to a portable graph Flink can run: "
                                      + "; ".join(described["graph"]["problems"]))
            return 0
        submission = resolve(argv, pipelines)
    except SubmissionError as exc:
        print(f"run_flink.sh: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    import requests

    try:
        result = submit(submission)
    except requests.exceptions.ConnectionError as exc:
        # The uber-jar submission starts by asking the JobManager's REST API for its configuration.
        master = submission.options().view_as(FlinkRunnerOptions).flink_master
        print(f"run_flink.sh: error: cannot reach the Flink JobManager REST API at {master}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "job server jar" not in str(exc):
            raise
        # Beam fetches its Flink job server jar from Maven Central unless --flink_job_server_jar names one.
        print(f"run_flink.sh: error: {exc} (or pass --flink_job_server_jar PATH)", file=sys.stderr)
        return 1
    jar = submission.options().view_as(PortableOptions).output_executable_path
    if jar:
        result.wait_until_finish()
        print(f"wrote the {submission.pipeline} application jar: {jar}")
    else:
        print(f"submitted {submission.pipeline} to {submission.options().view_as(FlinkRunnerOptions).flink_master}: "
              f"state {result.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
