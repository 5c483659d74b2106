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

import sys
import threading
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from orderflow.pipelines.runner import RunModeOptions

DEAD_LETTER_PREFIX = "dead_letter_"


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


# (counter "namespace/name", what it counts): the parts of each pipeline's line, in order; then dead letters.
ORDERS_PARTS = [("orders/records_in", "records"), ("orders/orders_priced", "priced"),
                 ("orders/postgres_duplicates", "duplicates"), ("orders/postgres_replayed", "replayed"),
                 ("orders/alarms_fired", "alarms")]
PRESENCE_PARTS = [("ReadFromKafka/records", "records"),
                  ("DecodeAvro/restaurant_keepalive_decoded", "keep-alives"),
                  ("DecodeAvailabilityChanges/changes", "availability changes"),
                  ("KeepaliveSessions/sessions", "sessions"), ("KeepaliveSessions/late_pings", "late pings"),
                  ("RestaurantStatusIntervals/late_pings_ignored", "late pings too late to count"),
                  ("KeepaliveSessions/pings_after_cut_off", "pings after the cut-off"),
                  ("RestaurantStatusIntervals/intervals", "status intervals")]
# What a streaming run's workers tally themselves (see ``StreamingSummary``); ``*/duplicates_or_replays``
# is priced minus stored (minus refused by the sink), so it includes a redelivered record.
ORDERS_STREAMING_PARTS = [("orders/records_in", "records"), ("orders/orders_priced", "priced"),
                          ("orders/duplicates_or_replays", "duplicates or replays")]
PRESENCE_STREAMING_PARTS = [("ReadFromKafka/records", "records"),
                            ("DecodeAvro/restaurant_keepalive_decoded", "keep-alives"),
                            ("DecodeAvailabilityChanges/changes", "availability changes"),
                            ("KeepaliveSessions/sessions", "sessions"),
                            ("RestaurantStatusIntervals/intervals", "status intervals")]


def describe(values: dict[str, int], parts: list[tuple[str, str]], namespace: str) -> str:
    """One line: each part present in ``values``, then the dead letters of ``namespace`` by reason."""
    shown = [f"{values[key]:,} {label}" for key, label in parts if key in values]
    prefix = f"{namespace}/{DEAD_LETTER_PREFIX}"
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
    """This process's running totals for one pipeline, printed to stderr every ``interval_seconds``."""

    _all: dict[str, _ProcessTotals] = {}
    _create = threading.Lock()

    def __init__(self, name: str, parts, namespace: str, interval_seconds: float, derive):
        self._name, self._parts, self._namespace, self._derive = name, parts, namespace, derive
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._print_every, args=(interval_seconds,), name=f"{name}-summary",
                         daemon=True).start()

    @classmethod
    def of(cls, name: str, parts, namespace: str, interval_seconds: float, derive) -> _ProcessTotals:
        with cls._create:
            totals = cls._all.get(name)
            if totals is None:
                totals = cls._all[name] = cls(name, parts, namespace, interval_seconds, derive)
            return totals

    def add(self, key: str, n: int) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n

    def line(self) -> str:
        with self._lock:
            values = {key: 0 for key, _ in self._parts} | self._values
        return describe(self._derive(values) if self._derive else values, self._parts, self._namespace)

    def _print_every(self, interval_seconds: float) -> None:
        while True:
            time.sleep(interval_seconds)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self._name} pipeline running (this worker process): "
                  f"{self.line()}", file=sys.stderr, flush=True)


class _TallyFn(beam.DoFn):
    def __init__(self, summary: StreamingSummary, key: str | None):
        self._summary = summary
        self._key = key

    def setup(self):
        s = self._summary
        self._totals = _ProcessTotals.of(s.name, s.parts, s.namespace, s.interval_seconds, s.derive)

    def process(self, element):
        if self._key is None:  # a DeadLetter
            self._totals.add(f"{self._summary.namespace}/{DEAD_LETTER_PREFIX}{element.reason}", 1)
        else:
            self._totals.add(self._key, len(element) if isinstance(element, list) else 1)


class StreamingSummary:
    """The periodic summary of a streaming run: branches that tally elements (a list counts its length)
    into their worker process's totals, which that process prints every ``interval_seconds``.

    Args:
        name: the pipeline's name, as the line shows it.
        parts: ``(key, label)`` of the line (keys are the tallies' names).
        namespace: the dead letters' namespace.
        interval_seconds: how often a worker process prints its line.
        derive: optional ``values -> values`` applied before printing (e.g. differences of tallies).
    """

    def __init__(self, name: str, parts, namespace: str, interval_seconds: float, derive=None):
        self.name, self.parts, self.namespace = name, list(parts), namespace
        self.interval_seconds, self.derive = interval_seconds, derive

    def count(self, pcoll, key: str, label: str | None = None) -> None:
        """Tallies ``pcoll``'s elements under ``key`` (``label``: the step's, when several count into one key)."""
        _ = pcoll | f"Summary[{label or key}]" >> beam.ParDo(_TallyFn(self, key))

    def count_dead_letters(self, letters) -> None:
        """Tallies ``DeadLetter`` elements by reason."""
        _ = letters | f"Summary[{self.namespace}/dead_letters]" >> beam.ParDo(_TallyFn(self, None))


def orders_duplicates(values: dict[str, int]) -> dict[str, int]:
    """Streaming orders: duplicates or replays = priced - stored - refused by the sink (dead letters)."""
    get = values.get
    return values | {"orders/duplicates_or_replays": get("orders/orders_priced", 0) - get("orders/stored", 0)
                     - get("orders/refused", 0)}


def streaming_summary(name: str, options: PipelineOptions) -> StreamingSummary | None:
    """The pipeline's ``StreamingSummary`` at ``--summary_interval_seconds`` (None when 0)."""
    interval = options.view_as(SummaryOptions).summary_interval_seconds
    if interval <= 0:
        return None
    if name == "orders":
        return StreamingSummary(name, ORDERS_STREAMING_PARTS, "orders", interval, orders_duplicates)
    return StreamingSummary(name, PRESENCE_STREAMING_PARTS, "presence", interval)
