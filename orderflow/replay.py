"""Replay Kafka topics through orderflow's pipelines from a chosen position; inspect and reset groups.

    python -m orderflow.replay run orders --from earliest            # the orders pipeline, bounded
    python -m orderflow.replay run presence --from 2026-11-21T10:00:00Z
    python -m orderflow.replay run orders --from committed --stream  # resume the group, keep streaming
    python -m orderflow.replay dump --topic ordem-ativo --from 'ordem-ativo:0=120,1=98' --output out.jsonl
    python -m orderflow.replay offsets --group orderflow-orders --topic ordem-ativo
    python -m orderflow.replay reset --group orderflow-orders --topic ordem-ativo --to 2026-11-21T10:00:00Z

Positions (``--from`` / ``--to``): ``earliest``, ``latest``, ``committed`` (the group's committed offsets,
earliest where none), an ISO-8601 time (the first record at or after it, per partition), or explicit
offsets ``topic:partition=offset,...`` (partitions not named start at ``--fallback``, default earliest).
``run`` passes any further arguments after ``--`` to the pipeline (e.g. ``-- --runner=FlinkRunner``).
Endpoints come from the environment (``orderflow.config``).
"""
from __future__ import annotations

import argparse
import json
import sys

from orderflow.config import load_settings
from orderflow.io.kafka_offsets import PartitionReader, StartPosition, commit_offsets, resolve_start_offset
from orderflow.pipelines import PIPELINES


def pipeline_argv(pipeline: str, position: str, group: str | None, stream: bool, extra: list[str]) -> list[str]:
    """The argv that runs ``pipeline`` from ``position`` (validated here, parsed again by the pipeline)."""
    StartPosition.parse(position)
    entry = PIPELINES[pipeline]
    argv = [f"{entry.start_option}={position}"]
    if group:
        argv.append(f"{entry.group_option}={group}")
    if not stream:
        argv.append("--bounded")
    return argv + list(extra)


def group_offsets(bootstrap: str, group: str, topic: str) -> list[dict]:
    """Per partition: the group's committed offset, the partition's log start and end, and the lag."""
    rows = []
    with PartitionReader(bootstrap, group) as reader:
        for partition in reader.partitions(topic):
            committed = reader.committed_offset(topic, partition)
            low, end = reader.low_offset(topic, partition), reader.end_offset(topic, partition)
            rows.append({"partition": partition, "committed": committed, "log_start": low, "end": end,
                         "lag": end - (committed if committed is not None else low)})
    return rows


def reset_offsets(bootstrap: str, group: str, topic: str, to: StartPosition, dry_run: bool = False) -> dict[int, int]:
    """Sets ``group``'s committed offsets on ``topic`` to the position ``to``; returns ``{partition: offset}``.

    Run it while the group's pipeline is stopped: a running reader commits its own positions on top.
    """
    with PartitionReader(bootstrap, group) as reader:
        offsets = {p: resolve_start_offset(reader, topic, p, to) for p in reader.partitions(topic)}
    if not dry_run:
        commit_offsets(bootstrap, group, {(topic, p): o for p, o in offsets.items()})
    return offsets


def dump(bootstrap: str, topic: str, start: StartPosition, output: str, avro_schema: str | None = None,
         group: str | None = None, beam_args: list[str] | None = None, registry_url: str | None = None) -> None:
    """A bounded pipeline: ``topic`` from ``start`` to its end, one JSON line per record, into ``output``.

    With ``avro_schema``, values are decoded into that schema: records in the Confluent wire format through the
    registry at ``registry_url`` (writer schema by id), records written before the switch (single-object
    encoding) through the schema's history; a record in neither gets ``value_error`` naming its format."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from orderflow.clients import SchemaRegistry
    from orderflow.io.kafka_read import ReadFromKafka
    from orderflow.model.avro import AvroCodec, subject_for

    codec = AvroCodec(avro_schema, registry=SchemaRegistry(registry_url) if registry_url else None,
                      subject=subject_for(topic)) if avro_schema else None

    def to_json(record) -> str:
        row = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
               "timestamp_ms": record.timestamp_ms,
               "key": record.key.decode("utf-8", "backslashreplace") if record.key is not None else None,
               "headers": {k: (v or b"").decode("utf-8", "backslashreplace") for k, v in record.headers}}
        if codec is not None:
            try:
                row["value"] = codec.decode(record.value)
            except ValueError as exc:
                row["value_error"] = str(exc)
                row["value"] = (record.value or b"").decode("utf-8", "backslashreplace")
        else:
            row["value"] = record.value.decode("utf-8", "backslashreplace") if record.value is not None else None
        return json.dumps(row, default=str, sort_keys=True)

    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
        _ = (pipeline
             | "Read" >> ReadFromKafka(bootstrap, topic, start=start, bounded=True, group_id=group,
                                       commit_offsets=False)
             | "ToJson" >> beam.Map(to_json)
             | "Write" >> beam.io.WriteToText(output, shard_name_template=""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orderflow.replay", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline from a position")
    run.add_argument("pipeline", choices=sorted(PIPELINES))
    run.add_argument("--from", dest="position", required=True, help="start position (see above)")
    run.add_argument("--group", help="consumer group (default: the pipeline's)")
    run.add_argument("--stream", action="store_true", help="keep streaming (default: bounded, read to the end)")

    dump_cmd = commands.add_parser("dump", help="write a topic's records from a position as JSON lines")
    dump_cmd.add_argument("--topic", required=True)
    dump_cmd.add_argument("--from", dest="position", default="earliest")
    dump_cmd.add_argument("--group", help="consumer group (needed for --from committed)")
    dump_cmd.add_argument("--fallback", default="earliest", choices=["earliest", "latest"])
    dump_cmd.add_argument("--output", required=True, help="output file (JSON lines)")
    dump_cmd.add_argument("--avro", help="decode values with this Avro schema (orderflow/schemas/NAME.avsc)")

    offsets = commands.add_parser("offsets", help="show a group's committed offsets and lag")
    offsets.add_argument("--group", required=True)
    offsets.add_argument("--topic", required=True)

    reset = commands.add_parser("reset", help="set a group's committed offsets to a position")
    reset.add_argument("--group", required=True)
    reset.add_argument("--topic", required=True)
    reset.add_argument("--to", required=True, help="earliest | latest | ISO time | topic:p=o,...")
    reset.add_argument("--fallback", default="earliest", choices=["earliest", "latest"])
    reset.add_argument("--dry-run", action="store_true", help="print the offsets, commit nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    settings = load_settings()
    bootstrap = settings.kafka_bootstrap
    try:
        if args.command == "run":
            result = PIPELINES[args.pipeline].run(pipeline_argv(args.pipeline, args.position, args.group, args.stream, extra))
            print(f"{args.pipeline}: {getattr(result, 'state', 'started')}")
            if args.stream:  # the streaming run (Prism, its SDK worker) lives in this process; SIGTERM drains it
                from orderflow.pipelines.runner import exit_now, wait_until_stopped

                exit_now(wait_until_stopped(result, args.pipeline))
        elif args.command == "dump":
            start = StartPosition.parse(args.position, fallback=args.fallback)
            dump(bootstrap, args.topic, start, args.output, args.avro, args.group, extra,
                 registry_url=settings.schema_registry_url)
            print(f"wrote {args.output}")
        elif args.command == "offsets":
            for row in group_offsets(bootstrap, args.group, args.topic):
                print(json.dumps(row))
        elif args.command == "reset":
            to = StartPosition.parse(args.to, fallback=args.fallback)
            if to.kind == "committed":
                raise ValueError("--to committed would not change anything")
            offsets = reset_offsets(bootstrap, args.group, args.topic, to, args.dry_run)
            verb = "would set" if args.dry_run else "set"
            for partition, offset in sorted(offsets.items()):
                print(f"{verb} {args.group} {args.topic}/{partition} -> {offset}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
