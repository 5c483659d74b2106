"""Bounded ReadFromKafka throughput beside a plain confluent-kafka consume loop over the same records.

Starts its own Tansu broker (free port, like the tests), produces ``--n`` records (~120-byte JSON
orders, keys spread over 4 partitions), then in one run measures:

- baseline: one confluent-kafka Consumer assigned all partitions, ``consume(num_messages=10000)`` until
  every partition reports EOF, touching each record's key/value/offset (the least any reader must do);
- ReadFromKafka(bounded=True, batch_size=...) in a Beam pipeline on the DirectRunner, counting records
  in a DoFn per batch (pipeline start-up included);
- ReadFromKafka per record (one element per record) over ``--per-record-n`` records.

Prints both rates and the ratio. ``python benchmarks/kafka_read.py --n 1000000``
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import apache_beam as beam  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

from orderflow.bootstrap import create_topics  # noqa: E402
from orderflow.io.kafka_read import DEFAULT_CONSUMER_CONFIG, ReadFromKafka  # noqa: E402
from orderflow_dev.local import temporary_stack  # noqa: E402

PARTITIONS = 4


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 1_000_000})
    for i in range(n):
        value = (b'{"order_id":"o-%09d","client_token":"client-%04d","asset":"PETR4","quantity":%d,'
                 b'"event_time":1763700000000}' % (i, i % 5000, 1 + i % 1000))
        while True:
            try:
                producer.produce(topic, value, b"client-%04d" % (i % 5000))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def baseline(bootstrap: str, topic: str) -> int:
    consumer = Consumer({**DEFAULT_CONSUMER_CONFIG, "bootstrap.servers": bootstrap, "group.id": "bench-baseline"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    done, count, checksum = set(), 0, 0
    while len(done) < PARTITIONS:
        for m in consumer.consume(10_000, 0.1):
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                    continue
                raise RuntimeError(m.error())
            key, value, offset = m.key(), m.value(), m.offset()
            checksum += len(value) + offset + len(key)
            count += 1
    consumer.close()
    return count


class CountBatches(beam.DoFn):
    def __init__(self):
        self.records = Metrics.counter("bench", "records")

    def process(self, batch):
        self.records.inc(len(batch))


class CountRecords(beam.DoFn):
    def __init__(self):
        self.records = Metrics.counter("bench", "records")

    def process(self, record):
        self.records.inc()


def beam_read(bootstrap: str, topic: str, batch_size: int | None, limit_fn=None) -> int:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    records = pipeline | ReadFromKafka(bootstrap, topic, bounded=True, batch_size=batch_size)
    _ = records | beam.ParDo(CountBatches() if batch_size else CountRecords())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("records").with_namespace("bench"))["counters"]
    return sum(c.committed for c in counters)


def timed(label: str, fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    count = fn(*args)
    seconds = time.perf_counter() - start
    print(f"{label:<44} {count:>9,} records {seconds:7.2f} s {count / seconds:>11,.0f} rec/s", flush=True)
    return count, count / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records for baseline and batched read")
    parser.add_argument("--per-record-n", type=int, default=200_000, help="records for the per-record read")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)

    with temporary_stack("bench-kafka-", "/tmp", timeout=60, only=("kafka",)) as stack:
        bootstrap = f"127.0.0.1:{stack.ports.kafka}"
        topic, small_topic, empty_topic = "bench-read", "bench-read-small", "bench-read-empty"
        create_topics(bootstrap, [topic, small_topic, empty_topic], PARTITIONS)
        start = time.perf_counter()
        produce(bootstrap, topic, args.n)
        produce(bootstrap, small_topic, args.per_record_n)
        print(f"produced {args.n:,} + {args.per_record_n:,} records in {time.perf_counter() - start:.1f} s")

        n_base, base_rate = timed("baseline confluent-kafka consume loop", baseline, bootstrap, topic)
        n_ours, ours_rate = timed(f"ReadFromKafka bounded, batch_size={args.batch_size}", beam_read, bootstrap,
                                  topic, args.batch_size)
        n_small, small_rate = timed("ReadFromKafka bounded, one element per record", beam_read, bootstrap,
                                    small_topic, None)
        start = time.perf_counter()
        assert beam_read(bootstrap, empty_topic, args.batch_size) == 0
        startup = time.perf_counter() - start
        steady_rate = args.n / (args.n / ours_rate - startup)
        print(f"{'pipeline start-up + finish (empty topic)':<44} {startup:27.2f} s")
        print(f"{'ReadFromKafka batched, start-up excluded':<44} {'':>25} {steady_rate:>11,.0f} rec/s")
        assert n_base == n_ours == args.n, (n_base, n_ours, args.n)
        assert n_small == args.per_record_n, (n_small, args.per_record_n)
        print(f"ratio batched / baseline:    {ours_rate / base_rate:.2f} "
              f"(start-up excluded: {steady_rate / base_rate:.2f})")
        print(f"ratio per-record / baseline: {small_rate / base_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
