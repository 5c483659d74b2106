"""The orders pipeline: ``ordem-ativo`` -> normalise -> price -> publish + Postgres + DynamoDB + alarms.

    ReadFromKafka(batch_size)            lists of KafkaRecords, one DoFn call per batch from here on
      -> NormalizeOrders                 canonical Orders | dead letters
      -> PriceOrders(reference data)     PricedOrders     | dead letters   (memcached+DynamoDB, cached per worker)
      -> WriteToKafka(ordem-ativo-precificado)           every priced record, Avro PricedOrder, key order_id
      -> WriteOrdersToPostgres           orders (idempotent) + exact daily volumes in one statement, the
                                         absolute volumes put to DynamoDB under the rows' locks, and in the
                                         same transaction the inserted orders added to the alarm windows'
                                         totals (a crossing records the alarm + its SMS in the outbox) | dead
                                         letters of orders a sink refused because of their data
           -> RelaySmsOutbox (SNS)        when messages were queued, at start and every --outbox_relay_seconds
    dead letters -> WriteToKafka(ordem-ativo-dlq) with the reason in headers

``--orders_sinks=kafka`` keeps the two Kafka outputs only (no Postgres, DynamoDB, alarms or SMS).

``--bounded`` reads every partition to its end and finishes; otherwise it streams (Flink/Prism), the
reference data refreshing every ``--refdata_refresh_seconds`` and the outbox relay ticking every
``--outbox_relay_seconds``. ``python -m orderflow.pipelines.orders --bounded`` runs it.
"""
from __future__ import annotations

import datetime

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode

from orderflow.clients import avro_codec, aws_endpoint
from orderflow.config import Settings, load_settings, with_overrides
from orderflow.io.alarm_windows import AlarmWindows
from orderflow.io.avro import RetryingDecoder
from orderflow.io.dead_letter import dead_letter_to_kafka
from orderflow.io.dynamodb_volume import DailyVolumeTable
from orderflow.io.kafka_read import ReadFromKafka, StartPosition
from orderflow.io.kafka_write import WriteToKafka
from orderflow.io.postgres_orders import WriteOrdersToPostgres
from orderflow.io.reference_data_cache import ReferenceData
from orderflow.io.retry import call_with_retry
from orderflow.io.sns_alarms import RelaySmsOutbox
from orderflow.model.alarms import DEFAULT_RULES_JSON, parse_rules
from orderflow.model.avro import AvroCodec
from orderflow.model.orders import MAX_KEY_BYTES, MAX_QUANTITY, OrderLimits
from orderflow.pipelines.progress import ProgressOptions, ProgressTarget
from orderflow.pipelines.runner import RunModeOptions, command_line, run_pipeline
from orderflow.pipelines.summary import (
    ORDERS_REFUSED,
    ORDERS_STORED,
    SummaryOptions,
    metric_key,
    orders_summary,
    report_run,
    streaming_summary,
)
from orderflow.transforms.normalize_orders import RECORDS_IN, NormalizeOrders
from orderflow.transforms.price_orders import ORDERS_PRICED, PriceOrders


class OrdersOptions(PipelineOptions):
    """Knobs of the orders pipeline. Endpoints and names default to ``load_settings()`` (environment)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--orders_topic", default=None, help="input topic (default: settings)")
        parser.add_argument("--orders_start", default=None,
                            help="earliest | latest | committed | ISO time | topic:p=o,...; default: "
                                 "earliest when --bounded (a replay of the topic), else the committed "
                                 "offsets of --orders_group_id (earliest where none)")
        parser.add_argument("--orders_group_id", default="orderflow-orders", help="consumer group")
        parser.add_argument("--orders_batch_size", type=int, default=10_000,
                            help="most Kafka records per batch element (all work is per batch); the "
                                 "benchmarked size, a streaming read emits what it has without waiting")
        parser.add_argument("--orders_max_read_seconds", type=float, default=1.0,
                            help="streaming: how long one read of a partition goes on at most before it hands the "
                                 "rest back to the runner, while it is behind (a backlog: large bundles). A read "
                                 "that has caught up hands back at once, so a trickle is not held this long "
                                 "(benchmarks/README.md, orders streaming on Prism)")
        parser.add_argument("--orders_out_of_order_slack_seconds", type=float, default=0.0,
                            help="streaming: how far behind the latest record time of its partition an order's "
                                 "Kafka timestamp may be and still be on time (the read's watermark trails by "
                                 "this much); later ones are late for the alarm windows")
        parser.add_argument("--orders_batches_per_transaction", type=int, default=None,
                            help="batches per Postgres transaction (and DynamoDB flush); default 20 when "
                                 "--bounded, 1 when streaming (short row locks, no cross-batch deadlocks)")
        parser.add_argument("--trade_days", default="",
                            help="comma list of YYYY-MM-DD whose reference data to load (default: today "
                                 "and --refdata_lookback_days before, in the exchange time zone)")
        parser.add_argument("--refdata_lookback_days", type=int, default=1,
                            help="without --trade_days: how many days before today to load as well")
        parser.add_argument("--refdata_refresh_seconds", type=float, default=300.0,
                            help="streaming: reload the reference data this often")
        parser.add_argument("--refdata_miss_reload_seconds", type=float, default=10.0,
                            help="an order whose trading day or asset the reference data lacks reloads it first, "
                                 "at most this often (a new day after midnight, an asset listed during the day)")
        parser.add_argument("--alarm_rules", default=DEFAULT_RULES_JSON,
                            help="JSON list of alarm rules, or @path to a JSON file (see orderflow/model/alarms.py)")
        parser.add_argument("--alarm_backfill_seconds", type=int, default=3600,
                            help="a rule that is new or whose windows changed (a redeploy with other rules) is "
                                 "computed from the stored orders over the open windows and those that ended at "
                                 "most this long before the start")
        parser.add_argument("--outbox_relay_seconds", type=float, default=30.0,
                            help="streaming: also drain the SMS outbox this often")
        parser.add_argument("--order_max_event_age_days", type=float, default=3660.0,
                            help="orders whose event time is older than this are dead letters "
                                 "(event_time_out_of_range)")
        parser.add_argument("--order_max_event_lead_hours", type=float, default=24.0,
                            help="orders whose event time is further ahead of now are dead letters")
        parser.add_argument("--order_max_key_bytes", type=int, default=MAX_KEY_BYTES,
                            help="most UTF-8 bytes of a client token or order id; keep it well under the "
                                 "sinks' key limits (DynamoDB 2,048 B, Postgres index row 2,704 B)")
        parser.add_argument("--order_max_quantity", type=int, default=MAX_QUANTITY, help="largest quantity")
        parser.add_argument("--orders_sinks", choices=("all", "kafka"), default="all",
                            help="kafka: publish priced orders and dead letters to Kafka only, without Postgres, "
                                 "DynamoDB, alarms or SMS (the compute path alone, as benchmarks/peers.py "
                                 "measures it beside Quix Streams and Bytewax); default all")
        parser.add_argument("--orders_postgres_dsn", default=None, help="default: settings")
        parser.add_argument("--orders_kafka_bootstrap", default=None, help="default: settings")


def order_limits(options: PipelineOptions) -> OrderLimits:
    """The edge validation's limits from the options."""
    opts = options.view_as(OrdersOptions)
    return OrderLimits(max_key_bytes=opts.order_max_key_bytes, max_quantity=opts.order_max_quantity,
                       max_event_age=datetime.timedelta(days=opts.order_max_event_age_days),
                       max_event_lead=datetime.timedelta(hours=opts.order_max_event_lead_hours))


def orders_settings(options: PipelineOptions, settings: Settings | None = None) -> Settings:
    """``settings`` (default: from the environment) with the endpoints and topic the options override, as
    ``presence_settings`` does for the presence pipeline: options win over settings, however they came."""
    opts = options.view_as(OrdersOptions)
    return with_overrides(settings or load_settings(), topics={"orders": opts.orders_topic},
                          postgres_dsn=opts.orders_postgres_dsn, kafka_bootstrap=opts.orders_kafka_bootstrap)


class _EncodePricedFn(beam.DoFn):
    """A batch of PricedOrders -> one list of ``(order_id, Avro PricedOrder)`` for WriteToKafka."""

    def __init__(self, codec: AvroCodec, retry_seconds: float):
        self.codec = codec
        self.retry_seconds = retry_seconds

    def setup(self):
        self._registered = False

    def process(self, priced):
        if not self._registered:  # the schema's id, looked up once (retried while the registry is down), then cached
            call_with_retry("registering the PricedOrder schema", self.codec.header, self.retry_seconds)
            self._registered = True
        encode = self.codec.encode
        yield [(order["order_id"].encode(), encode(order)) for order in priced]


def build(pipeline: beam.Pipeline, options: PipelineOptions, settings: Settings | None = None) -> None:
    """Wires the orders pipeline onto ``pipeline`` (no runner choice here)."""
    opts = options.view_as(OrdersOptions)
    settings = orders_settings(options, settings)
    topics = settings.topics
    bounded = options.view_as(RunModeOptions).bounded
    rules = parse_rules(opts.alarm_rules)

    # A bounded run replays the topic from the start by default: the window state of an interrupted run
    # is gone, so the alarms need every order again (the sinks make the replay harmless). Streaming on
    # Flink restores window state and read positions together from a checkpoint, and resumes.
    if opts.orders_start:
        start = StartPosition.parse(opts.orders_start)
    else:
        start = StartPosition.earliest() if bounded else StartPosition.committed()
    records = pipeline | "ReadOrders" >> ReadFromKafka(
        settings.kafka_bootstrap, topics.orders, bounded=bounded, group_id=opts.orders_group_id,
        start=start, batch_size=opts.orders_batch_size, out_of_order_slack=opts.orders_out_of_order_slack_seconds,
        max_read_seconds=opts.orders_max_read_seconds,
        idle_poll_max_interval=options.view_as(RunModeOptions).idle_poll_max_seconds,
        caught_up_delay=options.view_as(RunModeOptions).caught_up_delay_seconds)
    normalized = records | "Normalize" >> NormalizeOrders(
        order_limits(options), RetryingDecoder(avro_codec(settings, "orders"), settings.sink_retry_seconds))

    reference = ReferenceData(
        settings, days=tuple(d.strip() for d in opts.trade_days.split(",") if d.strip()) or None,
        lookback_days=opts.refdata_lookback_days,
        refresh_seconds=None if bounded else opts.refdata_refresh_seconds,
        miss_reload_seconds=opts.refdata_miss_reload_seconds, retry_seconds=settings.sink_retry_seconds)
    priced = normalized.orders | "Price" >> PriceOrders(reference, settings.exchange_timezone)

    _ = (priced.priced
         | "EncodePriced" >> beam.ParDo(_EncodePricedFn(
             avro_codec(settings, "priced_orders"), settings.sink_retry_seconds))
         | "PublishPriced" >> WriteToKafka(settings.kafka_bootstrap, topics.priced_orders,
                                           delivery_timeout=settings.sink_retry_seconds))

    dead_letter_outputs = [normalized.dead_letter, priced.dead_letter]
    written = None
    if opts.orders_sinks == "all":
        per_transaction = opts.orders_batches_per_transaction or (20 if bounded else 1)
        alarm_windows = AlarmWindows(rules, settings.exchange_timezone, opts.alarm_backfill_seconds)
        written = priced.priced | "PostgresAndDailyVolume" >> WriteOrdersToPostgres(
            settings.postgres_dsn, DailyVolumeTable(aws_endpoint(settings, "dynamodb"), settings.client_volume_table),
            per_transaction, settings.sink_retry_seconds, alarm_windows)
        dead_letter_outputs.append(written.dead_letter)

        # The relay also runs once at start (messages a crashed run queued but did not send) and, when
        # streaming, on an interval.
        relay_ticks = [written.sms_queued, pipeline | "RelayAtStart" >> beam.Create([None])]
        if not bounded:
            relay_ticks.append(pipeline | "RelayEvery" >> PeriodicImpulse(
                fire_interval=opts.outbox_relay_seconds, rebase=RebaseMode.REBASE_START))
        _ = (relay_ticks | "RelayTicks" >> beam.Flatten()
             | "RelaySms" >> RelaySmsOutbox(settings.postgres_dsn, aws_endpoint(settings, "sns")))

    dead_letters = tuple(dead_letter_outputs) | "DeadLetters" >> beam.Flatten()
    _ = (dead_letters
         | "ToKafka" >> beam.Map(dead_letter_to_kafka)
         | "PublishDeadLetters" >> WriteToKafka(settings.kafka_bootstrap, topics.orders_dead_letter,
                                                delivery_timeout=settings.sink_retry_seconds))

    summary = None if bounded else streaming_summary("orders", options, ProgressTarget(
        "orders", settings.postgres_dsn, opts.orders_group_id, (topics.orders,)))
    if summary is not None:  # a bounded run's summary comes from its metrics when it ends
        summary.count(records, metric_key(RECORDS_IN))
        summary.count(priced.priced, metric_key(ORDERS_PRICED))
        if written is not None:
            summary.count(written.owned, ORDERS_STORED)
            summary.count(written.dead_letter, ORDERS_REFUSED)
        summary.count_dead_letters(dead_letters)


def run(argv: list[str] | None = None, settings: Settings | None = None):
    """Builds and runs the pipeline; bounded runs wait until finished and print a summary, streaming runs
    log one every ``--summary_interval_seconds``. Returns the PipelineResult."""
    result = run_pipeline(build, argv, settings)
    report_run(result, argv, "orders", orders_summary)
    return result


if __name__ == "__main__":
    command_line("orders", run, (__doc__ or "").strip().splitlines()[0],
                 [OrdersOptions, RunModeOptions, SummaryOptions, ProgressOptions])
