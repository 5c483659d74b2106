"""The reading SDF's restriction, split, checkpoint, residual and watermark behaviour.

Tracker tests are pure; the DoFn tests call ``process`` directly (as the SDK harness does, through the
thread-safe tracker and watermark-estimator wrappers) against the session's Kafka broker.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from confluent_kafka import TopicPartition

from orderflow.io import kafka_read
from orderflow.io.kafka_offsets import PartitionReader
from orderflow.io.kafka_read import (
    _WATERMARK_ESTIMATOR,
    CAUGHT_UP_DELAY,
    MAX_OFFSET,
    KafkaOffsetTracker,
    KafkaPartition,
    PartitionEnd,
    ReadFromKafka,
    _ReadBoundedPartitionFn,
    _ReadUnboundedPartitionFn,
)
from tests.support.kafka_testing import produce


# -- the tracker -------------------------------------------------------------------------------------------
def test_partition_end_ends_the_restriction_there_fully_claimed():
    tracker = KafkaOffsetTracker(OffsetRange(10, MAX_OFFSET))
    assert tracker.try_claim(10) and tracker.try_claim(15)
    assert tracker.try_claim(PartitionEnd(16)) is False
    assert tracker.current_restriction() == OffsetRange(10, 16)
    tracker.check_done()                      # nothing unclaimed is left
    assert tracker.try_split(0) is None       # and nothing to checkpoint
    assert tracker.try_split(0.5) is None


def test_partition_end_at_the_start_leaves_an_empty_restriction():
    tracker = KafkaOffsetTracker(OffsetRange(7, MAX_OFFSET))
    assert tracker.try_claim(PartitionEnd(7)) is False
    assert tracker.current_restriction() == OffsetRange(7, 7)
    tracker.check_done()


def test_partition_end_before_the_start_means_nothing_to_read():
    tracker = KafkaOffsetTracker(OffsetRange(100, MAX_OFFSET))
    tracker.try_claim(PartitionEnd(40))
    assert tracker.current_restriction() == OffsetRange(100, 100)
    tracker.check_done()


def test_an_open_restriction_left_unclaimed_is_not_done():
    tracker = KafkaOffsetTracker(OffsetRange(0, MAX_OFFSET))
    tracker.try_claim(3)
    with pytest.raises(ValueError, match="not done"):
        tracker.check_done()


def test_checkpoint_of_an_open_restriction_leaves_the_rest_as_residual():
    tracker = KafkaOffsetTracker(OffsetRange(0, MAX_OFFSET), bounded=False)
    assert tracker.try_claim(0) and tracker.try_claim(41)
    primary, residual = tracker.try_split(0)
    assert primary == OffsetRange(0, 42) and residual == OffsetRange(42, MAX_OFFSET)
    tracker.check_done()
    assert tracker.try_claim(42) is False     # the residual is no longer ours
    assert tracker.is_bounded() is False


def test_an_open_restriction_refuses_fractional_splits_but_a_closed_one_splits():
    open_tracker = KafkaOffsetTracker(OffsetRange(0, MAX_OFFSET))
    open_tracker.try_claim(5)
    assert open_tracker.try_split(0.5) is None
    closed = KafkaOffsetTracker(OffsetRange(0, 100))
    closed.try_claim(9)
    primary, residual = closed.try_split(0.5)
    assert primary == OffsetRange(0, 54) and residual == OffsetRange(54, 100)


def test_progress_of_an_open_restriction_reports_work_done_and_some_left():
    tracker = KafkaOffsetTracker(OffsetRange(100, MAX_OFFSET))
    tracker.try_claim(149)
    progress = tracker.current_progress()
    assert progress.completed_work == 50 and progress.remaining_work > 0


# -- the watermark estimator -------------------------------------------------------------------------------
def _new_estimator():
    """The estimator the runner creates for a new partition restriction, from the DoFn's own provider."""
    provider = _WATERMARK_ESTIMATOR.watermark_estimator_provider
    return provider.create_watermark_estimator(provider.initial_estimator_state(None, None))


def test_the_watermark_estimator_is_beams_manual_one_starting_at_the_beginning_of_time():
    estimator = _new_estimator()
    assert type(estimator) is ManualWatermarkEstimator
    assert estimator.current_watermark() == MIN_TIMESTAMP
    estimator.set_watermark(Timestamp(500))
    restored = _WATERMARK_ESTIMATOR.watermark_estimator_provider.create_watermark_estimator(
        estimator.get_estimator_state())      # a residual resumes where its watermark was
    assert restored.current_watermark() == Timestamp(500)


# -- the DoFn, called as the SDK harness calls it ------------------------------------------------------------
class _Finalizer:
    """Collects what process() registers for bundle finalization (the runner's BundleFinalizerParam)."""

    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)

    def finalize(self):
        for callback in self.callbacks:
            callback()


def _invoke(fn, part, restriction, bounded=True, estimator=None):
    threadsafe = ThreadsafeRestrictionTracker(KafkaOffsetTracker(restriction, bounded))
    finalizer = _Finalizer()
    kwargs = {"tracker": RestrictionTrackerView(threadsafe)}
    if not bounded:
        kwargs["watermark_estimator"] = estimator
    out = []
    for element in fn.process(part, finalizer, **kwargs):
        assert isinstance(element, TimestampedValue)
        if estimator is not None:
            estimator.observe_timestamp(element.timestamp)   # what the harness does with each output
        out.append(element)
    return out, threadsafe, finalizer


def _resume_until_read(fn, part, residual, estimator):
    """Resumes an idle partition's residual until a call reads something: a resumption of a partition known to be
    at its end looks at what its consumer fetched without waiting, and one right after a produce may come before
    the fetch. Returns that call's output and tracker."""
    for _ in range(50):
        out, tracker, _ = _invoke(fn, part, residual, bounded=False, estimator=estimator)
        if out:
            break
        time.sleep(0.1)
    return out, tracker


@pytest.fixture
def topic_with_records(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("sdf", partitions=1)
    produce(bootstrap, topic, [(b"k", f"v{i}".encode(), 1_700_000_000_000 + i) for i in range(100)])
    return bootstrap, topic


def _fn(cls, bootstrap, **kwargs):
    fn = cls(bootstrap, None, kwargs.pop("group_id", None), True, None, kwargs.pop("batch_size", None), **kwargs)
    fn.setup()
    return fn


def test_bounded_process_reads_to_the_end_and_leaves_no_residual(topic_with_records):
    bootstrap, topic = topic_with_records
    fn = _fn(_ReadBoundedPartitionFn, bootstrap)
    try:
        out, tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 20), OffsetRange(20, MAX_OFFSET))
    finally:
        fn.teardown()
    assert [e.value.offset for e in out] == list(range(20, 100))
    assert tracker.current_restriction() == OffsetRange(20, 100)
    tracker.check_done()
    assert tracker.deferred_status() is None


def test_bounded_process_stops_at_a_split_restriction_end(topic_with_records):
    bootstrap, topic = topic_with_records
    fn = _fn(_ReadBoundedPartitionFn, bootstrap, batch_size=7)
    try:
        out, tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 10), OffsetRange(10, 45))
    finally:
        fn.teardown()
    offsets = [r.offset for batch in out for r in batch.value]
    assert offsets == list(range(10, 45))
    assert all(len(batch.value) <= 7 for batch in out)
    tracker.check_done()


def test_unbounded_process_checkpoints_with_a_residual_and_resumes_there(topic_with_records, stack_settings):
    bootstrap, topic = topic_with_records
    group = f"g-{topic}"
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, group_id=group, idle_watermark_delay=2.0)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    try:
        before = Timestamp.now()
        out, tracker, finalizer = _invoke(fn, KafkaPartition(topic, 0, 0), OffsetRange(0, MAX_OFFSET),
                                          bounded=False, estimator=estimator)
        assert [e.value.offset for e in out] == list(range(100))
        # Caught up: the rest of the partition is deferred as the residual, starting after what was read.
        residual, delay = tracker.deferred_status()
        assert residual == OffsetRange(100, MAX_OFFSET)
        assert delay <= Duration.of(0.5)
        assert tracker.current_restriction() == OffsetRange(0, 100)
        tracker.check_done()

        # Offsets are committed only when the bundle is finalized.
        with PartitionReader(bootstrap, group) as reader:
            assert reader.committed_offset(topic, 0) is None
            finalizer.finalize()
            assert reader.committed_offset(topic, 0) == 100

        # The partition is idle: once a call finds it at its end (the first one hands back as soon as its
        # poll ran dry, maybe before the partition-end event), the watermark moves past the (old) record
        # times to about now - 2 s, and the residual waits the idle poll interval.
        for _ in range(20):
            idle_out, idle_tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 0), residual, bounded=False,
                                                estimator=estimator)
            assert idle_out == []
            assert idle_tracker.deferred_status()[0] == residual
            if estimator.current_watermark() >= before - Duration.of(3):
                break
        watermark = estimator.current_watermark()
        assert before - Duration.of(3) <= watermark <= Timestamp.now()
        assert Duration.of(0) < idle_tracker.deferred_status()[1] <= Duration.of(0.5)

        # Resuming the residual reads only what was produced since.
        produce(bootstrap, topic, [(b"k", f"late{i}".encode()) for i in range(5)])
        out2, tracker2 = _resume_until_read(fn, KafkaPartition(topic, 0, 0), residual, estimator)
        assert [(e.value.offset, e.value.value) for e in out2] == [(100 + i, f"late{i}".encode()) for i in range(5)]
        assert tracker2.deferred_status()[0] == OffsetRange(105, MAX_OFFSET)
        assert estimator.current_watermark() >= watermark
    finally:
        fn.teardown()


def test_a_read_behind_the_partition_end_goes_on_when_a_poll_runs_dry(stack_settings, make_topic):
    """A poll that returned fewer records than asked only says the prefetch queue had not refilled yet: a read still
    behind the partition's end (the consumer's cached high watermark) goes on until it catches up or reaches
    ``max_read_seconds``, so a backlog is read in slices, not a bundle per refill (issue 26: a 1M backlog's drain
    rate moved 0.64-0.94x from run to run with the refills). Here polls run dry on purpose while far behind: they wait
    2 ms for 1,000 records, and the queue holds at most ~200 of them (small fetches, ``queued.min.messages``)."""
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("sdf-behind", partitions=1)
    produce(bootstrap, topic, [(b"k", f"v{i}".encode()) for i in range(20_000)])
    slow_refill = {"queued.min.messages": 200, "fetch.queue.backoff.ms": 300, "max.partition.fetch.bytes": 16_384}
    fn = _ReadUnboundedPartitionFn(bootstrap, slow_refill, None, False, None, 1000, poll_timeout=0.002,
                                   max_read_seconds=3.0)
    fn.setup()
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    try:
        started = time.monotonic()
        out, tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 0), OffsetRange(0, MAX_OFFSET), bounded=False,
                                  estimator=estimator)
        took = time.monotonic() - started
    finally:
        fn.teardown()
    read = sum(len(batch.value) for batch in out)
    assert len(out) > 1, f"handed back after one poll ({read} records read in {took:.2f}s)"
    assert read > 1000
    # Either caught up, or the slice's time was up: the residual starts right after what was read.
    residual, _ = tracker.deferred_status()
    assert residual == OffsetRange(read, MAX_OFFSET)
    assert read == 20_000 or took >= 3.0


def test_a_read_split_by_the_runner_between_polls_loses_nothing_when_its_residual_resumes(stack_settings, make_topic):
    """A runner's checkpoint (a split at fraction 0, which Dataflow sends and the SDK harness applies between two
    claims) stops a read whose next poll has already taken records past the split: the read emits none of them, and
    the residual that resumes at the split reads them all, then finds the partition's end (its watermark moves).
    Reusing the partition's consumer where it was left skipped those records, and the end event among them held the
    watermark for good."""
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("sdf-split", partitions=1)
    RECORDS = 2_000  # noqa: N806
    # Records of 2023 (only the partition's end moves the watermark to about now), in record batches of 100 (a
    # producer each): a fetch brings one batch (max.partition.fetch.bytes), and the consumer fetches again only once
    # its queue is empty (queued.min.messages), so a read takes them in several polls.
    for first in range(0, RECORDS, 100):
        produce(bootstrap, topic, [(b"k", b"v%d" % i, 1_700_000_000_000 + i) for i in range(first, first + 100)])
    one_batch_at_a_time = {"queued.min.messages": 1, "max.partition.fetch.bytes": 1_024}
    fn = _ReadUnboundedPartitionFn(bootstrap, one_batch_at_a_time, None, False, None, 10, poll_timeout=0.002,
                                   max_read_seconds=30.0)
    fn.setup()
    part = KafkaPartition(topic, 0, 0)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    threadsafe = ThreadsafeRestrictionTracker(KafkaOffsetTracker(OffsetRange(0, MAX_OFFSET), False))
    try:
        read = fn.process(part, _Finalizer(), tracker=RestrictionTrackerView(threadsafe),
                          watermark_estimator=estimator)
        first = next(read)
        primary, residual = threadsafe.try_split(0)
        emitted = [r.offset for r in first.value] + [r.offset for batch in read for r in batch.value]
        assert emitted == list(range(primary.stop))
        assert residual == OffsetRange(primary.stop, MAX_OFFSET) and residual.start < RECORDS

        offsets = []
        for _ in range(50):
            out, tracker, _ = _invoke(fn, part, residual, bounded=False, estimator=estimator)
            offsets += [r.offset for batch in out for r in batch.value]
            residual = tracker.deferred_status()[0]
            if estimator.current_watermark() > Timestamp.now() - Duration.of(60):
                break
    finally:
        fn.teardown()
    assert offsets == list(range(primary.stop, RECORDS))
    assert estimator.current_watermark() > Timestamp.now() - Duration.of(60), "the partition's end was never seen"


def test_a_partition_that_never_reports_its_end_keeps_its_watermark_and_is_named_in_a_warning(monkeypatch, caplog):
    """No broker answers (a closed port): every resumption finds neither records nor the partition's end, hands the
    partition back without moving its watermark, and once that has lasted NO_END_WARNING_SECONDS (0 here) a warning
    names the partition: a watermark held by one partition holds every window downstream."""
    monkeypatch.setattr(kafka_read, "NO_END_WARNING_SECONDS", 0.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, idle_poll_interval=0.2)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    try:
        with caplog.at_level(logging.WARNING, logger=kafka_read.__name__):
            for _ in range(2):
                out, tracker, _ = _invoke(fn, KafkaPartition("silent", 3, 7), OffsetRange(7, MAX_OFFSET),
                                          bounded=False, estimator=estimator)
                assert out == []
                residual, delay = tracker.deferred_status()   # (the tracker counts the delay down)
                assert residual == OffsetRange(7, MAX_OFFSET) and Duration.of(0.15) < delay <= Duration.of(0.2)
    finally:
        fn.teardown()
    assert estimator.current_watermark() == MIN_TIMESTAMP
    warnings = [r.getMessage() for r in caplog.records if "partition's end" in r.getMessage()]
    assert len(warnings) == 1 and "silent/3 at offset 7" in warnings[0], warnings


def test_unbounded_process_on_an_empty_partition_defers_everything(stack_settings, make_topic):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("sdf-empty", partitions=1)
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    try:
        out, tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 0), OffsetRange(0, MAX_OFFSET),
                                  bounded=False, estimator=estimator)
        assert out == []
        residual, _ = tracker.deferred_status()
        assert residual == OffsetRange(0, MAX_OFFSET)
        assert tracker.current_restriction() == OffsetRange(0, 0)
        tracker.check_done()
        # The first call may defer before the broker's first answer (partition EOF) on a busy machine;
        # the resumed residual then finds the partition at its end and moves the watermark.
        for _ in range(20):
            if estimator.current_watermark() > MIN_TIMESTAMP:
                break
            out, tracker, _ = _invoke(fn, KafkaPartition(topic, 0, 0), residual, bounded=False, estimator=estimator)
            assert out == []
    finally:
        fn.teardown()
    assert estimator.current_watermark() > MIN_TIMESTAMP


def _idle_call(fn, part, residual, estimator) -> float:
    """One call on an idle partition, which reads nothing: the interval it waited, in seconds. Known to be at its
    end, the partition resumes at the next multiple of that interval on the wall clock (so a topic's idle partitions
    resume together), checked here; before the broker has said so, after the short interval (rounded: the tracker
    counts the delay down)."""
    interval = fn._peek_consumer(part.topic, part.partition)[3]  # (the back-off's next interval)
    out, tracker, _ = _invoke(fn, part, residual, bounded=False, estimator=estimator)
    assert out == []
    deferred, delay = tracker.deferred_status()
    assert deferred == residual
    delay = delay.micros / 1e6
    if not fn._peek_consumer(part.topic, part.partition)[2]:
        return round(delay, 1)
    due = time.time() + delay
    assert 0 < delay <= interval + 0.05, (delay, interval)
    assert abs(due - round(due / interval) * interval) < 0.05, f"resumes at {due:.3f}, not a multiple of {interval}"
    return interval


def test_an_idle_partition_backs_off_to_the_cap_and_its_next_record_brings_the_short_interval_back(
        topic_with_records):
    bootstrap, topic = topic_with_records
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, idle_poll_interval=0.5, idle_poll_max_interval=3.0)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    part = KafkaPartition(topic, 0, 0)

    def call(residual) -> float:
        return _idle_call(fn, part, residual, estimator)

    def until_idle(residual) -> float:
        """Calls until the partition is known to be at its end (before the broker reports it, an empty call may
        be a slow broker's and keeps the short interval); the delay of the call that found it so."""
        for _ in range(20):
            delay = call(residual)
            if fn._peek_consumer(topic, 0)[2]:
                return delay
        raise AssertionError("the broker never reported the partition's end")

    try:
        out, tracker, _ = _invoke(fn, part, OffsetRange(0, MAX_OFFSET), bounded=False, estimator=estimator)
        assert len(out) == 100
        residual = tracker.deferred_status()[0]
        assert [until_idle(residual)] + [call(residual) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]

        # A record produced meanwhile is read by a resumption (one that looks without waiting: the consumer
        # fetched it in the background, though a resumption right after the produce may come before the fetch).
        produce(bootstrap, topic, [(b"k", b"after-idle")])
        out, tracker = _resume_until_read(fn, part, residual, estimator)
        assert [e.value.value for e in out] == [b"after-idle"]
        residual = tracker.deferred_status()[0]
        assert residual == OffsetRange(101, MAX_OFFSET)
        assert [until_idle(residual)] + [call(residual) for _ in range(2)] == [0.5, 1.0, 2.0]
    finally:
        fn.teardown()


@pytest.fixture
def trickle_read(topic_with_records, request):
    """A streaming read of ``topic_with_records`` with poll_timeout 3 s, caught up (100 records read) and with the
    partition's consumer left as a trickle leaves it: not known to be at its end (the broker reports the end only
    with an empty fetch, which a partition that keeps receiving records seldom gets). Yields (bootstrap, topic, fn,
    resume) with ``resume()`` -> (output, tracker, seconds) of one call on the residual."""
    bootstrap, topic = topic_with_records
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, poll_timeout=3.0,
             caught_up_delay=getattr(request, "param", CAUGHT_UP_DELAY))
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    part = KafkaPartition(topic, 0, 0)
    try:
        out, tracker, _ = _invoke(fn, part, OffsetRange(0, MAX_OFFSET), bounded=False, estimator=estimator)
        assert len(out) == 100
        fn._peek_consumer(topic, 0)[2] = False
        residual = tracker.deferred_status()[0]

        def resume():
            started = time.monotonic()
            out, tracker, _ = _invoke(fn, part, residual, bounded=False, estimator=estimator)
            return out, tracker, time.monotonic() - started

        yield bootstrap, topic, fn, resume
    finally:
        fn.teardown()


def _fetched(fn, topic: str, end: int) -> None:
    """Waits until the partition's pooled consumer has fetched up to ``end`` in the background."""
    consumer = fn._peek_consumer(topic, 0)[0]
    deadline = time.monotonic() + 20
    while consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1] < end:
        assert time.monotonic() < deadline, "the consumer never fetched the new records"
        time.sleep(0.05)
    time.sleep(0.2)  # (the records reach its queue with the fetch that brought the high watermark)


def test_a_resumed_read_takes_what_its_consumer_fetched_meanwhile_without_waiting(trickle_read):
    """A trickle's resumption hands back the records its consumer fetched since the last call at once: its first poll
    does not wait (here poll_timeout is 3 s; it waited that long for a batch of 10,000 the partition could not fill,
    and on Prism the 4 partitions' reads of a bundle took their turns, 0.1 s each: issue 26, orders latency)."""
    bootstrap, topic, fn, resume = trickle_read
    produce(bootstrap, topic, [(b"k", f"new{i}".encode()) for i in range(3)])
    _fetched(fn, topic, 103)
    out, tracker, took = resume()
    assert [e.value.value for e in out] == [b"new0", b"new1", b"new2"]
    residual, delay = tracker.deferred_status()
    # Caught up: resumed after caught_up_delay, what arrives meanwhile read together (the tracker counts it down).
    assert residual == OffsetRange(103, MAX_OFFSET) and Duration.of(0) < delay <= Duration.of(CAUGHT_UP_DELAY)
    assert took < 1.0, f"the resumed read took {took:.2f}s"


@pytest.mark.parametrize("trickle_read", [0.0], indirect=True)
def test_with_no_caught_up_delay_a_caught_up_read_is_resumed_at_once(trickle_read):
    bootstrap, topic, fn, resume = trickle_read
    produce(bootstrap, topic, [(b"k", b"new")])
    _fetched(fn, topic, 101)
    out, tracker, _ = resume()
    assert [e.value.value for e in out] == [b"new"]
    assert tracker.deferred_status() == (OffsetRange(101, MAX_OFFSET), Duration.of(0))


def test_a_read_waits_for_no_more_records_than_its_partition_holds(trickle_read):
    """A caught-up read that polls again (its first look found nothing) returns when the next record arrives, not
    after poll_timeout: consume() waits its whole timeout for a count it cannot fill, and a streaming poll asked for
    a batch (10,000) whatever the partition held."""
    bootstrap, topic, fn, resume = trickle_read
    _fetched(fn, topic, 100)
    later = threading.Timer(0.5, produce, (bootstrap, topic, [(b"k", b"next")]))
    later.start()
    out, tracker, took = resume()
    later.join()
    assert [e.value.value for e in out] == [b"next"]
    assert tracker.deferred_status()[0] == OffsetRange(101, MAX_OFFSET)
    assert 0.5 <= took < 2.5, f"the read took {took:.2f}s"


def test_with_the_cap_at_the_interval_an_idle_partition_keeps_the_interval(topic_with_records):
    bootstrap, topic = topic_with_records
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, idle_poll_interval=0.5, idle_poll_max_interval=0.5)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    part = KafkaPartition(topic, 0, 0)
    try:
        _, tracker, _ = _invoke(fn, part, OffsetRange(0, MAX_OFFSET), bounded=False, estimator=estimator)
        residual = tracker.deferred_status()[0]
        intervals = [_idle_call(fn, part, residual, estimator) for _ in range(8)]
    finally:
        fn.teardown()
    assert intervals == [0.5] * 8


@pytest.mark.parametrize("slack", [0.0, 30.0])
def test_unbounded_watermark_is_the_latest_record_time_less_the_out_of_order_slack(topic_with_records, slack):
    bootstrap, topic = topic_with_records
    # An idle partition's watermark follows the wall clock less idle_watermark_delay: set far back here so
    # that only the records move it.
    fn = _fn(_ReadUnboundedPartitionFn, bootstrap, idle_watermark_delay=10 * 365 * 86400, out_of_order_slack=slack)
    estimator = ThreadsafeWatermarkEstimator(_new_estimator())
    try:
        out, _, _ = _invoke(fn, KafkaPartition(topic, 0, 0), OffsetRange(0, MAX_OFFSET), bounded=False,
                            estimator=estimator)
    finally:
        fn.teardown()
    assert len(out) == 100
    latest = Timestamp(micros=(1_700_000_000_000 + 99) * 1000)
    assert estimator.current_watermark() == latest - Duration.of(slack)


def test_a_negative_out_of_order_slack_is_refused():
    with pytest.raises(ValueError, match="out_of_order_slack"):
        ReadFromKafka("127.0.0.1:1", "t", out_of_order_slack=-1)


def test_unbounded_read_yields_an_unbounded_pcollection_and_bounded_a_bounded_one():
    pipeline = beam.Pipeline()
    unbounded = pipeline | "U" >> ReadFromKafka("127.0.0.1:1", "t")
    bounded = pipeline | "B" >> ReadFromKafka("127.0.0.1:1", "t", bounded=True)
    assert unbounded.is_bounded is False
    assert bounded.is_bounded is True


# -- what a streaming read leaves in the runner's state (residuals) ---------------------------------------------
def test_a_residual_round_trips_and_names_no_python_class():
    from apache_beam.coders import PickleCoder

    from orderflow.io.kafka_read import _UNBOUNDED_RESTRICTION

    provider = _UNBOUNDED_RESTRICTION.restriction_provider
    residual = (KafkaPartition("ordem-ativo", 3, 120, MAX_OFFSET), OffsetRange(4_567, MAX_OFFSET), Timestamp(1_700_000_000))
    coders = (beam.coders.registry.get_coder(KafkaPartition), provider.restriction_coder(),
              _WATERMARK_ESTIMATOR.watermark_estimator_provider.estimator_state_coder())
    for coder, value in zip(coders, residual, strict=True):
        encoded = coder.encode(value)
        assert coder.decode(encoded) == value and type(coder.decode(encoded)) is type(value)
        for name in (b"orderflow", b"KafkaPartition", b"OffsetRange", b"apache_beam", b"Timestamp"):
            assert name not in encoded
    assert b"KafkaPartition" in PickleCoder().encode(residual[0])   # what a pickle would have held


def test_the_partitions_the_reading_sdf_gets_are_typed_kafka_partitions():
    from apache_beam.pipeline import PipelineVisitor

    pipeline = beam.Pipeline()
    _ = pipeline | ReadFromKafka("127.0.0.1:1", "t")
    resolved = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if node.full_label.endswith("/ResolvePartitions"):
                resolved.extend(pcoll.element_type for pcoll in node.outputs.values())

    pipeline.visit(Visitor())
    # So the partition PCollection (and the SDF's residuals) use KafkaPartitionCoder, not a pickle.
    assert resolved == [KafkaPartition]
