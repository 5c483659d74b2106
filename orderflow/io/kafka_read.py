"""ReadFromKafka: a native Python Kafka source for Beam, a splittable DoFn over (topic, partition).

Beam's own ``ReadFromKafka`` is a Java cross-language transform; this one is plain Python on
``confluent-kafka``, so it runs on every runner (DirectRunner, Flink, Prism) without an expansion service.

Shape of the graph::

    Create(topics) -> ResolvePartitions (one element per partition, with its start offset)
                   -> Reshuffle (spread partitions over workers)
                   -> ReadPartition (splittable DoFn; restriction = offset range of the partition)

Restriction: an ``OffsetRange`` of the partition, so

- bounded mode reads ``[start, end)`` with ``end`` the partition's end when the read starts (its last
  stable offset under ``read_committed``): a replay is a snapshot, and a finite range splits like any
  other. The last offsets before ``end`` may be transaction markers or aborted records that are never
  delivered, so partition EOF also ends the range (``KafkaOffsetTracker`` truncates it there, and
  ``check_done`` holds);
- unbounded mode checkpoints (``defer_remainder``) when it has caught up or read for a while; a
  partition that stays idle is resumed less and less often (``idle_poll_interval``, doubling up to
  ``idle_poll_max_interval``; the first record brings the short interval back), because every resumption
  is a bundle through the runner and the SDK harness, which is what an idle pipeline spends its CPU on; its
  watermark (Beam's ``ManualWatermarkEstimator``) follows the latest record timestamp less the
  ``out_of_order_slack``, and the wall clock on an idle partition.

Records are claimed a batch at a time (claiming the last offset of a batch claims the batch), which keeps
per-record Python work to building the ``KafkaRecord``. Processed offsets are committed to the consumer
group when the runner finalizes the bundle, so a rerun resumes after the last finished work.

Draining (``request_drain``, ``drained``): a process that is asked to stop (SIGTERM) stops every streaming
read of its workers from claiming anything more; each read hands its partition back at once, the bundles
already read finish and are finalized, and ``drained()`` turns true once every offset read has been
committed. This works where the workers run in the submitting process (Prism's LOOPBACK environment, the
DirectRunner); Flink stops a job with its own savepoint or drain.
"""
from __future__ import annotations

import collections
import functools
import logging
import operator
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import apache_beam as beam
from apache_beam.coders import Coder, StrUtf8Coder, TimestampCoder, TupleCoder, VarIntCoder
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator, WatermarkEstimatorProvider
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orderflow.io.kafka_offsets import PartitionReader, StartPosition, resolve_start_offset
from orderflow.io.retry import is_transient
from orderflow.model.kafka_record import KafkaRecord

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
RECORDS = ("ReadFromKafka", "records")
# Streaming reads that found their partition at its end with nothing new and handed it back (deferred): an
# idle pipeline's resumptions, which the idle back-off makes rarer (benchmarks/README.md, the cost of idling).
IDLE_RESUMPTIONS = ("ReadFromKafka", "idle_resumptions")
# Consumers the reads opened: one per partition a process reads (the process' consumer pool, see _ConsumerPool),
# more only when a cached one was evicted or a bounded read's split ran beside it.
CONSUMERS_OPENED = ("ReadFromKafka", "consumers_opened")
# Streaming reads that found neither records nor their partition's end (a slow or unreachable broker) and handed it
# back without moving its watermark; a warning is logged once that has lasted NO_END_WARNING_SECONDS.
NO_END_DEFERRALS = ("ReadFromKafka", "no_end_deferrals")
NO_END_WARNING_SECONDS = 30.0

__all__ = ["ReadFromKafka", "StartPosition", "request_drain", "drained", "drain_positions", "KafkaPartition", "KafkaOffsetTracker", "PartitionEnd", "MAX_OFFSET",
           "KafkaPartitionCoder", "OffsetRangeCoder", "KafkaBatch", "KafkaBatchCoder", "RECORDS", "IDLE_RESUMPTIONS",
           "CONSUMERS_OPENED", "NO_END_DEFERRALS", "IDLE_POLL_MAX_INTERVAL", "CAUGHT_UP_DELAY"]

_LOG = logging.getLogger(__name__)
MAX_OFFSET = 2**63 - 1
# The idle back-off's default cap (s): an idle pipeline resumes each partition this seldom, and a record after a
# quiet spell waits at most this long to be read (benchmarks/README.md, the cost of idling).
IDLE_POLL_MAX_INTERVAL = 2.0
# How long a partition that caught up waits before it is read again (s): what arrives meanwhile is read together.
# Each resumption is a bundle through the runner with the fused stage's sink work per batch (a Postgres
# transaction, a DynamoDB write, a Kafka flush): the orders pipeline at 100-800/s took 57-71 % of a core read again
# at once, 38-52 % with 0.05 s and 30-42 % with 0.1 s, at p99 0.15-0.99, 0.17-0.57 and 0.22-0.44 s (alone, 1-3
# runs each: benchmarks/README.md, "Orders latency at a trickle"). A record waits at most this long more.
CAUGHT_UP_DELAY = 0.05
_PARTITION_EOF = KafkaError._PARTITION_EOF
_timestamp_ms = operator.attrgetter("timestamp_ms")
_new_record = tuple.__new__  # KafkaRecord(...) through tuple.__new__ skips NamedTuple's slower __new__
_as_record = functools.partial(_new_record, KafkaRecord)  # a tuple of KafkaRecord's fields -> KafkaRecord


class _DrainState:
    """This process's drain request, and the offsets its streaming reads read and committed (per group,
    topic and partition): the SDK worker's threads write them, the process that drains reads them."""

    def __init__(self):
        self.requested = threading.Event()
        self._lock = threading.Lock()
        self._read: dict[tuple[str, str, int], int] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self.reading = 0  # streaming reads under way: what they read is known only once they return

    def enter(self) -> None:
        with self._lock:
            self.reading += 1

    def leave(self) -> None:
        with self._lock:
            self.reading -= 1

    def read(self, key: tuple[str, str, int], next_offset: int) -> None:
        with self._lock:
            if next_offset > self._read.get(key, -1):
                self._read[key] = next_offset

    def committed(self, key: tuple[str, str, int], next_offset: int) -> None:
        with self._lock:
            if next_offset > self._committed.get(key, -1):
                self._committed[key] = next_offset

    def positions(self) -> dict[tuple[str, str, int], tuple[int, int | None]]:
        with self._lock:
            return {key: (offset, self._committed.get(key)) for key, offset in self._read.items()}


_DRAIN = _DrainState()


def request_drain() -> None:
    """Stops this process's streaming reads from claiming more records (see the module doc)."""
    _DRAIN.requested.set()


def drain_positions() -> dict[tuple[str, str, int], tuple[int, int | None]]:
    """``(group, topic, partition) -> (next offset read, next offset committed or None)`` of this process's
    committing streaming reads."""
    return _DRAIN.positions()


def drained() -> bool:
    """Whether no streaming read is under way and every offset this process's committing streaming reads read
    has been committed."""
    return _DRAIN.reading == 0 and all(committed is not None and committed >= read
                                       for read, committed in drain_positions().values())

# Consumer settings for throughput: big fetches, deep prefetch queue, no auto commit/offset store.
DEFAULT_CONSUMER_CONFIG = {
    # Only committed transactions: the API writes each request's batch in one transaction and answers 503
    # when it aborts, so an aborted batch must never reach the pipelines. It is librdkafka's default too,
    # said here because exactly-once depends on it. A bounded read's end is then the last stable offset:
    # an open transaction's records are not "in" yet, and the run does not wait for them.
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    "fetch.min.bytes": 1,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "queued.min.messages": 200_000,
    "queued.max.messages.kbytes": 32 * 1024,  # per cached consumer: bounds prefetch memory
}


# Streaming reads, on top: a consumer keeps fetching while its partition waits between resumptions, and with
# nothing new the broker answers each fetch after fetch.wait.max.ms: at 100 ms, librdkafka's threads spent ~2.5 %
# of a core on empty fetches for the pipelines' 12 idle partitions, at 500 ms ~0.6 % (benchmarks/README.md, the
# cost of idling). A record is not delayed by it: the broker answers as soon as one arrives (fetch.min.bytes 1).
# What waits longer is the partition-end event after a catch-up (it comes with an empty fetch), which only
# decides when the idle back-off starts. Bounded reads keep 100 ms: they end at that event.
# A smaller prefetch queue: a consumer's queue full of 178-byte orders held ~123 MB of RSS (librdkafka's
# per-message overhead on top of the 32 MB of payload), so a backlog on 4 partitions cost ~490 MB before a record
# was processed; 8 MB and fetches of 4 MB hold ~30 MB. A queue over its thresholds postpones the next fetch by
# fetch.queue.backoff.ms (librdkafka's default 1 s, which held one reader to ~90k records/s); at 100 ms it gets
# ~220k/s (the 32 MB queue ~330k/s), ten times what the pipeline processes (benchmarks/README.md, the backlog).
# Bounded reads keep the deep queue.
STREAMING_CONSUMER_CONFIG = {"fetch.wait.max.ms": 500, "queued.min.messages": 50_000,
                             "queued.max.messages.kbytes": 8 * 1024, "max.partition.fetch.bytes": 4 * 1024 * 1024,
                             "fetch.queue.backoff.ms": 100}


class _ConsumerPool:
    """This process' reading consumers, one per (consumer configuration, topic, partition), shared by every
    instance of the reading DoFns: a partition's next read continues on the consumer, and the records it has
    prefetched, of the read before, whichever DoFn instance it comes to.

    Why a pool and not a cache per DoFn instance: the SDK worker runs up to as many bundles of a stage at once as
    the runner sends (Prism: 8), each on its own instance of the stage's DoFns, and a streaming partition's
    successive reads (its residuals) go to whichever instance is free. With a cache per instance, a 300k-record
    backlog on 4 partitions opened 14 consumers: each one left behind in an instance kept its prefetch queue full
    (~30 MB of RSS, STREAMING_CONSUMER_CONFIG), and a partition coming back to an instance re-assigned its old
    consumer, dropping that queue and fetching it again (benchmarks/README.md, the backlog).

    A read takes its partition's consumer out of the pool (``take``) and gives it back when it returns
    (``give_back``), so two reads never share one; a second read of the same partition at the same time (a
    bounded read's split) opens a consumer of its own, closed when it is given back if the pool has one already.
    Each configuration keeps at most ``limit`` idle consumers (least recently used closed first), and its last
    DoFn instance's teardown (``leave``) closes them. An entry is ``[consumer, next offset it will return, known
    to be at the end, next idle deferral (s), [since, warned] while its reads find neither records nor the end]``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        # config key -> (topic, partition) -> entry
        self._idle: dict[tuple, collections.OrderedDict[tuple[str, int], list]] = {}
        self._users: collections.Counter = collections.Counter()  # config key -> DoFn instances set up

    def join(self, config_key: tuple) -> None:
        with self._lock:
            self._users[config_key] += 1
            self._idle.setdefault(config_key, collections.OrderedDict())

    def leave(self, config_key: tuple) -> None:
        """One DoFn instance of ``config_key`` is torn down; the last one closes the idle consumers."""
        with self._lock:
            self._users[config_key] -= 1
            if self._users[config_key] > 0:
                return
            del self._users[config_key]
            idle = self._idle.pop(config_key, None)
        for entry in (idle or {}).values():
            entry[0].close()

    def take(self, config_key: tuple, topic: str, partition: int) -> list | None:
        with self._lock:
            return self._idle.setdefault(config_key, collections.OrderedDict()).pop((topic, partition), None)

    def peek(self, config_key: tuple, topic: str, partition: int) -> list | None:
        """The idle entry of a partition, left in the pool (for tests)."""
        with self._lock:
            idle = self._idle.get(config_key)
            return None if idle is None else idle.get((topic, partition))

    def give_back(self, config_key: tuple, topic: str, partition: int, entry: list, limit: int) -> None:
        closing = []
        with self._lock:
            idle = self._idle.setdefault(config_key, collections.OrderedDict())
            if (topic, partition) in idle:
                closing.append(entry)  # a concurrent read's consumer is there already
            else:
                idle[(topic, partition)] = entry
            while len(idle) > limit:
                closing.append(idle.popitem(last=False)[1])
        for evicted in closing:
            evicted[0].close()


_CONSUMERS = _ConsumerPool()


class KafkaPartition(NamedTuple):
    """The element the reading SDF gets: one partition, where its reading starts and, for a bounded read,
    where it ends (``MAX_OFFSET``: it does not)."""

    topic: str
    partition: int
    start_offset: int
    end_offset: int = MAX_OFFSET


# A streaming read's residuals (partition, offset range, watermark) live in the runner's state, a Flink
# checkpoint or savepoint: their coders write explicit fields, with no Python class or module path in the
# bytes (a pickle would name them, and moving a class would break a restore).
_PARTITION_FIELDS = TupleCoder([StrUtf8Coder(), VarIntCoder(), VarIntCoder(), VarIntCoder()])
_RANGE_FIELDS = TupleCoder([VarIntCoder(), VarIntCoder()])


class KafkaPartitionCoder(Coder):
    """``KafkaPartition`` as (topic, partition, start offset, end offset)."""

    def encode(self, value: KafkaPartition) -> bytes:
        return _PARTITION_FIELDS.encode(tuple(value))

    def decode(self, encoded: bytes) -> KafkaPartition:
        return KafkaPartition(*_PARTITION_FIELDS.decode(encoded))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return KafkaPartition


class OffsetRangeCoder(Coder):
    """A restriction, ``OffsetRange``, as (start, stop)."""

    def encode(self, value: OffsetRange) -> bytes:
        return _RANGE_FIELDS.encode((value.start, value.stop))

    def decode(self, encoded: bytes) -> OffsetRange:
        return OffsetRange(*_RANGE_FIELDS.decode(encoded))

    def is_deterministic(self) -> bool:
        return True


beam.coders.registry.register_coder(KafkaPartition, KafkaPartitionCoder)


class KafkaBatch(list):
    """The element of a batched read (``batch_size``): a list of ``KafkaRecord`` of one partition."""

    def __reduce__(self):
        return KafkaBatch, (list(self),)


class KafkaBatchCoder(Coder):
    """A ``KafkaBatch`` as one pickle of plain tuples (str, int, bytes: no class or module path in the bytes).

    Cheaper than Beam's default for a list (``FastPrimitivesCoder`` pickles every ``KafkaRecord`` on its
    own) and, above all, its ``estimate_size`` is O(1): runners sample the size of elements, and the
    default would encode a whole batch just to measure it. Not deterministic: never a key.
    """

    def encode(self, value: KafkaBatch) -> bytes:
        return pickle.dumps(list(map(tuple, value)), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> KafkaBatch:
        return KafkaBatch(map(_as_record, pickle.loads(encoded)))

    def estimate_size(self, value: KafkaBatch) -> int:
        if not value:
            return 8
        first = value[0]
        return 8 + len(value) * (32 + len(first.key or b"") + len(first.value or b""))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return KafkaBatch


beam.coders.registry.register_coder(KafkaBatch, KafkaBatchCoder)


class PartitionEnd(NamedTuple):
    """Claimed instead of an offset when a bounded read reaches the end of its partition at ``offset``."""

    offset: int


class KafkaOffsetTracker(RestrictionTracker):
    """Offset-range tracker for a partition whose end is not known in advance.

    A stock ``OffsetRestrictionTracker`` does the claiming, splitting and done-checking, used through its
    public methods only; this tracker adds what a Kafka partition needs:

    - ``try_claim(PartitionEnd(e))`` ends the restriction at ``e`` (bounded reads at partition EOF): the
      range becomes ``[start, e)``, fully claimed, with nothing left to split off; it returns False.
    - A restriction open to ``MAX_OFFSET`` only splits as a checkpoint (fraction 0): splitting an unknown
      remainder by fraction would create residuals beyond the end of the partition.
    - ``is_bounded`` says whether the read is bounded (bounded mode) or unbounded (streaming).
    """

    def __init__(self, offset_range: OffsetRange, bounded: bool = True):
        self._offsets = OffsetRestrictionTracker(offset_range)
        self._bounded = bounded
        self._last_attempt: int | None = None  # the last offset passed to try_claim, claimed or not

    def try_claim(self, position) -> bool:
        if isinstance(position, PartitionEnd):
            self._end_at(position.offset)
            return False
        claimed = self._offsets.try_claim(position)  # raises unless positions strictly increase
        self._last_attempt = position
        return claimed

    def _end_at(self, end: int) -> None:
        """The partition ends at ``end``: the restriction becomes ``[start, end)`` with all of it claimed."""
        start, stop = self._offsets.start_position(), self._offsets.stop_position()
        end = min(max(end, start), stop)
        if self._last_attempt is not None and end <= self._last_attempt:
            end = min(self._last_attempt + 1, stop)  # never below what was already attempted
        self._offsets = OffsetRestrictionTracker(OffsetRange(start, end))
        if end > start:
            # Offsets up to the end are read or are not records (transaction markers, aborted records):
            # claiming the last one leaves nothing unclaimed (check_done holds) and nothing to split off.
            self._offsets.try_claim(end - 1)
            self._last_attempt = end - 1

    def current_restriction(self) -> OffsetRange:
        return self._offsets.current_restriction()

    def check_done(self) -> None:
        self._offsets.check_done()

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0 and self._offsets.stop_position() == MAX_OFFSET:
            return None
        return self._offsets.try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        start, stop = self._offsets.start_position(), self._offsets.stop_position()
        if stop != MAX_OFFSET:
            return self._offsets.current_progress()
        done = 0 if self._last_attempt is None else self._last_attempt + 1 - start
        # The remainder of an open partition is unknown; report one unit so the runner sees work left.
        return RestrictionProgress(completed=max(done, 0), remaining=1)

    def is_bounded(self) -> bool:
        return self._bounded


class _PartitionRestrictionProvider(RestrictionProvider):
    def __init__(self, bounded: bool):
        self._bounded = bounded

    def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
        return OffsetRange(element.start_offset, max(element.end_offset, element.start_offset))

    def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
        return KafkaOffsetTracker(restriction, self._bounded)

    def restriction_coder(self) -> Coder:
        return OffsetRangeCoder()

    def restriction_size(self, element, restriction: OffsetRange):
        # Open restrictions have an unknown size; any positive number marks them as work to do.
        return 1 if restriction.stop == MAX_OFFSET else max(restriction.size(), 0)


class _KafkaWatermarkEstimatorProvider(WatermarkEstimatorProvider):
    """Beam's ``ManualWatermarkEstimator``, starting at ``MIN_TIMESTAMP``. The reading DoFn sets it: to the
    latest element timestamp less ``out_of_order_slack`` after each batch, and to ``now -
    idle_watermark_delay`` while the partition is caught up (records produced later carry a time after
    that), so an idle partition does not hold the watermark for ever. It never moves back."""

    def initial_estimator_state(self, element, restriction) -> Timestamp:
        return MIN_TIMESTAMP

    def create_watermark_estimator(self, estimator_state) -> ManualWatermarkEstimator:
        return ManualWatermarkEstimator(estimator_state if estimator_state is not None else MIN_TIMESTAMP)

    def estimator_state_coder(self) -> Coder:
        return TimestampCoder()


class _ResolvePartitionsFn(beam.DoFn):
    """topic -> one KafkaPartition per partition, with the start offset (and a bounded read's end offset)
    resolved now, at run time.

    Start offsets are clamped to the partition's records: below the log start (records removed by
    retention) reads from the log start; in bounded mode an offset past the end reads nothing (a fetch
    past the end is an out-of-range error that ``auto.offset.reset`` would turn into a re-read).
    """

    def __init__(self, bootstrap_servers, start: StartPosition, group_id, consumer_config, bounded: bool):
        self._bootstrap = bootstrap_servers
        self._start = start
        self._group_id = group_id
        self._consumer_config = {k: v for k, v in (consumer_config or {}).items() if k != "group.id"}
        self._bounded = bounded

    def process(self, topic: str) -> Iterable[KafkaPartition]:
        with PartitionReader(self._bootstrap, self._group_id, self._consumer_config) as reader:
            for partition in reader.partitions(topic):
                low, end = reader.watermarks(topic, partition)  # one look-up for both (a broker round trip)
                offset = max(resolve_start_offset(reader, topic, partition, self._start, (low, end)), low)
                if self._bounded:
                    offset = min(offset, end)
                else:
                    end = MAX_OFFSET
                _LOG.info("ReadFromKafka: %s/%d starts at offset %d (%s)%s", topic, partition, offset,
                          self._start.kind, "" if end == MAX_OFFSET else f", ends at {end}")
                yield KafkaPartition(topic, partition, offset, end)


class _ReadPartitionFnBase(beam.DoFn):
    """Reads one partition's offset range; the bounded/unbounded subclasses only differ in signature."""

    BOUNDED = True

    def __init__(self, bootstrap_servers: str, consumer_config: dict | None, group_id: str | None,
                 commit_offsets: bool, timestamp_fn: Callable[[KafkaRecord], float] | None,
                 batch_size: int | None, poll_timeout: float = 0.1, eof_timeout: float = 120.0,
                 max_read_seconds: float = 1.0, idle_poll_interval: float = 0.5, idle_watermark_delay: float = 2.0,
                 max_cached_consumers: int = 16, out_of_order_slack: float = 0.0,
                 idle_poll_max_interval: float | None = None, caught_up_delay: float = CAUGHT_UP_DELAY):
        self._bootstrap = bootstrap_servers
        self._consumer_config = dict(consumer_config or {})
        self._group_id = group_id
        self._commit_offsets = bool(commit_offsets and group_id)
        self._timestamp_fn = timestamp_fn
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._eof_timeout = eof_timeout
        self._max_read_seconds = max_read_seconds
        self._idle_poll_interval = idle_poll_interval
        self._idle_poll_max_interval = idle_poll_max_interval or idle_poll_interval  # ReadFromKafka: >= interval
        self._idle_watermark_delay = idle_watermark_delay
        self._caught_up_delay = caught_up_delay
        self._out_of_order_slack = Duration.of(out_of_order_slack)
        self._max_cached_consumers = max_cached_consumers
        self._fetch_count = max(10_000, batch_size or 0)
        self._records = Metrics.counter(*RECORDS)
        self._elements = Metrics.counter("ReadFromKafka", "elements")
        self._commits = Metrics.counter("ReadFromKafka", "offset_commits")
        self._broker_unavailable = Metrics.counter("ReadFromKafka", "transient_errors")
        self._idle_resumptions = Metrics.counter(*IDLE_RESUMPTIONS)
        self._consumers_opened = Metrics.counter(*CONSUMERS_OPENED)
        self._no_end_deferrals = Metrics.counter(*NO_END_DEFERRALS)

    # -- lifecycle ------------------------------------------------------------------------------------
    def setup(self):
        # The consumers live in the process' pool (_ConsumerPool), under this configuration: a consumer keeps its
        # prefetched data between the calls that continue the same partition (checkpoints in unbounded mode),
        # whichever instance makes them, and the idle back-off its state: in another process a partition starts
        # again at the short interval.
        self._config = {**DEFAULT_CONSUMER_CONFIG, **({} if self.BOUNDED else STREAMING_CONSUMER_CONFIG),
                        "bootstrap.servers": self._bootstrap,
                        "group.id": self._group_id or "orderflow-reader", **self._consumer_config}
        # (Values by repr: a callback, e.g. an oauth_cb, is a new object in each unpickled instance, so a
        # configuration with one is not shared: per instance, as before the pool.)
        self._config_key = (self.BOUNDED, *sorted((k, repr(v)) for k, v in self._config.items()))
        _CONSUMERS.join(self._config_key)
        self._committer = None
        self._committed: dict[tuple[str, int], int] = {}

    def teardown(self):
        if getattr(self, "_config_key", None) is not None:
            _CONSUMERS.leave(self._config_key)
            self._config_key = None
        if getattr(self, "_committer", None) is not None:
            self._committer.close()
            self._committer = None

    def _take_consumer(self, topic: str, partition: int, offset: int) -> list:
        """The pool's entry of the partition (opened now when it has none), its consumer at ``offset``."""
        entry = _CONSUMERS.take(self._config_key, topic, partition)
        if entry is not None:
            if entry[1] != offset:
                entry[0].assign([TopicPartition(topic, partition, offset)])
                entry[1:] = offset, False, self._idle_poll_interval, None
            return entry
        consumer = Consumer(self._config)
        self._consumers_opened.inc()
        consumer.assign([TopicPartition(topic, partition, offset)])
        return [consumer, offset, False, self._idle_poll_interval, None]

    def _peek_consumer(self, topic: str, partition: int) -> list | None:
        """The pool's idle entry of a partition (for tests)."""
        return _CONSUMERS.peek(self._config_key, topic, partition)

    @staticmethod
    def _release(cache_entry: list) -> None:
        """Closes the consumer of a partition a bounded read has finished (it goes back to no pool): its prefetch
        queue and buffers (librdkafka's, outside Python's heap: ~100+ MB with a deep queue) are not held to the
        end of the run."""
        cache_entry[0].close()
        cache_entry[0] = None

    # -- offset commits on bundle finalization ---------------------------------------------------------
    def _commit(self, topic: str, partition: int, next_offset: int) -> None:
        key = (topic, partition)
        if next_offset <= self._committed.get(key, -1):
            return
        try:
            if self._committer is None:
                self._committer = Consumer({"bootstrap.servers": self._bootstrap, "group.id": self._group_id,
                                            "enable.auto.commit": False,
                                            **{k: v for k, v in self._consumer_config.items()
                                               if k.startswith(("security.", "sasl.", "ssl."))}})
            self._committer.commit(offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False)
            self._committed[key] = next_offset
            _DRAIN.committed((self._group_id or "", topic, partition), next_offset)
            self._commits.inc()
        except KafkaException as exc:
            # At-least-once: a failed commit only means a rerun reads these records again.
            _LOG.warning("ReadFromKafka: committing %s/%d@%d for group %s failed: %s",
                         topic, partition, next_offset, self._group_id, exc)

    def _commit_if_any(self, topic: str, partition: int, next_offset: int | None) -> None:
        if next_offset is not None:
            self._commit(topic, partition, next_offset)

    # -- reading ----------------------------------------------------------------------------------------
    @staticmethod
    def _to_records(topic: str, partition: int, messages: list) -> list[KafkaRecord]:
        """The records of ``messages``, which it empties: each Message is freed as soon as its record exists.

        Why: both are objects the garbage collector tracks; holding a whole batch of each doubles what it
        counts as new, and so how often it runs, and the Messages that a collection finds alive move to the
        old generation, whose full collections scan every object of the process (Beam's modules and graph
        included). Freeing as we go keeps the collector's work that of the plain consume loop
        (benchmarks/kafka_read.py).
        """
        new, cls = _new_record, KafkaRecord
        records: list[KafkaRecord] = []
        append = records.append
        messages.reverse()
        pop = messages.pop
        for _ in range(len(messages)):
            m = pop()
            headers = m.headers()
            append(new(cls, (topic, partition, m.offset(), m.key(), m.value(), m.timestamp()[1],
                             tuple(headers) if headers else ())))
        return records

    def _emit(self, records: list[KafkaRecord]) -> list[TimestampedValue]:
        """Timestamped elements for ``records`` (all claimed): one per record, or ``KafkaBatch``es of up to
        ``batch_size``."""
        timestamp_fn = self._timestamp_fn
        batch_size = self._batch_size
        if batch_size:
            out = []
            for i in range(0, len(records), batch_size):
                chunk = records[i:i + batch_size]
                if timestamp_fn is None:
                    ts = Timestamp(micros=min(map(_timestamp_ms, chunk)) * 1000)
                else:
                    ts = Timestamp.of(min(timestamp_fn(r) for r in chunk))
                out.append(TimestampedValue(KafkaBatch(chunk), ts))
            return out
        if timestamp_fn is None:
            return [TimestampedValue(r, Timestamp(micros=r.timestamp_ms * 1000)) for r in records]
        return [TimestampedValue(r, Timestamp.of(timestamp_fn(r))) for r in records]

    def _output(self, records: list[KafkaRecord], watermark_estimator):
        """Emits ``records``; then, streaming, moves the watermark to the latest element timestamp less the
        out-of-order slack (a later record timestamped before that is late)."""
        elements = self._emit(records)
        yield from elements
        self._records.inc(len(records))
        if watermark_estimator is not None and elements:
            _advance_watermark(watermark_estimator, max(e.timestamp for e in elements) - self._out_of_order_slack)

    def _read(self, part: KafkaPartition, tracker, watermark_estimator, bundle_finalizer):
        """Reads ``part`` from its restriction's start: to its end (bounded) or until it hands the rest back
        (streaming); either way registers the commit of what was read for when the bundle is finalized."""
        topic, partition = part.topic, part.partition
        cursor = _Cursor(tracker.current_restriction().start)
        cache_entry = self._take_consumer(topic, partition, cursor.offset)
        consumer = cache_entry[0]
        bounded = self.BOUNDED
        if not bounded:
            _DRAIN.enter()
        try:
            if bounded:
                yield from self._read_to_end(part, consumer, cache_entry, cursor, tracker)
            else:
                yield from self._read_streaming(part, consumer, cache_entry, cursor, tracker, watermark_estimator)
        finally:
            next_offset = cursor.offset
            # The consumer is reused at next_offset only if it returns that offset next: a read stopped by a split
            # (or an error) after a poll has taken records past it, and reusing the consumer would skip them (and
            # the partition's end event among them). Any other offset makes the next read re-assign it.
            cache_entry[1] = next_offset if cursor.fetched <= next_offset else -1
            if self._commit_offsets:
                # Registered even when there is nothing to commit: Prism sends FinalizeBundle after every
                # bundle of a stage that can request finalization, and the SDK harness logs an error for a
                # bundle that registered no callback (see docs/runners.md).
                committed = next_offset if next_offset > part.start_offset else None
                if committed is not None and not bounded:
                    _DRAIN.read((self._group_id or "", topic, partition), committed)
                bundle_finalizer.register(lambda: self._commit_if_any(topic, partition, committed))
            if cache_entry[0] is not None:  # (a bounded read that finished its partition closed it)
                _CONSUMERS.give_back(self._config_key, topic, partition, cache_entry, self._max_cached_consumers)
            if not bounded:
                _DRAIN.leave()

    def _read_to_end(self, part: KafkaPartition, consumer, cache_entry: list, cursor: _Cursor, tracker):
        """Bounded: reads until the restriction's end or the partition's end, whichever comes first."""
        topic, partition = part.topic, part.partition
        last_data = time.monotonic()
        while True:
            stop = tracker.current_restriction().stop
            if cursor.offset >= stop:
                self._release(cache_entry)
                return  # the whole range is read (its last offset was claimed)
            # consume() waits its whole timeout for a count that it cannot fill: at the end of every
            # partition, 0.1 s, unless we ask for no more than the range holds.
            messages, end_offset, _ = self._poll(consumer, topic, partition, cursor.offset,
                                                 min(self._fetch_count, stop - cursor.offset))
            got_records = bool(messages)  # (claiming empties the list)
            if got_records:
                last_data = time.monotonic()
                if not (yield from self._claim_and_output(messages, part, cache_entry, cursor, tracker, None)):
                    return
            if end_offset is not None:
                # An end below our position means we started past the end: nothing is left.
                tracker.try_claim(PartitionEnd(max(end_offset, cursor.offset)))
                self._release(cache_entry)
                return
            if not got_records and time.monotonic() - last_data > self._eof_timeout:
                raise TimeoutError(
                    f"ReadFromKafka: no data and no partition end from {topic}/{partition} at offset "
                    f"{cursor.offset} for {self._eof_timeout}s (is the broker up and enable.partition.eof on?)")

    def _read_streaming(self, part: KafkaPartition, consumer, cache_entry: list, cursor: _Cursor, tracker,
                        watermark_estimator):
        """Unbounded: reads until caught up, idle, draining or ``max_read_seconds``, then hands the rest of the
        restriction back to the runner (``defer_remainder``)."""
        topic, partition = part.topic, part.partition
        started = last_data = time.monotonic()
        # The consumer has kept fetching in the background since the partition was handed back, so what arrived
        # meanwhile is in its queue already: the first look takes it without waiting. An idle partition's call then
        # ends within milliseconds, before the runner's first progress request (our Prism asks every 1 s, stock
        # Prism every 100 ms, and tries to split a bundle that made no progress); a trickle's call hands back what
        # was queued at once. Waiting there (poll_timeout, 0.1 s) cost every resumption of a trickle the whole wait,
        # and Prism runs the reads of a stage's partitions that come back together one after another in one bundle:
        # 4 partitions, a record waited up to ~0.45 s for its partition's turn (benchmarks/README.md, orders latency
        # at a trickle).
        wait: float | None = 0.0
        read_any = False
        while True:
            if _DRAIN.requested.is_set():
                # Stopping: claim nothing more; what was read finishes and is committed.
                tracker.defer_remainder(Duration.of(self._idle_poll_interval))
                return
            # After the first look, a poll waits for no more records than the partition holds beyond this read
            # (its cached high watermark): consume() waits its whole timeout for a count it cannot fill, so asking
            # a trickle for a batch of 10,000 held every such poll for poll_timeout. Behind, it asks for a batch.
            messages, end_offset, queue_ran_dry = self._poll(
                consumer, topic, partition, cursor.offset, self._fetch_count, wait,
                wait_for=None if wait == 0.0 else _held(consumer, topic, partition, cursor.offset))
            wait = None
            got_records = bool(messages)  # (claiming empties the list)
            if got_records:
                last_data = time.monotonic()
                if not (yield from self._claim_and_output(messages, part, cache_entry, cursor, tracker,
                                                          watermark_estimator)):
                    return
            # EOF is reported once per catching up, so "at the end" is remembered with the consumer (a
            # resumed call that finds no new data is still at the end).
            if end_offset is not None and end_offset >= cursor.offset:
                cache_entry[2] = True
            elif got_records:
                cache_entry[2] = False
            if end_offset is not None or got_records:
                cache_entry[4] = None
            if got_records:
                cache_entry[3] = self._idle_poll_interval  # records again: back to the short interval
            if cache_entry[2]:
                # Caught up: the partition is idle, let its watermark follow the wall clock.
                _advance_watermark(watermark_estimator, Timestamp.now() - Duration.of(self._idle_watermark_delay))
                if not got_records:
                    tracker.defer_remainder(Duration.of(_until_next_tick(self._idle_deferral(cache_entry))))
                    return
            elif not got_records and time.monotonic() - last_data > self._idle_poll_interval:
                # No data and no EOF yet (a slow broker): retry soon, without moving the watermark.
                self._note_no_end(cache_entry, topic, partition, cursor.offset)
                tracker.defer_remainder(Duration.of(self._idle_poll_interval))
                return
            read_any = read_any or got_records
            caught_up = queue_ran_dry and read_any and self._caught_up(consumer, topic, partition, cursor.offset)
            if caught_up or time.monotonic() - started > self._max_read_seconds:
                # Hand the rest back: caught up, what was read goes downstream now (a trickle is not held
                # for max_read_seconds, the runner's bundle ends); behind, after max_read_seconds, so a
                # backlog is read in large bundles. A call that has read nothing yet and has not heard of
                # the partition's end polls on instead: handing back at once would make a bundle of nothing
                # per poll until the end event comes (it comes with an empty fetch, STREAMING_CONSUMER_CONFIG).
                # Caught up, it is read again after caught_up_delay (CAUGHT_UP_DELAY), the records that arrive
                # meanwhile together; behind, at once.
                # (None, not a delay of 0, which the tracker would count down below 0.)
                tracker.defer_remainder(Duration.of(_until_next_tick(self._caught_up_delay))
                                        if caught_up and self._caught_up_delay > 0 else None)
                return

    def _note_no_end(self, cache_entry: list, topic: str, partition: int, offset: int) -> None:
        """Counts a resumption that found neither records nor the partition's end (``ReadFromKafka/
        no_end_deferrals``), and logs once when that has lasted ``NO_END_WARNING_SECONDS``: the partition's watermark
        is held meanwhile, and with it every window downstream. Timed with the partition's consumer (the pool's
        entry), which every DoFn instance's reads of the partition share."""
        self._no_end_deferrals.inc()
        now = time.monotonic()
        if cache_entry[4] is None:
            cache_entry[4] = [now, False]
        since = cache_entry[4]
        if not since[1] and now - since[0] >= NO_END_WARNING_SECONDS:
            since[1] = True
            _LOG.warning("ReadFromKafka: %s/%d at offset %d: neither records nor the partition's end for %.0fs: its "
                         "watermark is held (is the broker reachable?)", topic, partition, offset, now - since[0])

    @staticmethod
    def _caught_up(consumer, topic: str, partition: int, offset: int) -> bool:
        """Whether ``offset`` is at the partition's end as of the consumer's last fetch (its cached high watermark: no
        round trip). A poll that returned fewer records than asked may only mean the prefetch queue had not refilled
        yet: behind, a read that handed back then made a bundle of a few thousand records instead of a slice, and a
        backlog's drain rate depended on how fast the fetches kept up (a 1M backlog: 0.64-0.94x of the bounded
        rate from run to run, issue 26). Unknown (no fetch answered yet) counts as caught up."""
        high = _cached_high(consumer, topic, partition)
        return high < 0 or offset >= high

    def _idle_deferral(self, cache_entry: list) -> float:
        """How long an idle partition waits before it is resumed: ``idle_poll_interval`` the first time, then
        twice as long each time it is still idle, up to ``idle_poll_max_interval``. A record arriving meanwhile
        waits for the resumption, so the cap bounds the latency the back-off adds after a quiet spell."""
        self._idle_resumptions.inc()
        delay = cache_entry[3]
        cache_entry[3] = min(delay * 2, self._idle_poll_max_interval)
        return delay

    def _poll(self, consumer, topic: str, partition: int, offset: int, want: int,
              timeout: float | None = None, wait_for: int | None = None) -> tuple[list, int | None, bool]:
        """One ``consume()`` of up to ``want`` messages (waiting up to ``timeout``, default ``poll_timeout``): those at or after ``offset`` without error, the
        partition end it reported (None if none), and whether the prefetch queue ran dry (fewer than
        ``want``: this read has caught up with what the broker has sent; a backlog fills every call).
        With ``wait_for`` below ``want``, it waits only until that many messages are queued, then takes whatever
        else is queued without waiting.
        A transient broker error is counted and skipped (the consumer reconnects by itself); any other raises."""
        timeout = self._poll_timeout if timeout is None else timeout
        if wait_for is not None and wait_for < want:
            messages = consumer.consume(wait_for, timeout)
            if len(messages) >= wait_for:
                messages += consumer.consume(want - len(messages), 0)
        else:
            messages = consumer.consume(want, timeout)
        queue_ran_dry = len(messages) < want
        end_offset = None
        if not messages:
            return messages, end_offset, queue_ran_dry
        # Errors are rare: one pass to find them, the common case keeps the list as is.
        errors = [m for m in messages if m.error() is not None]
        for m in errors:
            error = m.error()
            if error.code() == _PARTITION_EOF:
                end_offset = m.offset()
            elif not is_transient(KafkaException(error)):
                raise KafkaException(error)
            else:
                # The broker is unreachable or moving (orderflow.io.retry): keep polling, the position is unchanged.
                self._broker_unavailable.inc()
                _LOG.warning("ReadFromKafka: %s/%d at offset %d: %s (retrying)", topic, partition, offset, error)
        if errors:
            messages = [m for m in messages if m.error() is None]
        if messages and messages[0].offset() < offset:
            # Stale prefetch (or an offset reset): records before the restriction are not ours.
            messages = [m for m in messages if m.offset() >= offset]
        return messages, end_offset, queue_ran_dry

    def _claim_and_output(self, messages: list, part: KafkaPartition, cache_entry: list, cursor: _Cursor, tracker,
                          watermark_estimator):
        """Claims ``messages`` (emptied) and emits them as records, advancing ``cursor``; returns False when a
        split moved the restriction's end below them: only what is still ours was emitted, the read stops."""
        records = self._to_records(part.topic, part.partition, messages)
        cursor.fetched = records[-1].offset + 1
        if not tracker.try_claim(records[-1].offset):
            stop = tracker.current_restriction().stop
            records = [r for r in records if r.offset < stop]
            yield from self._output(records, watermark_estimator)
            if records:
                cursor.offset = records[-1].offset + 1
            return False
        yield from self._output(records, watermark_estimator)
        cursor.offset = cache_entry[1] = records[-1].offset + 1
        return True


class _Cursor:
    """The next offset a read of one partition claims (``offset``) and the next one its consumer returns
    (``fetched``: past ``offset`` when a read stopped with records polled but not emitted): shared by the read's
    loop and its ``finally``, which commits up to ``offset``."""

    __slots__ = ("offset", "fetched")

    def __init__(self, offset: int):
        self.offset = offset
        self.fetched = offset


def _until_next_tick(period: float) -> float:
    """Seconds from now to the next multiple of ``period`` on the wall clock, in (0, period]: the partitions that wait
    the same period resume at the same instants, which a runner can serve with one bundle for all of them instead
    of one each (Prism does with dev/prism/release-due-residuals-together.patch; an idle pipeline's CPU is mostly
    per bundle: benchmarks/README.md, the cost of idling)."""
    return period - time.time() % period


def _held(consumer, topic: str, partition: int, offset: int) -> int | None:
    """How many records a streaming read's next poll waits for at most: those the partition holds from ``offset`` on
    as of the consumer's last fetch (its cached high watermark; offsets of transaction markers count too), at least
    one (caught up: the next one to arrive); None while no fetch has answered (unknown: a whole batch)."""
    high = _cached_high(consumer, topic, partition)
    return None if high < 0 else max(1, high - offset)


def _cached_high(consumer, topic: str, partition: int) -> int:
    """The partition's high watermark as of the consumer's last fetch (no round trip); negative before any."""
    return consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]


def _advance_watermark(estimator: ManualWatermarkEstimator, timestamp: Timestamp) -> None:
    """Sets the watermark to ``timestamp`` unless it is already there or later (it never goes back)."""
    current = estimator.current_watermark()
    if current is None or timestamp > current:
        estimator.set_watermark(timestamp)


# DoFn parameter markers (module-level singletons: Beam reads them from process()'s defaults).
_BOUNDED_RESTRICTION = beam.DoFn.RestrictionParam(_PartitionRestrictionProvider(bounded=True))
_UNBOUNDED_RESTRICTION = beam.DoFn.RestrictionParam(_PartitionRestrictionProvider(bounded=False))
_WATERMARK_ESTIMATOR = beam.DoFn.WatermarkEstimatorParam(_KafkaWatermarkEstimatorProvider())


class _ReadBoundedPartitionFn(_ReadPartitionFnBase):
    BOUNDED = True

    # The runner passes the tracker (and watermark estimator) by keyword: they must come last.
    def process(self, part: KafkaPartition, bundle_finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=_BOUNDED_RESTRICTION):
        yield from self._read(part, tracker, None, bundle_finalizer)


class _ReadUnboundedPartitionFn(_ReadPartitionFnBase):
    BOUNDED = False

    @beam.DoFn.unbounded_per_element()
    def process(self, part: KafkaPartition, bundle_finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=_UNBOUNDED_RESTRICTION, watermark_estimator=_WATERMARK_ESTIMATOR):
        yield from self._read(part, tracker, watermark_estimator, bundle_finalizer)


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics into a PCollection of ``KafkaRecord`` (or of ``KafkaBatch``, a list of them).

    Args:
      bootstrap_servers: Kafka bootstrap servers.
      topics: a topic name or a list of them; every partition of each is read.
      start: a ``StartPosition``; default: the group's committed offsets (earliest where none) when
        ``group_id`` is set, else earliest.
      bounded: True = read every partition up to its end at the time of reading, then finish (batch);
        False = keep reading (streaming), checkpointing when caught up.
      group_id: consumer group for committed offsets; processed offsets are committed to it when the
        runner finalizes a bundle, if ``commit_offsets``.
      consumer_config: extra librdkafka consumer settings (override the throughput defaults).
      timestamp_fn: ``record -> epoch seconds`` for the element timestamp; default the record timestamp.
      batch_size: emit a ``KafkaBatch`` (a ``list`` of ``KafkaRecord``) of up to this many records of one
        partition per element (element timestamp = the batch's earliest) instead of one element per record:
        the fast path.
      poll_timeout / max_read_seconds / idle_poll_interval / idle_watermark_delay: streaming knobs
        (seconds): poll wait (a resumed call first takes what its consumer has fetched meanwhile without
        waiting; a later poll waits up to this for the records the partition holds, or for the next one
        when caught up), how long one call reads at most before it checkpoints (it checkpoints
        sooner once a poll returns fewer records than asked for: caught up, so a trickle reaches the
        sinks without waiting for this), how long an idle partition first waits before polling again, and
        how far behind the wall clock an idle partition's watermark is.
      idle_poll_max_interval: streaming (seconds): while a partition stays idle its wait doubles from
        ``idle_poll_interval`` up to this (each resumption is a bundle through the runner: the idle cost);
        its first record brings the short interval back. A record after a quiet spell waits up to this long
        before it is read, and an idle partition's watermark moves this seldom. ``idle_poll_interval`` (or
        less) turns the back-off off.
      caught_up_delay: streaming (seconds): a partition whose read caught up is read again after this, the records
        that arrive meanwhile together. A record waits up to this long more; each resumption is a bundle through
        the runner with the sinks' work per batch, so 0 (read again at once) reads a trickle in back-to-back
        bundles of a few records: about the same latency for ~1.3x the CPU of the default.
      out_of_order_slack: streaming (seconds): a partition's watermark is its latest element timestamp
        less this, so records up to this much older than the latest one read are still on time; later
        ones are late data (kept or dropped by the windowing's allowed lateness). Default 0: records of
        a partition are expected in timestamp order.
    """

    def __init__(self, bootstrap_servers: str, topics: str | Iterable[str], *, start: StartPosition | None = None,
                 bounded: bool = False, group_id: str | None = None, commit_offsets: bool = True,
                 consumer_config: dict | None = None, timestamp_fn: Callable[[KafkaRecord], float] | None = None,
                 batch_size: int | None = None, poll_timeout: float = 0.1, max_read_seconds: float = 1.0,
                 idle_poll_interval: float = 0.5, idle_watermark_delay: float = 2.0, out_of_order_slack: float = 0.0,
                 idle_poll_max_interval: float = IDLE_POLL_MAX_INTERVAL, caught_up_delay: float = CAUGHT_UP_DELAY):
        super().__init__()
        self._bootstrap = bootstrap_servers
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        if not self._topics:
            raise ValueError("ReadFromKafka needs at least one topic")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if out_of_order_slack < 0:
            raise ValueError(f"out_of_order_slack must not be negative, got {out_of_order_slack}")
        if not idle_poll_interval > 0:
            raise ValueError(f"idle_poll_interval must be positive, got {idle_poll_interval}")
        if caught_up_delay < 0:
            raise ValueError(f"caught_up_delay must not be negative, got {caught_up_delay}")
        if start is None:
            start = StartPosition.committed() if group_id else StartPosition.earliest()
        if start.kind == "committed" and not group_id:
            raise ValueError("StartPosition.committed() needs a group_id")
        self._start = start
        self._bounded = bounded
        self._group_id = group_id
        self._consumer_config = consumer_config
        self._batch_size = batch_size
        self._out_of_order_slack = out_of_order_slack
        self._idle_watermark_delay = idle_watermark_delay
        self._idle_poll_max_interval = max(idle_poll_interval, idle_poll_max_interval)
        self._caught_up_delay = caught_up_delay
        fn_class = _ReadBoundedPartitionFn if bounded else _ReadUnboundedPartitionFn
        self._read_fn = fn_class(bootstrap_servers, consumer_config, group_id, commit_offsets, timestamp_fn,
                                 batch_size, poll_timeout=poll_timeout, max_read_seconds=max_read_seconds,
                                 idle_poll_interval=idle_poll_interval, idle_watermark_delay=idle_watermark_delay,
                                 out_of_order_slack=out_of_order_slack,
                                 idle_poll_max_interval=self._idle_poll_max_interval,
                                 caught_up_delay=caught_up_delay)

    def display_data(self):
        return {
            "bootstrap_servers": DisplayDataItem(self._bootstrap, label="Kafka bootstrap servers"),
            "topics": DisplayDataItem(",".join(self._topics), label="Topics"),
            "start": DisplayDataItem(self._start.kind, label="Start position"),
            "bounded": DisplayDataItem(self._bounded, label="Bounded (read to the end, then finish)"),
            "group_id": DisplayDataItem(self._group_id, label="Consumer group").drop_if_none(),
            "batch_size": DisplayDataItem(self._batch_size, label="Records per element").drop_if_none(),
            "out_of_order_slack": DisplayDataItem(self._out_of_order_slack,
                                                  label="Out-of-order slack of the watermark (s)"),
            "idle_watermark_delay": DisplayDataItem(self._idle_watermark_delay,
                                                    label="Idle partition's watermark behind the clock (s)"),
            "idle_poll_max_interval": DisplayDataItem(self._idle_poll_max_interval,
                                                      label="Longest wait of an idle partition (s)"),
            "caught_up_delay": DisplayDataItem(self._caught_up_delay,
                                               label="Wait of a partition that caught up (s)"),
        }

    def expand(self, pbegin):
        return (
            pbegin
            | "Topics" >> beam.Create(self._topics)
            | "ResolvePartitions" >> beam.ParDo(
                _ResolvePartitionsFn(self._bootstrap, self._start, self._group_id, self._consumer_config,
                                     self._bounded)).with_output_types(KafkaPartition)
            | "SpreadPartitions" >> beam.Reshuffle()
            | "ReadPartitions" >> self._typed(beam.ParDo(self._read_fn))
        )

    def _typed(self, read: beam.ParDo) -> beam.ParDo:
        # Batches get KafkaBatchCoder (cheap to size); single records keep Beam's default coder.
        return read.with_output_types(KafkaBatch) if self._batch_size else read
