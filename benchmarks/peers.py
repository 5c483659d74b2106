"""The orders compute path beside its Python streaming peers and a plain loop: same work, one run.

The work: read ``ordem-ativo`` to its end (``--records`` generated records, default 300,000: the four
input models JSON / REST-proxy / CSV / Avro, 5% duplicates, 2% malformed), parse and validate each
record, price its orders from reference data held in memory in exact decimal, write each PricedOrder as
Avro in the Confluent wire format (key order_id; the schema id looked up once in the stack's registry) to an output topic and every dead letter, with its reason in headers,
to a dead-letter topic. Done by

- ``beam``: the orders pipeline itself, bounded on its normal runner (Beam's DirectRunner), with
  ``--orders_sinks=kafka`` (no Postgres, DynamoDB, alarms or SMS) and the reference data loaded once;
- ``quix``: Quix Streams (``Application`` / ``StreamingDataFrame``: apply, branches, a value serializer,
  ``to_topic``), run from ``.local/peers-venv`` (``make peers-venv``): it cannot share ``.venv``, see
  ``benchmarks/peers-requirements.txt``;
- ``bytewax``: a Bytewax dataflow with its Kafka connectors (``kop.input`` / ``op.flat_map`` /
  ``op.branch`` / ``kop.output``), one worker, run by ``bytewax.run.cli_main``;
- ``loop``: a plain confluent-kafka consume / produce loop, the ceiling.

Every side parses and prices with the same functions (``parse_orders``, ``price_order``,
``order_dead_letter``, ``AvroCodec``), runs in its own process (own peak RSS) with the same librdkafka
producer settings (``WriteToKafka``'s) and fetch settings (``ReadFromKafka``'s), and writes to topics of
its own. Each side's outputs are read
back and compared with the loop's as multisets of decoded PricedOrders (order_id, client, asset, quantity,
event time, format, trade day, pricing code, price, total) and of dead letters (key, payload, headers):
the run fails if any side differs, or if priced + dead letters != records in. Rates include each side's
start-up (a streaming peer pays it once; a bounded Beam run pays it every run).

    .venv/bin/python benchmarks/peers.py --records 300000     # alone on the machine
    .venv/bin/python benchmarks/peers.py --records 2000       # a smoke run
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import fill_orders_topic, run_side  # noqa: E402  (benchmarks/harness.py, beside this script)

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, load_settings  # noqa: E402

DAY = datetime.date(2026, 11, 10)
SIDES = ("loop", "beam", "quix", "bytewax")
LABELS = {"loop": "plain confluent-kafka loop", "beam": "orderflow (Beam, sinks off)",
          "quix": "Quix Streams", "bytewax": "Bytewax"}
PEERS_PYTHON = ROOT / ".local" / "peers-venv" / "bin" / "python"


# --------------------------------------------------------------------------------------------------
# The work every side does per Kafka record, with the project's own functions.
# --------------------------------------------------------------------------------------------------
class Work:
    """Parse + validate + price one record; the reference data snapshot is read once, here."""

    def __init__(self, settings: Settings):
        import zoneinfo

        from orderflow.clients import avro_codec, schema_registry
        from orderflow.io import reference_data_store
        from orderflow.model import dead_letter, orders, pricing

        # Imported here (start-up, measured) and kept, not imported per record.
        self.normalize, self.pricing, self.DeadLetter = orders, pricing, dead_letter.DeadLetter
        self.stage = dead_letter.Stage
        self.snapshot = reference_data_store.read_reference_data(settings, [DAY])
        self.zone = zoneinfo.ZoneInfo(settings.exchange_timezone)
        registry = schema_registry(settings)
        self.codec = avro_codec(settings, "priced_orders", registry)
        self.decode_avro = avro_codec(settings, "orders", registry).decode  # Avro input: writer schema by id
        self.quantized: dict = {}  # price -> price at scale 6, shared by all records (the snapshot never changes)

    def __call__(self, value: bytes | None, source: str, timestamp_ms: int | None) -> tuple[list[dict], list]:
        """``(priced orders, dead letters)`` of one record whose coordinates are ``source``."""
        normalize, pricing = self.normalize, self.pricing
        try:
            orders = normalize.parse_orders(value or b"", source=source, timestamp_ms=timestamp_ms,
                                            decode_avro=self.decode_avro)
        except normalize.InvalidOrder as invalid:
            return [], [self.DeadLetter(invalid.reason, invalid.detail, value or b"", source, self.stage.NORMALIZE_ORDERS)]
        except Exception as exc:  # noqa: BLE001 - as NormalizeOrders' DoFn: the parser failing is a dead letter
            return [], [self.DeadLetter(normalize.NORMALIZE_FAILED, f"{type(exc).__name__}: {str(exc)[:500]}",
                                        value or b"", source, self.stage.NORMALIZE_ORDERS)]
        priced, dead = [], []
        for index, order in enumerate(orders):
            order["source"] = f"{source}#{index}"
            try:
                priced.append(pricing.price_order(order, self.snapshot, self.zone, self.quantized))
            except pricing.UnpricedOrder as unpriced:
                dead.append(normalize.order_dead_letter(order, unpriced.reason, unpriced.detail, self.stage.PRICE_ORDERS))
        return priced, dead

    def priced_record(self, order: dict) -> tuple[bytes, bytes]:
        return order["order_id"].encode(), self.codec.encode(order)


def producer_config() -> dict:
    """``WriteToKafka``'s librdkafka producer settings, for every side."""
    from orderflow.io.kafka_write import DEFAULT_PRODUCER_CONFIG

    return dict(DEFAULT_PRODUCER_CONFIG)


def fetch_config() -> dict:
    """``ReadFromKafka``'s librdkafka fetch settings (sizes, waits, prefetch), for every side."""
    from orderflow.io.kafka_read import DEFAULT_CONSUMER_CONFIG

    return {k: v for k, v in DEFAULT_CONSUMER_CONFIG.items() if k.startswith(("fetch.", "max.partition.", "queued."))}


# --------------------------------------------------------------------------------------------------
# The sides (each in its own child process).
# --------------------------------------------------------------------------------------------------
def run_loop(settings: Settings, batch_size: int) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    work = Work(settings)
    topics = settings.topics
    producer = Producer({**producer_config(), "bootstrap.servers": settings.kafka_bootstrap})
    consumer = Consumer({**fetch_config(), "bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"peers-loop-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    partitions = list(consumer.list_topics(topics.orders, timeout=10).topics[topics.orders].partitions)
    consumer.assign([TopicPartition(topics.orders, p, 0) for p in partitions])
    open_partitions = set(partitions)

    def produce(topic, key, value, headers=None):
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)

    while open_partitions:
        for message in consumer.consume(batch_size, timeout=1.0):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                raise RuntimeError(message.error())
            source = f"{message.topic()}/{message.partition()}/{message.offset()}"
            priced, dead = work(message.value(), source, message.timestamp()[1])
            for order in priced:
                produce(topics.priced_orders, *work.priced_record(order))
            for letter in dead:
                produce(topics.orders_dead_letter, *letter.to_kafka())
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("undelivered records")
    consumer.close()


def run_beam(settings: Settings, batch_size: int, beam_args: list[str]) -> dict:
    from orderflow.pipelines import orders

    # The reference data is loaded once per worker and never reloaded (as in the peers): a bounded run
    # does not refresh it, and an order of an unknown asset does not reload it either.
    result = orders.run(["--bounded", "--orders_sinks=kafka", f"--trade_days={DAY}",
                         "--refdata_miss_reload_seconds=1e9", f"--orders_batch_size={batch_size}", *beam_args],
                        settings=settings)
    # Beam's DirectRunner tries Prism (downloading the binary unless --prism_location is given), then its
    # FnApiRunner, then its legacy BundleBasedDirectRunner, by what the graph needs: say which one ran.
    module = type(result).__module__.rsplit(".", 1)[-1]
    return {"runner": {"fn_runner": "FnApiRunner", "portable_runner": "Prism (portable)",
                       "direct_runner": "BundleBasedDirectRunner"}.get(module, module)}


def run_quix(settings: Settings, batch_size: int) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from quixstreams import Application, message_context
    from quixstreams.models.serializers import Serializer

    from orderflow.model.dead_letter import DeadLetter

    work = Work(settings)
    topics = settings.topics

    # Where each input partition ends: the app stops once it has processed every record there is.
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "peers-probe"})
    partitions = probe.list_topics(topics.orders, timeout=10).topics[topics.orders].partitions
    last = {p: probe.get_watermark_offsets(TopicPartition(topics.orders, p), timeout=10)[1] - 1 for p in partitions}
    probe.close()
    pending = {p for p, offset in last.items() if offset >= 0}

    def processed(topic: str, partition: int, offset: int) -> None:
        if offset >= last.get(partition, -1):
            pending.discard(partition)
            if not pending:
                app.stop()

    class PricedOrderAvro(Serializer):
        def __call__(self, value, ctx):
            return work.codec.encode(value)

    class RecordValue(Serializer):  # (key, value, headers) of DeadLetter.to_kafka() -> value
        def __call__(self, value, ctx):
            return value[1]

    app = Application(broker_address=settings.kafka_bootstrap, consumer_group=f"peers-quix-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", loglevel="WARNING", use_changelog_topics=False,
                      producer_extra_config=producer_config(), consumer_extra_config=fetch_config(),
                      on_message_processed=processed)
    source = app.topic(topics.orders, key_deserializer="bytes", value_deserializer="bytes")
    priced_topic = app.topic(topics.priced_orders, key_serializer="bytes", value_serializer=PricedOrderAvro())
    dead_topic = app.topic(topics.orders_dead_letter, key_serializer="bytes", value_serializer=RecordValue())

    def normalize_and_price(value, key, timestamp, headers):
        context = message_context()
        priced, dead = work(value, f"{context.topic}/{context.partition}/{context.offset}", timestamp)
        return priced + dead

    outcomes = app.dataframe(source).apply(normalize_and_price, metadata=True, expand=True)
    priced = outcomes.filter(lambda outcome: not isinstance(outcome, DeadLetter))
    priced.to_topic(priced_topic, key=lambda order: order["order_id"].encode())
    dead = outcomes.filter(lambda outcome: isinstance(outcome, DeadLetter)).apply(lambda letter: letter.to_kafka())
    dead = dead.set_headers(lambda record, key, timestamp, headers: record[2])
    dead.to_topic(dead_topic, key=lambda record: record[0])
    if pending:
        app.run()


def run_bytewax(settings: Settings, batch_size: int) -> None:
    from bytewax import operators as op
    from bytewax.connectors.kafka import KafkaSinkMessage
    from bytewax.connectors.kafka import operators as kop
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main

    from orderflow.model.dead_letter import DeadLetter

    work = Work(settings)
    topics = settings.topics
    brokers = [settings.kafka_bootstrap]

    def normalize_and_price(message):
        priced, dead = work(message.value, f"{message.topic}/{message.partition}/{message.offset}",
                            message.timestamp[1])
        return priced + dead

    def dead_letter_message(letter):
        key, value, headers = letter.to_kafka()
        return KafkaSinkMessage(key, value, headers=headers)

    flow = Dataflow("orders_peers")
    records = kop.input("read_orders", flow, brokers=brokers, topics=[topics.orders], tail=False, batch_size=batch_size,
                        add_config=fetch_config())
    op.raises("fail_on_kafka_error", records.errs)
    outcomes = op.flat_map("normalize_and_price", records.oks, normalize_and_price)
    split = op.branch("priced_or_dead", outcomes, lambda outcome: not isinstance(outcome, DeadLetter))
    priced = op.map("encode_priced", split.trues, lambda order: KafkaSinkMessage(*work.priced_record(order)))
    kop.output("publish_priced", priced, brokers=brokers, topic=topics.priced_orders, add_config=producer_config())
    dead = op.map("encode_dead_letter", split.falses, dead_letter_message)
    kop.output("publish_dead_letters", dead, brokers=brokers, topic=topics.orders_dead_letter,
               add_config=producer_config())
    cli_main(flow, workers_per_process=1)


def child(role: str, batch_size: int, beam_args: list[str], profile: str | None, py_spy: str | None) -> None:
    settings = load_settings()  # the parent hands them over in the environment
    profiler = start_profiler(py_spy, f"{profile}/{role}.txt") if profile else None
    started = time.perf_counter()
    if role == "beam":
        extra = run_beam(settings, batch_size, beam_args)
    else:
        extra = {"loop": run_loop, "quix": run_quix, "bytewax": run_bytewax}[role](settings, batch_size)
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        profiler.wait(60)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (big) parent process.
    with open("/proc/self/status") as status:
        peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"seconds": elapsed, "peak_mb": peak_mb, **(extra or {})}))


# --------------------------------------------------------------------------------------------------
# --profile: py-spy samples a side's process (the thread holding the GIL) and the stacks are put in stages.
# --------------------------------------------------------------------------------------------------
# Only the thread holding the GIL: a thread waiting for it would otherwise be sampled on whatever line it
# waits at (Beam's runner has several threads), which counts the same CPU second more than once.
PY_SPY_MODE = ["--gil", "--nonblocking"]


def start_profiler(py_spy: str, output: str) -> subprocess.Popen:
    """py-spy attached to this process: samples of the thread holding the GIL, taken without pausing it."""
    proc = subprocess.Popen([py_spy, "record", "--pid", str(os.getpid()), "--rate", "200", "--format", "raw",
                             "--full-filenames", *PY_SPY_MODE, "--subprocesses", "--output", output],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the work starts
    return proc


# (stage, function name or None, path fragment): a sample counts for the stage of its innermost frame
# that matches a rule, in this order of precedence per frame. Frames are "function (path:line)".
STAGE_RULES = [
    ("Avro decode (Avro input)", "_decode_order_avro", "orderflow/model/orders.py"),
    ("JSON parse (orjson)", "_parse_json", "orderflow/model/orders.py"),
    ("CSV parse", "_parse_csv", "orderflow/model/orders.py"),
    ("validate + normalise", None, "orderflow/model/orders.py"),
    ("validate + normalise", None, "orderflow/transforms/normalize_orders.py"),
    ("price (exact decimal)", None, "orderflow/model/pricing.py"),
    ("price (exact decimal)", None, "orderflow/transforms/price_orders.py"),
    ("Avro encode (PricedOrder)", "encode", "orderflow/model/avro.py"),
    ("Avro encode (PricedOrder)", "priced_record", "benchmarks/peers.py"),
    ("Avro encode (PricedOrder)", "process", "orderflow/pipelines/orders.py"),
    ("dead letters", None, "orderflow/model/dead_letter.py"),
    ("dead letters", None, "orderflow/io/dead_letter.py"),
    ("Kafka write", None, "orderflow/io/kafka_write.py"),
    ("Kafka read", None, "orderflow/io/kafka_read.py"),
    ("Kafka read", None, "orderflow/io/kafka_offsets.py"),
    ("reference data load", None, "orderflow/io/reference_data_store.py"),
    ("Beam: coders (element size sampling, stage boundaries)", None, "apache_beam/coders/"),
    ("Beam: bundles, DoFn calls", None, "apache_beam/"),  # "Beam: job start" outside of bundles (stage_of)
    ("Quix Streams", None, "quixstreams/"),
    ("Bytewax", None, "bytewax/"),
    ("Kafka client (confluent-kafka Python code)", None, "confluent_kafka/"),
]


def stage_of(frames: list[str]) -> str:
    """The stage of one sampled stack (root first): start-up if it imports, else its innermost frame that a
    rule claims."""
    if any(frame.startswith("_find_and_load ") for frame in frames):
        return "start-up: imports"
    for frame in reversed(frames):
        function, _, where = frame.partition(" (")
        for stage, name, fragment in STAGE_RULES:
            if fragment in where and (name is None or function.rpartition(".")[2] == name):
                if stage == "Beam: bundles, DoFn calls" and not any(
                        f.startswith("BundleProcessor.process_bundle ") for f in frames):
                    return "Beam: job start (graph, pickling, runner choice)"
                return stage
    return OWN_CODE


OWN_CODE = "the side's own code (e.g. the loop's consume/produce)"
NOT_WORK = ("start-up: imports", "reference data load", "Beam: job start (graph, pickling, runner choice)")


def stage_shares(path: pathlib.Path) -> collections.Counter:
    """Samples per stage of a py-spy raw file (one "frame;frame;... count" line per distinct stack)."""
    shares: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        shares[stage_of(frames)] += int(count)
    return shares


def print_profile(directory: pathlib.Path, records: int, sides: list[str]) -> None:
    for side in sides:
        path = directory / f"{side}.txt"
        if not path.is_file():
            continue
        shares = stage_shares(path)
        total = sum(shares.values())
        work = total - sum(shares[stage] for stage in NOT_WORK)
        print(f"\nprofile of {LABELS[side]} ({total:,} samples at 200/s of the thread holding the GIL; "
              f"raw stacks: {path})")
        print(f"  {'stage':<54} {'share':>6} {'of work':>8} {'us/record':>10}")
        for stage, samples in shares.most_common():
            of_work = "" if stage in NOT_WORK else f"{samples / work:8.1%}"
            print(f"  {stage:<54} {samples / total:6.1%} {of_work:>8} {samples / 200 / records * 1e6:10.1f}")


# --------------------------------------------------------------------------------------------------
# The parent: stack, input, sides, read-back and comparison.
# --------------------------------------------------------------------------------------------------
def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` (all partitions, to their end) as ``(key, value, headers)``."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peers-read-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    open_partitions, records = set(partitions), []
    while open_partitions:
        for message in consumer.consume(10_000, timeout=1.0):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                raise RuntimeError(message.error())
            records.append((message.key(), message.value(), tuple(message.headers() or ())))
    consumer.close()
    return records


def outcome(settings: Settings) -> dict:
    """What a side wrote, comparable across sides: multisets of decoded PricedOrders and of dead letters."""
    from orderflow.clients import avro_codec

    codec = avro_codec(settings, "priced_orders")
    priced = collections.Counter()
    for key, value, _ in read_topic(settings.kafka_bootstrap, settings.topics.priced_orders):
        order = codec.decode(value)
        if key != order["order_id"].encode():
            raise AssertionError(f"priced order keyed {key!r}, not by its order id {order['order_id']!r}")
        priced[tuple(order[field] for field in ("order_id", "client_token", "asset", "quantity", "event_time",
                                                "source_format", "trade_day", "pricing_code", "price", "total"))] += 1
    dead = collections.Counter(read_topic(settings.kafka_bootstrap, settings.topics.orders_dead_letter))
    return {"priced": priced, "dead": dead}


def differences(ours: dict, reference: dict) -> list[str]:
    lines = []
    for part in ("priced", "dead"):
        extra, missing = ours[part] - reference[part], reference[part] - ours[part]
        if extra or missing:
            lines.append(f"{part}: {sum(extra.values())} not in the loop's output, {sum(missing.values())} missing; "
                         f"e.g. extra {list(extra)[:1]}, missing {list(missing)[:1]}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000, help="records to generate (default 300,000)")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="Kafka records per batch: Beam's --orders_batch_size, the loop's consume() and "
                             "Bytewax's source batch_size (Quix Streams consumes one message at a time)")
    parser.add_argument("--only", default=",".join(SIDES), help=f"comma list of sides to run, from {SIDES}; "
                        "the loop always runs (it is the reference)")
    parser.add_argument("--beam-args", default="", help="extra pipeline options for the Beam side, e.g. "
                        "'--runner=PrismRunner --prism_location=.local/bin/prism' (default: Beam's DirectRunner)")
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON),
                        help="interpreter of the Quix Streams side (default: .local/peers-venv, `make peers-venv`)")
    parser.add_argument("--profile", metavar="DIR", help="sample each side with py-spy (raw stacks into DIR) and "
                        "print where its CPU time goes, by stage; slows the sides, so not for measuring rates")
    parser.add_argument("--py-spy", default=str(pathlib.Path(sys.executable).with_name("py-spy")), help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args.role, args.batch_size, args.beam_args.split(), args.profile, args.py_spy)
        return 0
    if args.profile:
        pathlib.Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.profile = str(pathlib.Path(args.profile).resolve())
    sides = ["loop"] + [s for s in SIDES[1:] if s in {x.strip() for x in args.only.split(",")}]
    if "quix" in sides and not pathlib.Path(args.peers_python).is_file():
        print(f"{args.peers_python} does not exist: run `make peers-venv` (or --only without quix)", file=sys.stderr)
        return 2

    from orderflow_dev.local import temporary_stack

    with temporary_stack("bench-peers-", ROOT / ".local", timeout=120, only=("kafka", "memcached", "dynamodb", "registry")) as stack:
        base, counts, took = fill_orders_topic(stack, args.records, DAY)
        run_id = base.topics.orders.rsplit("-", 1)[1]
        print(f"produced {args.records:,} records in {took:.1f}s: {counts['order']:,} orders, "
              f"{counts['duplicate']:,} duplicates, {counts['malformed']:,} malformed; "
              + ", ".join(f"{k[7:]} {v:,}" for k, v in sorted(counts.items()) if k.startswith("format:")), flush=True)

        results, failures = {}, []
        for side in sides:
            settings = dataclasses.replace(base, topics=dataclasses.replace(
                base.topics, priced_orders=f"priced-{side}-{run_id}", orders_dead_letter=f"dlq-{side}-{run_id}"))
            bootstrap.create_topics(settings.kafka_bootstrap,
                                    [settings.topics.priced_orders, settings.topics.orders_dead_letter],
                                    settings.topic_partitions)
            profiling = ["--profile", args.profile, "--py-spy", args.py_spy] if args.profile else []
            measured = run_side(__file__, side, settings, ["--batch-size", str(args.batch_size),
                                                           f"--beam-args={args.beam_args}", *profiling],
                                python=args.peers_python if side == "quix" else None)
            if measured is None:
                failures.append(f"{side}: the run failed (its output is above)")
                continue
            written = outcome(settings)
            out = sum(written["priced"].values()) + sum(written["dead"].values())
            if out != args.records:
                failures.append(f"{side}: {out:,} priced + dead letters for {args.records:,} records in")
            if side != "loop" and "loop" in results:
                failures += [f"{side}: {line}" for line in differences(written, results["loop"]["outcome"])]
            measured["outcome"] = written
            results[side] = measured
            print(f"{side:>8}: {measured['seconds']:7.2f}s, {sum(written['priced'].values()):,} priced, "
                  f"{sum(written['dead'].values()):,} dead letters"
                  + (f" (runner: {measured['runner']})" if "runner" in measured else ""), flush=True)

    loop = results.get("loop")
    print(f"\n{'implementation':<30} {'records/s':>10} {'x loop':>7} {'peak RSS':>9}")
    for side, measured in results.items():
        rate = args.records / measured["seconds"]
        ratio = f"{loop['seconds'] / measured['seconds']:.2f}x" if loop else "-"
        print(f"{LABELS[side]:<30} {rate:>10,.0f} {ratio:>7} {measured['peak_mb']:>6.0f} MB")
    if args.profile:
        print_profile(pathlib.Path(args.profile), args.records, list(results))
    if failures:
        print("\nFAILED: the sides did not do the same work:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"\nidentical output on every side: {len(results)} sides, {args.records:,} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
