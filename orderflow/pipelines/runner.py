"""The one way orderflow's pipelines run: parse the options, stream unless ``--bounded``, build, run.

``RunModeOptions`` declares ``--bounded``, the run mode every pipeline shares; each pipeline's own options
class declares only its own knobs.

Streaming runs go to Beam's Prism runner by default (``--runner=PrismRunner`` with the binary that
``ORDERFLOW_PRISM_LOCATION`` names, ``orderflow.config.prism_location``; the developer's tools set it to what
``make prism`` builds into ``<repo>/.local/bin/prism``): the DirectRunner cannot run these graphs unbounded
(it falls back to its legacy runner, where an unbounded splittable DoFn's watermark never advances).
``--runner`` and ``--prism_location`` override the defaults; bounded runs keep Beam's default runner.
"""
from __future__ import annotations

import argparse
import gc
import logging
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, PrismRunnerOptions, StandardOptions

from orderflow.config import PRISM_LOCATION_VARIABLE, Settings, prism_location
from orderflow.io import kafka_read

_LOG = logging.getLogger(__name__)

STREAMING_RUNNER = "PrismRunner"
# The Python portable runner opens the job's state and message streams with --job_server_timeout as their gRPC
# deadline (default 300 s): a streaming run's wait_until_finish then dies with DEADLINE_EXCEEDED after 5 minutes
# and takes the pipeline (Prism, LOOPBACK worker) with it. Streaming runs get ten years unless set explicitly.
STREAMING_JOB_SERVER_TIMEOUT = 10 * 365 * 24 * 3600


class RunModeOptions(PipelineOptions):
    """How an orderflow pipeline runs, the same for all of them: ``--bounded`` reads every Kafka partition
    to its end, then finishes (batch); without it the pipeline streams.

    One class for every pipeline, because Beam parses all registered options classes with one parser,
    where a flag may be declared once. Read it with ``options.view_as(RunModeOptions).bounded``.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--bounded", action="store_true", default=False,
                            help="read every partition to its end, then finish (batch); default: stream")
        parser.add_argument("--drain_timeout_seconds", type=float, default=30.0,
                            help="streaming: on SIGTERM (or Ctrl-C), how long to wait for the records already read "
                                 "to be processed and their offsets committed before the run stops (exit 0 either "
                                 "way: a restart resumes from the committed offsets and the stores)")
        parser.add_argument("--idle_poll_max_seconds", type=float, default=kafka_read.IDLE_POLL_MAX_INTERVAL,
                            help="streaming: a Kafka partition with nothing new is polled again after 0.5 s, then "
                                 "twice as long each time it is still idle, up to this; its first record brings "
                                 "the 0.5 s back. The idle pipeline's CPU against the latency of a record after a "
                                 "quiet spell (read at most this late); 0.5 turns the back-off off "
                                 "(benchmarks/README.md, the cost of idling)")
        parser.add_argument("--caught_up_delay_seconds", type=float, default=kafka_read.CAUGHT_UP_DELAY,
                            help="streaming: a Kafka partition whose read caught up is read again after this; what "
                                 "arrives meanwhile is read in one bundle. A record's latency (it waits up to this) "
                                 "against the CPU of a trickle (each read is a bundle through the runner); 0 reads "
                                 "again at once (benchmarks/README.md, orders latency at a trickle)")


HELP_FLAGS = ("-h", "--help")


def help_requested(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def print_help(prog: str, description: str, own: Sequence[type[PipelineOptions]]) -> None:
    """``--help`` of a pipeline's command line: every option with its help and default, the pipeline's own
    (``own``, e.g. its options class, ``RunModeOptions``, ``SummaryOptions``) first, then every other one
    Beam registers (runners, workers, I/O).

    Beam parses its options on construction with a parser of the class's own options only, so its ``--help``
    shows ``-h`` alone; the full parser is the one ``get_all_options`` builds, which its public
    ``add_extra_args_fn`` hands over: printed from there.
    """
    def printer(title: str | None, usage: str | None = None):
        def show(parser: argparse.ArgumentParser) -> None:
            parser.prog, parser.description, parser.usage = prog, title, usage
            parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
            parser.print_help()
            print()
        return show

    print(f"usage: {prog} [options]\n\n{description}\n")
    for cls in own:
        PipelineOptions([]).view_as(cls).get_all_options(
            current_only=True, add_extra_args_fn=printer(cls.__doc__.strip().splitlines()[0] if cls.__doc__ else None,
                                                         f"{prog} [options]: {cls.__name__}"))
    PipelineOptions([]).get_all_options(add_extra_args_fn=printer(
        "Every option Beam and orderflow register (the ones above among them), e.g. --runner, --prism_location",
        f"{prog} [options]: all"))


def apply_streaming_defaults(options: PipelineOptions) -> PipelineOptions:
    """Streaming, on Prism with the binary ``ORDERFLOW_PRISM_LOCATION`` names unless ``--runner`` /
    ``--prism_location`` say otherwise, with a job-service deadline that outlives the run
    (``STREAMING_JOB_SERVER_TIMEOUT``)."""
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if "job_server_timeout" not in options.get_all_options(drop_default=True):
        options.view_as(PortableOptions).job_server_timeout = STREAMING_JOB_SERVER_TIMEOUT
    if standard.runner is None:
        standard.runner = STREAMING_RUNNER
    prism = options.view_as(PrismRunnerOptions)
    if standard.runner in (STREAMING_RUNNER, "prism") and prism.prism_location is None:
        # Never Beam's own fallback, which downloads a Prism release at run time.
        binary = prism_location()
        if binary is None or not pathlib.Path(binary).is_file():
            raise FileNotFoundError(
                f"streaming runs on Beam's Prism runner: set {PRISM_LOCATION_VARIABLE} to its binary "
                f"({'unset' if binary is None else binary + ' does not exist'}; in a checkout, `make prism` builds "
                ".local/bin/prism), or pass --prism_location=PATH, or another --runner")
        prism.prism_location = binary
    return options


def run_pipeline(build: Callable[[beam.Pipeline, PipelineOptions, Settings | None], None],
                 argv: list[str] | None, settings: Settings | None):
    """Builds and runs a pipeline; bounded runs (``--bounded``) wait until finished. Returns the PipelineResult.

    A streaming run's caller keeps its process alive (``result.wait_until_finish()``): on Prism the job
    server and the SDK worker (LOOPBACK) live in it.
    """
    options = PipelineOptions(argv)
    bounded = options.view_as(RunModeOptions).bounded
    if not bounded:
        apply_streaming_defaults(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options, settings)
    # This process owns its heap: Beam's modules and the pipeline graph, large and alive for the whole run,
    # leave the collector's generations (gc.freeze), so the full collections that the records of a run
    # trigger do not scan them again and again. The runner does it, not the Kafka source: the process is
    # the runner's, and a library must not change the collector. A bounded run gives them back when it ends.
    gc.collect()
    gc.freeze()
    try:
        result = pipeline.run()
        if bounded:
            result.wait_until_finish()
    except BaseException:
        gc.unfreeze()
        raise
    if bounded:
        gc.unfreeze()
    return result


def wait_until_stopped(result, name: str, options: PipelineOptions | None = None) -> int:
    """Waits for a streaming run in the process that hosts it; returns the process' exit status.

    SIGTERM or SIGINT drains the run: the Kafka reads stop claiming records (``kafka_read.request_drain``),
    the bundles already read finish and their offsets are committed (``kafka_read.drained``), at most
    ``--drain_timeout_seconds``; then the job is cancelled and the process exits 0, the time it took in its
    log. Nothing is lost either way: what the run held in flight is rebuilt from the stores on the next
    start (docs/reliability.md). A run that ends by itself returns 0 when it finished, 1 otherwise.
    """
    timeout = (options or PipelineOptions()).view_as(RunModeOptions).drain_timeout_seconds
    stop, ended = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def wait():
        try:
            result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            outcome.append(exc)
        finally:
            ended.set()
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=wait, name=f"{name}-run", daemon=True).start()
    while not stop.wait(1.0):
        pass
    if ended.is_set():
        if outcome:
            raise outcome[0]
        return 0 if str(result.state).endswith("DONE") else 1

    started = time.monotonic()
    _LOG.info("%s pipeline stopping: draining (at most %.0f s)", name, timeout)
    kafka_read.request_drain()
    while not kafka_read.drained() and time.monotonic() - started < timeout and not ended.is_set():
        time.sleep(0.2)
    took = time.monotonic() - started
    positions = {f"{topic}/{partition}": read for (_, topic, partition), (read, _) in
                 sorted(kafka_read.drain_positions().items())}
    if kafka_read.drained():
        _LOG.info("%s pipeline drained in %.1f s: every record read is committed %s", name, took, positions)
    else:
        _LOG.warning("%s pipeline stopped after %.1f s without a full drain: records after the committed offsets "
                     "are read again on the next start", name, took)
    try:
        result.cancel()
    except Exception as exc:  # noqa: BLE001 - a job already gone: nothing left to stop
        _LOG.info("%s pipeline: cancel answered %s", name, exc)
    ended.wait(10)
    _LOG.info("%s pipeline stopped (exit 0) %.1f s after the stop signal", name, time.monotonic() - started)
    return 0


def command_line(name: str, run: Callable[[list[str]], object], description: str,
                 own: Sequence[type[PipelineOptions]], argv: list[str] | None = None) -> None:
    """``python -m orderflow.pipelines.<name>``: ``--help`` (``print_help`` of ``own``), or ``run(argv)``; a
    streaming run lives as long as this process (the runner's job server and SDK worker run in it): SIGTERM
    drains it and exits 0 (``wait_until_stopped``). A bounded run has finished when ``run`` returns."""
    import sys

    from orderflow.logs import configure

    configure(name)  # JSON lines on stderr, secrets redacted (orderflow/logs.py)
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        print_help(f"python -m orderflow.pipelines.{name}", description, own)
        sys.exit(0)
    result = run(argv)
    options = PipelineOptions(argv)
    if not options.view_as(RunModeOptions).bounded:
        exit_now(wait_until_stopped(result, name, options))


def exit_now(status: int) -> None:
    """Ends this process at once with ``status``, logs flushed. After a drain nothing is left to do, and the
    runner's worker threads (LOOPBACK) would otherwise tear their DoFns down during interpreter exit, after
    the thread pools they use are gone, and can keep the process alive until it is killed."""
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
