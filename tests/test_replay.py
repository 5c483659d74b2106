"""python -m orderflow.replay: dump from positions, group offsets and their reset, pipeline arguments."""
from __future__ import annotations

import json

import pytest

from orderflow import replay
from orderflow.io.kafka_offsets import PartitionReader
from tests.support.kafka_testing import produce

BASE_MS = 1_760_000_000_000


@pytest.fixture
def topic(stack_settings, make_topic, monkeypatch):
    monkeypatch.setenv("ORDERFLOW_KAFKA_BOOTSTRAP", stack_settings.kafka_bootstrap)
    name = make_topic("replay", partitions=4)
    positions = produce(stack_settings.kafka_bootstrap, name,
                        [(f"k{i % 11}".encode(), f"r{i}".encode(), BASE_MS + 1000 * i) for i in range(400)])
    return name, positions


def _dumped(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dump_from_explicit_offsets_writes_exactly_those_records(topic, tmp_path):
    name, positions = topic
    out = tmp_path / "dump.jsonl"
    assert replay.main(["dump", "--topic", name, "--from", f"{name}:0=3,1=10,2=0,3=50", "--output", str(out)]) == 0
    starts = {0: 3, 1: 10, 2: 0, 3: 50}
    expected = {(p, o) for p, o in positions if o >= starts[p]}
    rows = _dumped(out)
    assert {(r["partition"], r["offset"]) for r in rows} == expected and len(rows) == len(expected)
    by_offset = {(p, o): i for i, (p, o) in enumerate(positions)}
    assert all(r["value"] == f"r{by_offset[(r['partition'], r['offset'])]}" for r in rows)


def test_reset_to_a_time_then_dump_from_committed_starts_at_that_time(topic, tmp_path, capsys):
    name, positions = topic
    group = f"g-{name}"
    at = "2025-10-09T08:58:19.500+00:00"    # between records 299 and 300 (BASE_MS + 299.5 s)
    assert replay.main(["reset", "--group", group, "--topic", name, "--to", at]) == 0
    assert f"set {group} {name}/0 ->" in capsys.readouterr().out
    expected = {(p, o) for i, (p, o) in enumerate(positions) if i >= 300}
    first_per_partition = {}
    for p, o in sorted(expected):
        first_per_partition.setdefault(p, o)
    rows = replay.group_offsets(replay.load_settings().kafka_bootstrap, group, name)
    assert {r["partition"]: r["committed"] for r in rows} == first_per_partition
    assert sum(r["lag"] for r in rows) == len(expected)

    out = tmp_path / "from-committed.jsonl"
    assert replay.main(["dump", "--topic", name, "--from", "committed", "--group", group, "--output", str(out)]) == 0
    assert {(r["partition"], r["offset"]) for r in _dumped(out)} == expected


def test_reset_dry_run_commits_nothing_and_bad_positions_are_rejected(topic, capsys):
    name, _ = topic
    group = f"dry-{name}"
    assert replay.main(["reset", "--group", group, "--topic", name, "--to", "latest", "--dry-run"]) == 0
    assert "would set" in capsys.readouterr().out
    with PartitionReader(replay.load_settings().kafka_bootstrap, group) as reader:
        assert reader.committed_offset(name, 0) is None
    assert replay.main(["reset", "--group", group, "--topic", name, "--to", "yesterday-ish"]) == 2
    assert "start position" in capsys.readouterr().err


def test_run_passes_the_position_group_and_boundedness_to_the_pipeline():
    from apache_beam.options.pipeline_options import PipelineOptions

    from orderflow.pipelines.orders import OrdersOptions
    from orderflow.pipelines.runner import RunModeOptions

    argv = replay.pipeline_argv("orders", "2026-11-21T10:00:00Z", "my-group", stream=False, extra=["--x=1"])
    options = PipelineOptions(argv).view_as(OrdersOptions)
    bounded = options.view_as(RunModeOptions).bounded
    assert (options.orders_start, options.orders_group_id, bounded) == (
        "2026-11-21T10:00:00Z", "my-group", True)
    assert argv[-1] == "--x=1"
    assert "--bounded" not in replay.pipeline_argv("presence", "committed", None, stream=True, extra=[])
    with pytest.raises(ValueError):
        replay.pipeline_argv("orders", "not a position", None, stream=False, extra=[])


def test_dump_with_avro_reads_both_formats_and_names_the_format_of_what_it_cannot(stack_settings, make_topic,
                                                                                  monkeypatch, tmp_path):
    """A keep-alive topic holding records of before the registry (single-object) and after (Confluent): both
    decoded; a record of neither is shown raw with a value_error naming the formats, never misread."""
    from orderflow.model.avro import AvroCodec
    from tests.support.avro_history import register_and_encode

    name = make_topic("replay-avro", partitions=1)
    for variable, value in {"ORDERFLOW_KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap,
                            "ORDERFLOW_SCHEMA_REGISTRY_URL": stack_settings.schema_registry_url}.items():
        monkeypatch.setenv(variable, value)
    ping = {"restaurant_id": "r1", "sent_at": BASE_MS}
    before = AvroCodec("restaurant_keepalive").encode_single_object(ping)
    [after] = register_and_encode(stack_settings.schema_registry_url, f"{name}-value",
                                  AvroCodec("restaurant_keepalive").schema, [{**ping, "restaurant_id": "r2"}])
    produce(stack_settings.kafka_bootstrap, name, [(b"r1", before, BASE_MS), (b"r2", after, BASE_MS),
                                                   (b"x", b"plain text", BASE_MS)], partition=0)
    out = tmp_path / "dump.jsonl"
    assert replay.main(["dump", "--topic", name, "--from", "earliest", "--output", str(out),
                        "--avro", "restaurant_keepalive"]) == 0
    rows = sorted(_dumped(out), key=lambda r: r["offset"])
    assert [r["value"]["restaurant_id"] for r in rows[:2]] == ["r1", "r2"]
    assert "value_error" not in rows[0] and "value_error" not in rows[1]
    assert rows[2]["value"] == "plain text"
    assert "Confluent wire format" in rows[2]["value_error"] and "single-object" in rows[2]["value_error"]
