"""``make demo`` Kafka connector step: the orders group's offsets, a replay plan, a priced order read back."""
from __future__ import annotations

import datetime as dt
import json

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from orderflow import replay
from orderflow.clients import avro_codec
from orderflow.io.kafka_offsets import PartitionReader, StartPosition
from orderflow.model.avro import AvroDecodeError


def show_schemas(settings) -> None:
    """The schema registry's subjects: each one's latest version, its id and compatibility, and the curl to list
    them by hand."""
    from orderflow.clients import schema_registry

    client = schema_registry(settings).client
    print(f"schema registry {settings.schema_registry_url}:")
    for subject in sorted(client.get_subjects()):
        latest = client.get_latest_version(subject)
        name = json.loads(latest.schema.schema_str).get("name")
        print(f"  {subject:<34} v{latest.version} id {latest.schema_id:<4} {name:<28} "
              f"{client.get_compatibility(subject)}")
    print(f"  by hand: curl -s {settings.schema_registry_url}/subjects")


def demo(settings) -> None:
    """``make demo`` step: the schemas in the registry, the orders group's offsets after its run, a time-based
    replay plan, and a priced order read back from Kafka through the Avro codec."""
    show_schemas(settings)
    bootstrap, topics = settings.kafka_bootstrap, settings.topics
    group = "orderflow-orders"
    try:
        rows = replay.group_offsets(bootstrap, group, topics.orders)
    except KafkaException as exc:
        print(f"skipped: {exc}")
        return
    print(f"consumer group {group} on {topics.orders} (committed on bundle finalization):")
    print("  partition  committed        end        lag")
    for row in rows:
        print(f"  {row['partition']:>9} {row['committed'] if row['committed'] is not None else '-':>10} "
              f"{row['end']:>10} {row['lag']:>10}")
    with PartitionReader(bootstrap) as reader:
        first_times = [reader.read_at(topics.orders, row["partition"], row["log_start"])[1] for row in rows]
    first_times = [t for t in first_times if t is not None]
    if first_times:
        at_ms = min(first_times) + 60_000
        plan = replay.reset_offsets(bootstrap, group, topics.orders,
                                    StartPosition(kind="timestamp", timestamp_ms=at_ms), dry_run=True)
        when = dt.datetime.fromtimestamp(at_ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")
        print(f"python -m orderflow.replay run orders --from {when}  (a minute after the first order) "
              f"would start at offsets {dict(sorted(plan.items()))}")
    codec = avro_codec(settings, "priced_orders")
    with PartitionReader(bootstrap) as reader:
        reader.consumer.assign([TopicPartition(topics.priced_orders, 0, 0)])
        msg = reader.consumer.poll(10)
    if msg is None or msg.error() is not None:
        reason = "timeout" if msg is None else ("empty" if msg.error().code() == KafkaError._PARTITION_EOF
                                                else msg.error().str())
        print(f"{topics.priced_orders}/0: no priced order to show ({reason})")
        return
    try:
        record = codec.decode(msg.value())
        print(f"{topics.priced_orders}/0@{msg.offset()}: {len(msg.value())} bytes, writer schema id "
              f"{int.from_bytes(msg.value()[1:5], 'big')} in the registry -> {json.dumps(record, default=str)}")
    except AvroDecodeError as exc:
        print(f"{topics.priced_orders}/0@{msg.offset()}: not decodable ({exc})")
