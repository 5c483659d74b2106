"""Orders pipeline throughput: the bounded Beam pipeline beside a hand-written loop (and, on request, the streaming
pipeline draining the same records as a backlog), in one run.

Both read the same generated topic (default 1,000,000 records: four formats, 5% duplicates, 2% malformed)
with every sink live on a local stack started here (free ports): priced orders and dead letters to
Kafka, orders + exact daily volumes to Postgres, volumes to DynamoDB (dynalite), windowed alarms recorded in
Postgres and sent through the SMS outbox (SNS on moto). The baseline is a plain confluent-kafka +
psycopg + boto3 loop with identical semantics: it reuses the same parsing, pricing data, SQL statements
and DynamoDB/outbox functions, only without Beam. Each side runs in its own process, on its own
database, topics and tables, and reports its wall time and peak RSS; the results are checked equal.

``--sides`` picks the sides (default ``bounded,hand``, run in the order bounded, streaming, hand):

- ``bounded``: ``orders.run(["--bounded", ...])`` in a child process (Beam's default runner), wall time from the
  call to its return (the pipeline's start-up included), peak RSS = the child's VmHWM;
- ``streaming`` (issue 26 goal 5, the backlog): the streaming pipeline as users run it, ``python -m
  orderflow.pipelines.orders`` on Prism started detached (``orderflow_dev.local.processes.DetachedProcess``, its
  Prism a child of it) with every record already waiting, from the earliest offsets under a consumer group of its
  own, with the bounded side's options (reference day, alarm rules, batch size; the rest at the streaming
  defaults, e.g. one batch per Postgres transaction). Measured from the start to the group's committed lag
  reaching 0 (computed as the API's ``/metrics`` does, read every ``--poll-seconds``), so the start-up (Prism,
  the SDK worker, the first bundle read, processed and its offsets committed) is included; "without the start-up"
  is the records committed after the first commit was seen over the time from then to lag 0. Peak RSS: the
  pipeline's process tree (the Python process, which is also the SDK worker: Prism's LOOPBACK environment, plus
  the Prism it starts), the sum of their VmRSS sampled every ``--poll-seconds``, and the Python process alone;
  each process' VmHWM is printed too. At lag 0 it is stopped with SIGTERM (it drains) and its sinks are checked;
  the run fails when it did not drain or exit 0;
- ``hand``: ``hand_loop`` in a child process, as ``bounded``.

The ratios printed: hand over bounded time (target >= 0.5x), and streaming over bounded rate with and without the
streaming start-up (target >= 0.9x), beside the streaming tree's peak RSS (target < 600 MB).

    .venv/bin/python benchmarks/orders_pipeline.py --n 1000000
    .venv/bin/python benchmarks/orders_pipeline.py --n 1000000 --sides bounded,streaming   # the backlog goal
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import tempfile
import time
import uuid
import zoneinfo
from decimal import Decimal

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import cpu_seconds, fill_orders_topic, process_tree, rss_mb, run_side  # noqa: E402  (beside this script)

from orderflow import bootstrap  # noqa: E402
from orderflow.config import Settings, load_settings, settings_environment  # noqa: E402
from orderflow.io import reference_data_store  # noqa: E402

DAY = datetime.date(2026, 11, 10)
BATCHES_PER_TRANSACTION = 20


def alarm_rules(n: int) -> list[dict]:
    """Thresholds scaled with the number of records so that some windows fire (the top clients' day,
    the busiest hours: an order averages ~1,400 BRL, the session lasts 7 hours)."""
    return [
        {"id": "bench-client-day", "scope": "client", "window": "day", "threshold": str(n * 100)},
        {"id": "bench-all-1h", "scope": "all", "window": {"size_seconds": 3600, "period_seconds": 900},
         "threshold": str(n * 220)},
    ]


# --------------------------------------------------------------------------------------------------
# The hand-written baseline.
# --------------------------------------------------------------------------------------------------
def hand_loop(settings: Settings, batch_size: int, rules_json: str, *, days: list | None = None,
              stop=None, batches_per_transaction: int = BATCHES_PER_TRANSACTION, consume_timeout: float = 1.0) -> None:
    """Reads the whole topic and returns; or, given ``stop`` (a ``threading.Event``), streams until it is set
    (benchmarks/streaming_latency.py: one batch per transaction, a short ``consume_timeout``)."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    from orderflow.clients import avro_codec, aws_client, aws_endpoint
    from orderflow.io.dynamodb_volume import DailyVolumeTable
    from orderflow.io.postgres_orders import OrdersWriter
    from orderflow.io.sns_alarms import record_alarms, relay_sms_outbox
    from orderflow.model.alarms import Alarm, parse_rules
    from orderflow.model.dead_letter import DeadLetter
    from orderflow.model.orders import InvalidOrder, encode_order_avro, parse_orders

    zone = zoneinfo.ZoneInfo(settings.exchange_timezone)
    reference = reference_data_store.read_reference_data(settings, days or [DAY])
    rules = parse_rules(rules_json)
    codec = avro_codec(settings, "priced_orders")
    decode_avro = avro_codec(settings, "orders").decode
    scale = Decimal("0.000001")
    conn = psycopg.connect(settings.postgres_dsn)
    writer = OrdersWriter(settings.postgres_dsn, DailyVolumeTable(aws_endpoint(settings, "dynamodb"), settings.client_volume_table).write, batches_per_transaction)
    sns = aws_client(settings, "sns")
    relay_sms_outbox(conn, sns)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "batch.num.messages": 10_000, "batch.size": 1024 * 1024,
                         "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 512 * 1024})
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"hand-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100, "max.partition.fetch.bytes": 16 * 1024 * 1024,
                         "fetch.max.bytes": 64 * 1024 * 1024, "queued.min.messages": 500_000})
    topic = settings.topics.orders
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    open_partitions = set(partitions)
    window_totals: dict[tuple, Decimal] = collections.defaultdict(Decimal)
    fired: set[tuple] = set()
    day_starts: dict = {}

    def produce_all(topic_name, items):
        for key, value, *headers in items:
            while True:
                try:
                    producer.produce(topic_name, value, key, headers=headers[0] if headers else None)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)

    def count_alarms(owned):
        touched = set()
        for order in owned:
            event_s = order["event_time"].timestamp()
            for rule in rules:
                scope = order["client_token"] if rule.scope == "client" else "*"
                if rule.window == "day":
                    start = day_starts.get(order["trade_day"])
                    if start is None:
                        d = order["trade_day"]
                        start = day_starts[d] = datetime.datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()
                    starts = [(start, start + 86400)]  # no DST in São Paulo since 2019
                else:
                    last = event_s - event_s % rule.period_seconds
                    starts = [(s, s + rule.size_seconds)
                              for s in range(int(last), int(event_s - rule.size_seconds), -rule.period_seconds)]
                for start, end in starts:
                    key = (rule.rule_id, scope, start, end)
                    window_totals[key] += order["total"]
                    touched.add(key)
        thresholds = {rule.rule_id: rule.threshold for rule in rules}
        alarms = []
        for key in touched:
            rule_id, scope, start, end = key
            if key not in fired and window_totals[key] >= thresholds[rule_id]:
                fired.add(key)
                utc = datetime.timezone.utc
                alarms.append(Alarm(rule_id, scope, datetime.datetime.fromtimestamp(start, utc),
                                    datetime.datetime.fromtimestamp(end, utc), window_totals[key], thresholds[rule_id]))
        if alarms and record_alarms(conn, alarms)[1]:
            relay_sms_outbox(conn, sns)

    background = ThreadPoolExecutor(max_workers=1)
    in_flight = None
    while (not stop.is_set()) if stop is not None else open_partitions:
        messages = consumer.consume(batch_size, timeout=consume_timeout)
        priced, dead = [], []
        for message in messages:
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                raise RuntimeError(message.error())
            source = f"{message.topic()}/{message.partition()}/{message.offset()}"
            try:
                orders = parse_orders(message.value(), source=source, timestamp_ms=message.timestamp()[1],
                                      decode_avro=decode_avro)
            except InvalidOrder as invalid:
                dead.append(DeadLetter(invalid.reason, invalid.detail, message.value(), source, "normalize_orders"))
                continue
            for index, order in enumerate(orders):
                order["source"] = f"{source}#{index}"
                day = order["event_time"].astimezone(zone).date()
                entry = reference.get(str(day), {}).get(order["asset"])
                reason = ("unknown_asset" if entry is None else "no_pricing_code" if entry[0] is None
                          else "no_price" if entry[1] is None else None)
                if reason:
                    dead.append(DeadLetter(reason, reason, encode_order_avro(order), source, "price_orders"))
                    continue
                price = entry[1].quantize(scale)
                priced.append({**order, "trade_day": day, "pricing_code": entry[0], "price": price,
                               "total": price * order["quantity"]})
        produce_all(settings.topics.priced_orders, [(o["order_id"].encode(), codec.encode(o)) for o in priced])
        produce_all(settings.topics.orders_dead_letter, [d.to_kafka() for d in dead])
        if not priced:
            continue
        # Same overlap as the Beam DoFn: Postgres/DynamoDB work on this batch on a background thread
        # while the loop parses and prices the next one; its owned orders are handled one batch later.
        if in_flight is not None:
            count_alarms(in_flight.result()[0])
        in_flight = background.submit(writer.write, priced)
    if in_flight is not None:
        count_alarms(in_flight.result()[0])
    background.submit(writer.commit).result()
    background.submit(writer.close).result()
    background.shutdown()
    if producer.flush(120):
        raise RuntimeError("undelivered records")
    consumer.close()
    conn.close()


# --------------------------------------------------------------------------------------------------
# One side in a child process.
# --------------------------------------------------------------------------------------------------
def pipeline_args(n: int, batch_size: int) -> list[str]:
    """The orders pipeline's options both Beam sides run with (the same reference day, rules and batches)."""
    return [f"--trade_days={DAY}", f"--alarm_rules={json.dumps(alarm_rules(n))}", f"--orders_batch_size={batch_size}"]


def child(role: str, batch_size: int, n: int, beam_args: list[str]) -> None:
    settings = load_settings()  # the parent hands them over in the environment
    started = time.perf_counter()
    if role == "bounded":
        from orderflow.pipelines import orders

        orders.run(["--bounded", *pipeline_args(n, batch_size), *beam_args], settings=settings)
    else:
        hand_loop(settings, batch_size, json.dumps(alarm_rules(n)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "peak_mb": rss_mb(os.getpid(), peak=True),
                      "cpu_seconds": cpu_seconds(os.getpid())}))


# --------------------------------------------------------------------------------------------------
# The streaming pipeline on a backlog, as users run it.
# --------------------------------------------------------------------------------------------------
def committed_lag(admin, group: str, topic: str) -> int:
    """The records of ``topic`` past ``group``'s committed offsets, as the API's ``/metrics`` computes it."""
    from orderflow.api.pipelines import consumer_lag

    return sum(partition.lag for partition in consumer_lag(admin, group, [topic]))


def streaming_side(settings: Settings, n: int, batch_size: int, beam_args: list[str], workdir: pathlib.Path,
                   poll: float, timeout: float) -> dict | None:
    """Starts ``python -m orderflow.pipelines.orders`` streaming on Prism (``DetachedProcess``, as the developer
    tools start it) with the whole topic waiting, from the earliest offsets under a consumer group of its own,
    and watches it every ``poll`` s until the group's committed lag is 0; then stops it (SIGTERM: it drains).
    Returns the measures, or None (after printing why and the log's end) when it died or ran out of ``timeout``.

    Memory: every ``poll`` s the VmRSS of each process of the pipeline's tree (the Python process, which is also
    the SDK worker: Prism's LOOPBACK environment, and the Prism it starts) is read and summed: ``peak_tree_mb`` is
    the highest sum seen, ``peak_python_mb`` the Python process' highest; ``hwm_mb`` is each process' own VmHWM
    (kernel high-water mark) read at lag 0, whose sum bounds the tree's true peak from above."""
    import psycopg
    from confluent_kafka.admin import AdminClient

    from orderflow_dev.local.processes import RUNNING, DetachedProcess

    group = f"bench-streaming-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.topics.orders
    waiting = committed_lag(admin, group, topic)
    pipeline = DetachedProcess("orders", workdir)
    started = time.perf_counter()
    pid = pipeline.start([f"--orders_group_id={group}", "--orders_start=earliest", *pipeline_args(n, batch_size),
                          *beam_args], env=settings_environment(settings))
    first: tuple[float, int] | None = None  # (seconds after the start, lag) when a commit was first seen
    peak_tree = peak_python = 0.0
    hwm: dict[int, tuple[str, float]] = {}
    cpu: dict[int, tuple[str, float]] = {}
    try:
        while True:
            tree_rss = 0.0
            for member, name in process_tree(pid).items():
                try:
                    rss = rss_mb(member)
                    hwm[member] = (name, rss_mb(member, peak=True))
                    cpu[member] = (name, cpu_seconds(member))
                except FileNotFoundError:  # ended meanwhile
                    continue
                tree_rss += rss
                if member == pid:
                    peak_python = max(peak_python, rss)
            peak_tree = max(peak_tree, tree_rss)
            lag = committed_lag(admin, group, topic)
            elapsed = time.perf_counter() - started
            if first is None and lag < waiting:
                first = (elapsed, lag)
            if lag == 0:
                break
            if pipeline.status() != RUNNING or elapsed > timeout:
                print(f"streaming: {'died' if pipeline.status() != RUNNING else 'timed out'} after {elapsed:.0f} s "
                      f"with a lag of {lag:,}; log {pipeline.log_path}:\n{pipeline.log_tail(40)}", file=sys.stderr)
                return None
            time.sleep(poll)
        with psycopg.connect(settings.postgres_dsn) as conn:
            stored_at_zero = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    finally:
        stopping = time.perf_counter()
        how = pipeline.stop(timeout=120)
        stop_seconds = time.perf_counter() - stopping
    drained = "drained in" in pipeline.log_tail(30)  # runner.wait_until_stopped's line: every read committed
    by_name: dict[str, dict[str, float]] = {"hwm_mb": {}, "cpu_seconds": {}}
    for key, values in (("hwm_mb", hwm), ("cpu_seconds", cpu)):
        for name, value in values.values():
            by_name[key][name] = by_name[key].get(name, 0.0) + value
    startup, lag_then = first
    return {"seconds": elapsed, "waiting": waiting, "startup": startup,
            "steady_rate": lag_then / (elapsed - startup) if elapsed > startup else None,
            "peak_tree_mb": peak_tree, "peak_python_mb": peak_python, **by_name, "stored_at_lag_0": stored_at_zero,
            "stop": how, "drained": drained, "stop_seconds": stop_seconds, "exit_status": pipeline.exit_status}


def isolated(base: Settings, pg_admin_dsn: str, name: str) -> Settings:
    import psycopg

    database = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    suffix = f"{name}-{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(
        base, postgres_dsn=base.postgres_dsn.rsplit("/", 1)[0] + f"/{database}",
        topics=dataclasses.replace(base.topics, priced_orders=f"priced-{suffix}", orders_dead_letter=f"dlq-{suffix}"),
        client_volume_table=f"volume-{suffix}", alarm_sns_topic=f"alarms-{suffix}")
    bootstrap.migrate(settings.postgres_dsn)
    bootstrap.create_topics(settings.kafka_bootstrap, [settings.topics.priced_orders, settings.topics.orders_dead_letter],
                            settings.topic_partitions)
    bootstrap.create_dynamodb_tables(settings)
    bootstrap.create_sns_topic(settings)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES ('+5511999990000', NULL)")
    return settings


def outcome(settings: Settings) -> dict:
    import psycopg

    from orderflow.clients import aws_client

    with psycopg.connect(settings.postgres_dsn) as conn:
        orders = conn.execute("SELECT count(*), sum(total) FROM orders").fetchone()
        alarms = conn.execute("SELECT rule_id, scope, window_start FROM alarms ORDER BY 1, 2, 3").fetchall()
        sent = conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NOT NULL").fetchone()[0]
    client = aws_client(settings, "dynamodb")
    volumes, kwargs = {}, {}
    while True:
        page = client.scan(TableName=settings.client_volume_table, **kwargs)
        volumes.update({i["client_token"]["S"]: (Decimal(i["total"]["N"]), int(i["order_count"]["N"]))
                        for i in page["Items"]})
        if "LastEvaluatedKey" not in page:
            break
        kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    return {"orders": orders, "alarms": [tuple(map(str, a)) for a in alarms], "sms_sent": sent, "volumes": volumes}


SIDES = ("bounded", "streaming", "hand")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records to generate (default 1,000,000)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="Kafka records per batch, every side")
    parser.add_argument("--sides", default="bounded,hand",
                        help=f"comma list of {', '.join(SIDES)} (run in that order; default bounded,hand)")
    parser.add_argument("--only", choices=["beam", "hand"], help="the earlier spelling of --sides bounded / hand")
    parser.add_argument("--beam-args", default="", help="extra pipeline options for the Beam sides, e.g. "
                        "'--direct_num_workers=2 --direct_running_mode=multi_processing'")
    parser.add_argument("--poll-seconds", type=float, default=0.25,
                        help="streaming: how often its lag and memory are read (default 0.25 s)")
    parser.add_argument("--streaming-timeout", type=float, default=1800.0,
                        help="streaming: give up when the lag is not 0 this long after the start (default 1800 s)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args.role, args.batch_size, args.n, args.beam_args.split())
        return 0
    sides = [{"beam": "bounded"}.get(args.only, args.only)] if args.only else args.sides.split(",")
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; choose among {', '.join(SIDES)}")

    from orderflow_dev.local import temporary_stack

    with temporary_stack("bench-orders-", ROOT / ".local", timeout=120) as stack, \
            tempfile.TemporaryDirectory(prefix="bench-orders-", dir=ROOT / ".local") as workdir:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)",
              flush=True)
        base, counts, took = fill_orders_topic(stack, args.n, DAY)
        print(f"generated and produced {args.n:,} records in {took:.1f}s: "
              f"{counts['order']:,} orders, {counts['duplicate']:,} duplicates, {counts['malformed']:,} malformed",
              flush=True)
        admin_dsn = base.postgres_dsn.rsplit("/", 1)[0] + "/postgres"
        results = {}
        for role in (side for side in SIDES if side in sides):
            settings = isolated(base, admin_dsn, role)
            if role == "streaming":
                measured = streaming_side(settings, args.n, args.batch_size, args.beam_args.split(),
                                          pathlib.Path(workdir), args.poll_seconds, args.streaming_timeout)
            else:
                measured = run_side(__file__, role, settings, ["--batch-size", str(args.batch_size), "--n",
                                                               str(args.n), f"--beam-args={args.beam_args}"])
            if measured is None:
                return 1
            measured["outcome"] = outcome(settings)
            results[role] = measured
            rate = args.n / measured["seconds"]
            done = (f"orders={measured['outcome']['orders'][0]:,} alarms={len(measured['outcome']['alarms'])}"
                    f" sms={measured['outcome']['sms_sent']}")
            if role != "streaming":
                print(f"{role:>9}: {measured['seconds']:8.1f}s  {rate:10,.0f} records/s  peak RSS "
                      f"{measured['peak_mb']:7.0f} MB  CPU {measured['cpu_seconds']:7.1f} s  {done}", flush=True)
                continue
            steady = measured["steady_rate"]
            print(f"{role:>9}: lag 0 after {measured['seconds']:8.1f}s  {rate:10,.0f} records/s (start-up included); "
                  f"start-up (start -> first commit) {measured['startup']:.1f} s, then "
                  f"{f'{steady:,.0f}' if steady else '-'} records/s (without the start-up)\n"
                  f"{'':>11}peak RSS: pipeline tree {measured['peak_tree_mb']:.0f} MB (sum of its processes' RSS "
                  f"sampled every {args.poll_seconds:g} s), Python (SDK worker) process {measured['peak_python_mb']:.0f}"
                  f" MB; VmHWM per command {json.dumps({k: round(v) for k, v in measured['hwm_mb'].items()})}\n"
                  f"{'':>11}CPU s per command {json.dumps({k: round(v, 1) for k, v in measured['cpu_seconds'].items()})}"
                  f"; orders in Postgres at lag 0: {measured['stored_at_lag_0']:,}; stop: {measured['stop']}"
                  f"{' (drained)' if measured['drained'] else ' (NOT drained)'} in "
                  f"{measured['stop_seconds']:.1f} s, exit status {measured['exit_status']}; {done}", flush=True)
        outcomes = [measured["outcome"] for measured in results.values()]
        same = all(o == outcomes[0] for o in outcomes)
        if "bounded" in results and "hand" in results:
            ratio = results["hand"]["seconds"] / results["bounded"]["seconds"]
            print(f"ratio bounded/hand throughput: {ratio:.2f}x  (target >= 0.5x)")
        if "bounded" in results and "streaming" in results:
            bounded, streaming = results["bounded"], results["streaming"]
            steady = streaming["steady_rate"]
            without = f"{steady / (args.n / bounded['seconds']):.2f}x" if steady else "-"
            print(f"ratio streaming/bounded rate: {bounded['seconds'] / streaming['seconds']:.2f}x, start-up "
                  f"included; {without} without the streaming start-up (the bounded side's own is included); "
                  f"target >= 0.9x")
        if "streaming" in results:
            print(f"streaming peak RSS, pipeline tree: {results['streaming']['peak_tree_mb']:.0f} MB (target < 600 MB)")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if len(results) > 1:
            print(f"identical results ({', '.join(results)}): {same}")
        clean = "streaming" not in results or (results["streaming"]["exit_status"] == 0 and results["streaming"]["drained"])
        return 0 if same and clean else 1

if __name__ == "__main__":
    sys.exit(main())
