"""Unbounded ReadFromKafka on a real runner: the DirectRunner's streaming mode, in a child process.

The streaming DirectRunner never finishes an unbounded read (and holds its watermark, see README), so
the pipeline runs in a child process that the test stops; progress is observed through what the reader
commits to its consumer group on bundle finalization: reading, checkpointing (``defer_remainder``),
resuming and committing all have to work for the committed offsets to follow the produced records.
"""
from __future__ import annotations

import subprocess
import sys
import time

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
