"""What a pipeline run did, in one line, from its Beam metrics: a bounded run prints it when it ends, a
streaming run logs it every ``--summary_interval_seconds``.

- orders: records read, priced, duplicates (another record with an order id already stored), replayed
  (the same Kafka record again, e.g. a rerun), alarms fired, dead letters by reason;
- presence: Kafka records read, keep-alives and availability changes decoded, sessions, late pings (and
  how many of them the evaluation could no longer use), status intervals, dead letters by reason.

Counters are summed over steps; committed values where the runner has them, else attempted. The
metric names are documented where they are incremented (``orders/dead_letter_<reason>``,
``presence/dead_letter_<reason>`` by ``CountDeadLetters`` here, ``KeepaliveSessions/late_pings``, ...).
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

LOG = logging.getLogger("orderflow.pipelines")
DEAD_LETTER_PREFIX = "dead_letter_"


class SummaryOptions(PipelineOptions):
    """How often a streaming run logs its summary."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--summary_interval_seconds", type=float, default=60.0,
                            help="streaming: log the run's summary this often (0: never); a bounded run "
                                 "prints it once, when it ends")


class _CountByReasonFn(beam.DoFn):
    def __init__(self, namespace: str):
        self._namespace = namespace

    def setup(self):
        self._counters = {}

    def process(self, letter):
        counter = self._counters.get(letter.reason)
        if counter is None:
            counter = self._counters[letter.reason] = Metrics.counter(
                self._namespace, f"{DEAD_LETTER_PREFIX}{letter.reason}")
        counter.inc()
        yield letter


class CountDeadLetters(beam.PTransform):
    """Counts ``DeadLetter`` elements per reason and passes them on unchanged.

    Args:
        namespace: the counters are ``<namespace>/dead_letter_<reason>``.
    """

    def __init__(self, namespace: str):
        super().__init__()
        self._namespace = namespace

    def expand(self, letters):
        return letters | beam.ParDo(_CountByReasonFn(self._namespace))


def counters(result: PipelineResult) -> dict[str, int]:
    """``{"namespace/name": value}`` of every counter of the run, summed over steps."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        key = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        totals[key] = totals.get(key, 0) + (value or 0)
    return totals


def _dead_letters(values: dict[str, int], namespace: str) -> str:
    prefix = f"{namespace}/{DEAD_LETTER_PREFIX}"
    reasons = sorted((name[len(prefix):], n) for name, n in values.items() if name.startswith(prefix) and n)
    total = sum(n for _, n in reasons)
    if not reasons:
        return "0 dead letters"
    return f"{total:,} dead letters (" + ", ".join(f"{reason} {n:,}" for reason, n in reasons) + ")"


def orders_summary(values: dict[str, int]) -> str:
    """The orders pipeline's counters in one line."""
    get = values.get
    return (f"{get('orders/records_in', 0):,} records, {get('orders/orders_priced', 0):,} priced, "
            f"{get('orders/postgres_duplicates', 0):,} duplicates, {get('orders/postgres_replayed', 0):,} replayed, "
            f"{get('orders/alarms_fired', 0):,} alarms, {_dead_letters(values, 'orders')}")


def presence_summary(values: dict[str, int]) -> str:
    """The presence pipeline's counters in one line."""
    get = values.get
    return (f"{get('ReadFromKafka/records', 0):,} records: "
            f"{get('DecodeAvro/restaurant_keepalive_decoded', 0):,} keep-alives, "
            f"{get('DecodeAvailabilityChanges/changes', 0):,} availability changes; "
            f"{get('KeepaliveSessions/sessions', 0):,} sessions, "
            f"{get('KeepaliveSessions/late_pings', 0):,} late pings "
            f"({get('RestaurantStatusIntervals/late_pings_ignored', 0):,} too late to count), "
            f"{get('KeepaliveSessions/pings_after_cut_off', 0):,} pings after the cut-off, "
            f"{get('RestaurantStatusIntervals/intervals', 0):,} status intervals, {_dead_letters(values, 'presence')}")


def report_run(result: PipelineResult, argv: list[str] | None, name: str, describe: Callable[[dict[str, int]], str],
               bounded_option_view: type[PipelineOptions]) -> threading.Thread | None:
    """``report`` with the run's own options: ``--bounded`` (of ``bounded_option_view``, the pipeline's
    options) and ``--summary_interval_seconds``."""
    options = PipelineOptions(argv)
    return report(result, name, describe, options.view_as(bounded_option_view).bounded,
                  options.view_as(SummaryOptions).summary_interval_seconds)


def report(result: PipelineResult, name: str, describe: Callable[[dict[str, int]], str], bounded: bool,
           interval_seconds: float) -> threading.Thread | None:
    """Prints the summary of a finished bounded run; for a streaming run, starts a daemon thread that logs
    it every ``interval_seconds`` until the run ends (returned; None when not started)."""
    if bounded:
        print(f"{name} pipeline {_state(result)}: {describe(counters(result))}", flush=True)
        return None
    if interval_seconds <= 0:
        return None
    if not LOG.handlers and not logging.getLogger().handlers:  # nothing set up logging: show INFO here
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    thread = threading.Thread(target=_log_periodically, args=(result, name, describe, interval_seconds),
                              name=f"{name}-summary", daemon=True)
    thread.start()
    return thread


def _state(result: PipelineResult) -> str:
    return str(result.state).rsplit(".", 1)[-1].lower()


def _log_periodically(result: PipelineResult, name: str, describe, interval_seconds: float) -> None:
    stopped = threading.Event()
    while not stopped.wait(interval_seconds):
        try:
            finished = PipelineState.is_terminal(result.state)
            LOG.info("%s pipeline %s: %s", name, _state(result), describe(counters(result)))
        except Exception:  # noqa: BLE001 - a summary must never take the pipeline down
            LOG.exception("%s pipeline: no summary this time", name)
            continue
        if finished:
            return
