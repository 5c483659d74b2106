"""What a pipeline run did, in one line: a bounded run prints it from its Beam metrics when it ends; in a
streaming run every worker process prints its own running totals every ``--summary_interval_seconds``.

- orders: records read, priced, duplicates (another record with an order id already stored), replayed
  (the same Kafka record again, e.g. a rerun), alarms fired, dead letters by reason;
- presence: Kafka records read, keep-alives and availability changes decoded, sessions, late pings (and
  how many of them the evaluation could no longer use), status intervals, dead letters by reason.

Counters are summed over steps; committed values where the runner has them, else attempted. The
metric names are documented where they are incremented (``orders/dead_letter_<reason>``,
``presence/dead_letter_<reason>`` by ``CountDeadLetters`` here, ``KeepaliveSessions/late_pings``, ...).
A streaming line has what the workers can tally themselves (see ``StreamingSummary``): records, priced,
duplicates or replays, keep-alives, availability changes, sessions, status intervals, dead letters by reason.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from orderflow.io.avro import decoded_metric
from orderflow.io.kafka_read import RECORDS
from orderflow.io.postgres_orders import ALARMS_FIRED, POSTGRES_DUPLICATES, POSTGRES_REPLAYED
from orderflow.model.dead_letter import DEAD_LETTER_METRIC_PREFIX, ReasonCounters, dead_letter_metric
from orderflow.model.kafka_record import KafkaRecord
from orderflow.pipelines.progress import ProgressOptions, ProgressTarget, ProgressWriter
from orderflow.pipelines.runner import RunModeOptions
from orderflow.transforms.availability_changes import CHANGES
from orderflow.transforms.keepalive_sessions import LATE_PINGS, PINGS_AFTER_CUT_OFF, SESSIONS
from orderflow.transforms.normalize_orders import RECORDS_IN
from orderflow.transforms.price_orders import ORDERS_PRICED
from orderflow.transforms.status_intervals import INTERVALS, LATE_PINGS_IGNORED

__all__ = ["CountDeadLetters", "KEEPALIVES_DECODED", "ORDERS_REFUSED", "ORDERS_STORED", "counters", "metric_key",
           "orders_summary", "presence_summary", "report_run", "streaming_summary"]

DEAD_LETTER_LOG_LIMIT = 5  # dead letters logged one by one per reason per minute and worker process
_LOG = logging.getLogger("orderflow.pipelines")


class SummaryOptions(PipelineOptions):
    """How often a streaming run logs its summary."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--summary_interval_seconds", type=float, default=60.0,
                            help="streaming: each worker process prints its running summary this often "
                                 "(0: never); a bounded run prints its summary once, when it ends")


class _CountByReasonFn(beam.DoFn):
    def __init__(self, namespace: str):
        self._namespace = namespace

    def setup(self):
        self._by_reason = ReasonCounters(functools.partial(Metrics.counter, self._namespace))

    def process(self, letter):
        self._by_reason.inc(letter.reason)
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


def metric_key(name: tuple[str, str]) -> str:
    """``"namespace/name"``: how counters are keyed here, from a metric name a transform exports."""
    return "/".join(name)


# Tallies of a streaming run that no Beam counter has (see ``orders_duplicates``).
ORDERS_STORED, ORDERS_REFUSED = "orders/stored", "orders/refused"
ORDERS_DUPLICATES_OR_REPLAYS = "orders/duplicates_or_replays"
KEEPALIVES_DECODED = metric_key(decoded_metric("restaurant_keepalive"))

# (counter "namespace/name", what it counts): the parts of each pipeline's line, in order; then dead letters.
ORDERS_PARTS = [(metric_key(RECORDS_IN), "records"), (metric_key(ORDERS_PRICED), "priced"),
                (metric_key(POSTGRES_DUPLICATES), "duplicates"), (metric_key(POSTGRES_REPLAYED), "replayed"),
                (metric_key(ALARMS_FIRED), "alarms")]
PRESENCE_PARTS = [(metric_key(RECORDS), "records"),
                  (KEEPALIVES_DECODED, "keep-alives"),
                  (metric_key(CHANGES), "availability changes"),
                  (metric_key(SESSIONS), "sessions"), (metric_key(LATE_PINGS), "late pings"),
                  (metric_key(LATE_PINGS_IGNORED), "late pings too late to count"),
                  (metric_key(PINGS_AFTER_CUT_OFF), "pings after the cut-off"),
                  (metric_key(INTERVALS), "status intervals")]
# What a streaming run's workers tally themselves (see ``StreamingSummary``); ``*/duplicates_or_replays``
# is priced minus stored (minus refused by the sink), so it includes a redelivered record.
ORDERS_STREAMING_PARTS = [(metric_key(RECORDS_IN), "records"), (metric_key(ORDERS_PRICED), "priced"),
                          (ORDERS_DUPLICATES_OR_REPLAYS, "duplicates or replays")]
PRESENCE_STREAMING_PARTS = [(metric_key(RECORDS), "records"),
                            (KEEPALIVES_DECODED, "keep-alives"),
                            (metric_key(CHANGES), "availability changes"),
                            (metric_key(SESSIONS), "sessions"),
                            (metric_key(INTERVALS), "status intervals")]


def describe(values: dict[str, int], parts: list[tuple[str, str]], namespace: str) -> str:
    """One line: each part present in ``values``, then the dead letters of ``namespace`` by reason."""
    shown = [f"{values[key]:,} {label}" for key, label in parts if key in values]
    prefix = f"{namespace}/{DEAD_LETTER_METRIC_PREFIX}"
    reasons = sorted((name[len(prefix):], n) for name, n in values.items() if name.startswith(prefix) and n)
    letters = f"{sum(n for _, n in reasons):,} dead letters"
    if reasons:
        letters += " (" + ", ".join(f"{reason} {n:,}" for reason, n in reasons) + ")"
    return ", ".join([*shown, letters])


def orders_summary(values: dict[str, int]) -> str:
    """The orders pipeline's counters in one line (absent counters are 0)."""
    return describe({key: 0 for key, _ in ORDERS_PARTS} | values, ORDERS_PARTS, "orders")


def presence_summary(values: dict[str, int]) -> str:
    """The presence pipeline's counters in one line (absent counters are 0)."""
    return describe({key: 0 for key, _ in PRESENCE_PARTS} | values, PRESENCE_PARTS, "presence")


def report_run(result: PipelineResult, argv: list[str] | None, name: str,
               summarize: Callable[[dict[str, int]], str]) -> None:
    """Prints the one-line summary of a bounded run (``--bounded``) that ended; a streaming run's workers log
    theirs (``StreamingSummary``)."""
    if PipelineOptions(argv).view_as(RunModeOptions).bounded:
        state = str(result.state).rsplit(".", 1)[-1].lower()
        print(f"{name} pipeline {state}: {summarize(counters(result))}", flush=True)


# -- streaming ---------------------------------------------------------------------------------------------
# Beam 2.77 offers no live metrics of a running streaming job to the submitting process: a portable
# runner's PipelineResult (Prism, Flink's job server) keeps the first metrics answer it got, and the legacy
# DirectRunner commits a streaming step's counters of its first bundle only. So the workers tally what a
# summary needs themselves, per process, and print it.
class _ProcessTotals:
    """This process's running totals for one pipeline: printed to stderr every ``interval_seconds`` and reported
    to ``pipeline_progress`` every ``progress.interval_seconds`` (``progress.ProgressWriter``)."""

    _all: dict[str, _ProcessTotals] = {}
    _create = threading.Lock()

    def __init__(self, summary: StreamingSummary):
        self._name, self._parts, self._namespace = summary.name, summary.parts, summary.namespace
        self._derive, self._records_in_key = summary.derive, summary.records_in_key
        self._values: dict[str, int] = {}
        self._newest_event_ms: int | None = None
        self._progress_at: dt.datetime | None = None
        self._lock = threading.Lock()
        self._log_minute = 0
        self._logged: dict[str, int] = {}
        self._writer = ProgressWriter(summary.progress) if summary.progress is not None else None
        threading.Thread(target=self._report_every,
                         args=(summary.interval_seconds,
                               summary.progress.interval_seconds if summary.progress is not None else 0),
                         name=f"{summary.name}-summary", daemon=True).start()

    @classmethod
    def of(cls, summary: StreamingSummary) -> _ProcessTotals:
        with cls._create:
            totals = cls._all.get(summary.name)
            if totals is None:
                totals = cls._all[summary.name] = cls(summary)
            return totals

    def add(self, key: str, n: int, newest_event_ms: int | None = None) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n
            if key == self._records_in_key and n:
                self._progress_at = dt.datetime.now(dt.timezone.utc)
            if newest_event_ms is not None and (self._newest_event_ms is None or newest_event_ms > self._newest_event_ms):
                self._newest_event_ms = newest_event_ms

    def values(self) -> dict[str, int]:
        with self._lock:
            values = {key: 0 for key, _ in self._parts} | self._values
        return self._derive(values) if self._derive else values

    def log_dead_letter(self, letter) -> None:
        """Logs a dead letter with its pipeline, stage, reason and Kafka coordinates: the first
        ``DEAD_LETTER_LOG_LIMIT`` per reason per minute, then how many more there were (a poison stream must
        not flood the log; the counts and the letters themselves are kept anyway)."""
        minute = int(time.time() // 60)
        with self._lock:
            if minute != self._log_minute:
                suppressed, self._log_minute, self._logged = self._logged, minute, {}
            else:
                suppressed = {}
            n = self._logged[letter.reason] = self._logged.get(letter.reason, 0) + 1
        for reason, count in suppressed.items():
            if count > DEAD_LETTER_LOG_LIMIT:
                _LOG.warning("%d more dead letters (%s) in the last minute were not logged one by one",
                             count - DEAD_LETTER_LOG_LIMIT, reason,
                             extra={"pipeline": self._name, "reason": reason, "count": count - DEAD_LETTER_LOG_LIMIT})
        if n <= DEAD_LETTER_LOG_LIMIT:
            topic, partition, offset = _coordinates(letter.source)
            _LOG.warning("dead letter (%s) at %s: %s", letter.reason, letter.stage or "?", letter.detail[:300],
                         extra={"pipeline": self._name, "stage": letter.stage, "reason": letter.reason,
                                "topic": topic, "partition": partition, "offset": offset})

    def report(self) -> dict:
        """What ``pipeline_progress.counters`` holds: ``{"records_in": n, "stages": {tally: n},
        "dead_letters": {reason: n}}``, this process's raw totals."""
        with self._lock:
            values = dict(self._values)
        dead_prefix = f"{self._namespace}/{DEAD_LETTER_METRIC_PREFIX}"
        return {"records_in": values.get(self._records_in_key, 0) if self._records_in_key else 0,
                "stages": {k: v for k, v in values.items() if k != self._records_in_key and not k.startswith(dead_prefix)},
                "dead_letters": {k[len(dead_prefix):]: v for k, v in values.items() if k.startswith(dead_prefix)}}

    def line(self) -> str:
        return describe(self.values(), self._parts, self._namespace)

    def _report_every(self, print_seconds: float, progress_seconds: float) -> None:
        next_print = time.monotonic() + print_seconds if print_seconds > 0 else float("inf")
        next_report = time.monotonic() if progress_seconds > 0 else float("inf")  # the first report at once
        while True:
            time.sleep(max(0.0, min(next_print, next_report) - time.monotonic()))
            now = time.monotonic()
            if now >= next_report and self._writer is not None:
                with self._lock:
                    progress_at, newest = self._progress_at, self._newest_event_ms
                self._writer.write(self.report(), progress_at, newest)
                next_report = now + progress_seconds
            if now >= next_print:
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self._name} pipeline running (this worker process): "
                      f"{self.line()}", file=sys.stderr, flush=True)
                next_print = now + print_seconds


def _coordinates(source: str) -> tuple[str | None, int | None, int | None]:
    """``topic/partition/offset[#index]`` (a dead letter's source) -> its parts; Nones when it is not that."""
    parts = source.split("/")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].split("#")[0].isdigit():
        return parts[0], int(parts[1]), int(parts[2].split("#")[0])
    return None, None, None


class _TallyFn(beam.DoFn):
    def __init__(self, summary: StreamingSummary, key: str | None):
        self._summary = summary
        self._key = key

    def setup(self):
        self._totals = _ProcessTotals.of(self._summary)

    def process(self, element):
        if self._key is None:  # a DeadLetter
            self._totals.add(f"{self._summary.namespace}/{dead_letter_metric(element.reason)}", 1)
            self._totals.log_dead_letter(element)
        elif isinstance(element, list):
            # A batch of KafkaRecords carries the event times that say how fresh the pipeline is.
            newest = max((r.timestamp_ms for r in element if isinstance(r, KafkaRecord)), default=None)
            self._totals.add(self._key, len(element), newest)
        else:
            self._totals.add(self._key, 1, element.timestamp_ms if isinstance(element, KafkaRecord) else None)


class StreamingSummary:
    """The periodic summary of a streaming run: branches that tally elements (a list counts its length)
    into their worker process's totals, which that process prints every ``interval_seconds`` and reports to
    ``pipeline_progress`` (``progress``) for the API.

    Args:
        name: the pipeline's name, as the line shows it.
        parts: ``(key, label)`` of the line (keys are the tallies' names).
        namespace: the dead letters' namespace.
        interval_seconds: how often a worker process prints its line (0: never).
        derive: optional ``values -> values`` applied before printing (e.g. differences of tallies).
        records_in_key: the tally of records read: its growth is the pipeline's progress.
        progress: where the worker processes report (None: they do not).
    """

    def __init__(self, name: str, parts, namespace: str, interval_seconds: float, derive=None,
                 records_in_key: str | None = None, progress: ProgressTarget | None = None):
        self.name, self.parts, self.namespace = name, list(parts), namespace
        self.interval_seconds, self.derive = interval_seconds, derive
        self.records_in_key, self.progress = records_in_key, progress

    def count(self, pcoll, key: str, label: str | None = None) -> None:
        """Tallies ``pcoll``'s elements under ``key`` (``label``: the step's, when several count into one key)."""
        _ = pcoll | f"Summary[{label or key}]" >> beam.ParDo(_TallyFn(self, key))

    def count_dead_letters(self, letters) -> None:
        """Tallies ``DeadLetter`` elements by reason."""
        _ = letters | f"Summary[{self.namespace}/dead_letters]" >> beam.ParDo(_TallyFn(self, None))


def orders_duplicates(values: dict[str, int]) -> dict[str, int]:
    """Streaming orders: duplicates or replays = priced - stored - refused by the sink (dead letters)."""
    get = values.get
    return values | {ORDERS_DUPLICATES_OR_REPLAYS: get(metric_key(ORDERS_PRICED), 0) - get(ORDERS_STORED, 0)
                     - get(ORDERS_REFUSED, 0)}


# The tally of records read, per pipeline: its growth is the pipeline's progress.
RECORDS_READ = {"orders": metric_key(RECORDS_IN), "presence": metric_key(RECORDS)}


def streaming_summary(name: str, options: PipelineOptions, progress: ProgressTarget | None = None
                      ) -> StreamingSummary | None:
    """The pipeline's ``StreamingSummary``, printed every ``--summary_interval_seconds`` and reported to
    ``progress`` every ``--progress_interval_seconds`` (None when both are 0)."""
    interval = options.view_as(SummaryOptions).summary_interval_seconds
    progress_seconds = options.view_as(ProgressOptions).progress_interval_seconds
    progress = dataclasses.replace(progress, interval_seconds=progress_seconds) if progress and progress_seconds > 0 else None
    if interval <= 0 and progress is None:
        return None
    if name == "orders":
        return StreamingSummary(name, ORDERS_STREAMING_PARTS, "orders", interval, orders_duplicates,
                                RECORDS_READ[name], progress)
    return StreamingSummary(name, PRESENCE_STREAMING_PARTS, "presence", interval, None, RECORDS_READ[name], progress)
