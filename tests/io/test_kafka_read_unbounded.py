"""Unbounded ReadFromKafka on a real runner: the DirectRunner's streaming mode, in a child process.

The streaming DirectRunner never finishes an unbounded read (and holds its watermark, see README), so
the pipeline runs in a child process that the test stops; progress is observed through what the reader
commits to its consumer group on bundle finalization: reading, checkpointing (``defer_remainder``),
resuming and committing all have to work for the committed offsets to follow the produced records.

The idle back-off is watched on Prism, the streaming runner the pipelines use: a child process runs the read and,
once stopped, prints the run's ``ReadFromKafka`` counters (``idle_resumptions``, ``records``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from confluent_kafka import Producer

from orderflow.io.kafka_offsets import PartitionReader
from tests.support.kafka_testing import produce

PIPELINE = """
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from orderflow.io.kafka_read import ReadFromKafka

bootstrap, topic, group = sys.argv[1:4]
with beam.Pipeline(options=PipelineOptions(["--streaming"])) as p:
    _ = p | ReadFromKafka(bootstrap, topic, group_id=group, batch_size=50) | beam.Map(len)
"""


PRISM_PIPELINE = """
import json, sys, time
import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from orderflow.io.kafka_read import ReadFromKafka
from orderflow.pipelines.runner import apply_streaming_defaults

bootstrap, topic, group, cap, batch_size, pause, poll_timeout = sys.argv[1:8]


def lag(batch):
    # How long after its oldest record was produced a batch reached the read's output (ms), for records keyed t...
    timed = [r.timestamp_ms for r in batch if r.key.startswith(b"t")]
    if timed:
        Metrics.distribution("test", "lag_ms").update(int(time.time() * 1000 - min(timed)))
    time.sleep(float(pause))  # pause: the sinks' time per batch
    return len(batch)


class Lag(beam.DoFn):
    def start_bundle(self):  # fused with the read: one per bundle of the read's stage
        Metrics.counter("test", "bundles").inc()

    def process(self, batch):
        yield lag(batch)


p = beam.Pipeline(options=apply_streaming_defaults(PipelineOptions([])))
_ = (p | ReadFromKafka(bootstrap, topic, group_id=group, batch_size=int(batch_size), idle_poll_max_interval=float(cap),
                       poll_timeout=float(poll_timeout))
     | beam.ParDo(Lag()))
result = p.run()
print("running", flush=True)
sys.stdin.readline()  # until the test says stop
result.cancel()
found = result.metrics().query(MetricsFilter().with_namespace("ReadFromKafka"))["counters"]
found += result.metrics().query(MetricsFilter().with_namespace("test"))["counters"]
lags = result.metrics().query(MetricsFilter().with_namespace("test"))["distributions"]
print(json.dumps({**{r.key.metric.name: r.committed for r in found},
                  **{"lag_ms": [r.committed.mean, r.committed.max, r.committed.count] for r in lags}}), flush=True)
"""


class _PrismRead:
    """PRISM_PIPELINE in a child process: a streaming read on Prism, stopped by ``counters()``, which returns the
    run's ``ReadFromKafka`` counters (a portable run's metrics are fetched once, so they are read at the end)."""

    def __init__(self, bootstrap: str, topic: str, cap: float, log_path, batch_size: int = 50, pause: float = 0.0,
                 poll_timeout: float = 0.1):
        self.group = f"g-{topic}"
        self._log = open(log_path, "wb")
        self.child = subprocess.Popen([sys.executable, "-c", PRISM_PIPELINE, bootstrap, topic, self.group, str(cap),
                                       str(batch_size), str(pause), str(poll_timeout)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)

    def wait_running(self) -> None:
        assert self.child.stdout.readline().strip() == "running", "the streaming pipeline did not start"

    def counters(self) -> dict[str, int]:
        out, _ = self.child.communicate("stop\n", timeout=120)
        return json.loads(out.strip().splitlines()[-1])

    def stop(self):
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        self._log.close()


def test_on_prism_an_idle_read_backs_off_and_a_record_after_the_quiet_spell_is_read(stack_settings, make_topic,
                                                                                     tmp_path):
    bootstrap = stack_settings.kafka_bootstrap
    old_topic, new_topic = make_topic("idle-old", partitions=4), make_topic("idle-new", partitions=4)
    old = _PrismRead(bootstrap, old_topic, 0.5, tmp_path / "old.log")     # no back-off: every 0.5 s
    new = _PrismRead(bootstrap, new_topic, 4.0, tmp_path / "new.log")     # 0.5 s doubling to 4 s
    try:
        old.wait_running()
        new.wait_running()
        time.sleep(20)  # both idle over the same stretch (a length of time to count over, not a bound)
        # A record after the quiet spell is still read: its partition is resumed at most 4 s later, and the read
        # commits it when its bundle is finalized.
        [(partition, offset)] = produce(bootstrap, new_topic, [(b"after-idle", b"x")])
        assert _wait_for_commits(bootstrap, new.group, new_topic, {partition: offset + 1}, new.child) == {
            partition: offset + 1}
        old_counters, new_counters = old.counters(), new.counters()
    finally:
        old.stop()
        new.stop()
    assert new_counters.get("records") == 1 and old_counters.get("records", 0) == 0
    # Over the same time the old read resumes its 4 idle partitions every 0.5 s (8 a second); the backed-off one,
    # once at its cap, once every 4 s (1 a second): several times fewer (152 against 35 in a run under load).
    assert 0 < 2 * new_counters["idle_resumptions"] < old_counters["idle_resumptions"], (new_counters, old_counters)


def test_on_prism_idle_partitions_resume_together_in_one_bundle(stack_settings, make_topic, tmp_path):
    """An idle partition waits until the next multiple of its interval on the wall clock, so the 8 partitions of a
    topic come due at the same instants, and the Prism `make prism` builds resumes residuals due within a few
    milliseconds of each other in one bundle (dev/prism/release-due-residuals-together.patch): a bundle per instant,
    not one per partition (an idle pipeline's CPU is mostly per bundle). Either alone (stock Prism, or resumptions
    timed from each read's own end) gathers ~4 resumptions a bundle, not 8."""
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("idle-together", partitions=8)
    read = _PrismRead(bootstrap, topic, 0.5, tmp_path / "together.log")
    try:
        read.wait_running()
        time.sleep(15)  # a length of time to count over, not a bound
        counters = read.counters()
    finally:
        read.stop()
    # ~2 resumptions a second per partition, ~200 in all, and one bundle per instant (~30, a few more while the
    # partitions first meet): 208 in 31 bundles. Stock Prism made 56 bundles of 208; timing each resumption from its
    # read's own end, 53 of 200.
    assert counters["idle_resumptions"] > 80, counters
    assert 5 * counters["bundles"] < counters["idle_resumptions"], counters


def test_on_prism_a_backlog_is_read_with_one_consumer_per_partition(stack_settings, make_topic, tmp_path):
    """The runner sends a partition's successive reads to whichever of the SDK worker's bundle processors is free,
    each with its own instance of the reading DoFn; the reads share the process' consumers, so a backlog read in
    many slices opens one consumer per partition (with one per instance, each left with a full prefetch queue, a
    300k-record backlog on 4 partitions opened 14: benchmarks/README.md, the backlog)."""
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("backlog", partitions=4)
    positions = produce(bootstrap, topic, [(f"k{i}".encode(), b"x" * 150) for i in range(60_000)])
    read = _PrismRead(bootstrap, topic, 2.0, tmp_path / "backlog.log", batch_size=1_000, pause=0.05)
    counters = _counters_once_committed(read, bootstrap, topic, lambda: positions)
    assert counters["records"] == 60_000
    assert counters["consumers_opened"] == 4, counters


def test_on_prism_a_trickle_is_read_as_it_arrives(stack_settings, make_topic, tmp_path):
    """Records arriving a few at a time on 4 partitions reach the read's output within a fraction of poll_timeout (1 s
    here): a resumed read takes what its consumer fetched meanwhile without waiting, and a later poll waits only for
    the records the partition holds. Before, each resumption waited poll_timeout for a batch the partition could not
    fill, and Prism ran the reads of the partitions that came back together one after another in one bundle
    (issue 26: orders p99 0.6-1.1 s against the hand loop's 0.1-0.2 s, poll_timeout 0.1 s)."""
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("trickle", partitions=4)
    # No idle back-off (cap = interval, 0.5 s): the partitions' first records after the start are not measured.
    read = _PrismRead(bootstrap, topic, 0.5, tmp_path / "trickle.log", poll_timeout=1.0)

    def trickle():
        positions = [produce(bootstrap, topic, [(b"w", b"x")], partition=p)[0] for p in range(4)]
        assert _wait_for_commits(bootstrap, read.group, topic, _ends(positions), read.child) == _ends(positions)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})  # one producer: sent at once
        for i in range(100):  # ~20 records/s for 5 s, measured (keys t...)
            producer.produce(topic, b"x", f"t{i}".encode(), timestamp=int(time.time() * 1000),
                             on_delivery=lambda error, m: positions.append((m.partition(), m.offset())))
            producer.poll(0)
            time.sleep(0.05)
        assert producer.flush(30) == 0
        return positions

    counters = _counters_once_committed(read, bootstrap, topic, trickle)
    assert counters["records"] == 104
    mean_ms, max_ms, batches = counters["lag_ms"]
    # Each poll used to return at the end of its 1 s wait: a record waited 0.5 s on average for its poll alone.
    assert mean_ms < 400, counters


def _counters_once_committed(read: _PrismRead, bootstrap: str, topic: str, records) -> dict[str, int]:
    """Once ``read`` runs, ``records()`` produces (or returns) the records' (partition, offset); waits until the read
    has committed them all, stops it and returns its counters."""
    try:
        read.wait_running()
        expected = _ends(records())
        assert _wait_for_commits(bootstrap, read.group, topic, expected, read.child) == expected
        return read.counters()
    finally:
        read.stop()


def _wait_for_commits(bootstrap, group, topic, expected: dict[int, int], child, timeout=90.0) -> dict:
    committed = {}
    deadline = time.monotonic() + timeout
    with PartitionReader(bootstrap, group) as reader:
        while time.monotonic() < deadline:
            assert child.poll() is None, "the streaming pipeline exited"
            committed = {p: reader.committed_offset(topic, p) for p in expected}
            if committed == expected:
                return committed
            time.sleep(0.5)
    return committed


def _ends(positions) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def test_streaming_read_keeps_up_with_new_records_and_commits_them(stack_settings, make_topic, tmp_path):
    bootstrap, topic = stack_settings.kafka_bootstrap, make_topic("stream", partitions=4)
    group = f"g-{topic}"
    first = produce(bootstrap, topic, [(f"k{i}".encode(), b"a") for i in range(300)])
    log = open(tmp_path / "pipeline.log", "wb")
    child = subprocess.Popen([sys.executable, "-c", PIPELINE, bootstrap, topic, group],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        expected = _ends(first)
        assert _wait_for_commits(bootstrap, group, topic, expected, child) == expected
        # Records produced while it runs are read and committed too (resumed residuals).
        second = produce(bootstrap, topic, [(f"k{i}".encode(), b"b") for i in range(200)])
        expected = _ends(first + second)
        assert _wait_for_commits(bootstrap, group, topic, expected, child) == expected
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
