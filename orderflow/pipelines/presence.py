"""The presence pipeline: keep-alives + availability -> online/offline intervals, hot state, ranking.

    ReadFromKafka(restaurant-keepalive, batch_size)      lists of KafkaRecords
      -> DecodeAvro(restaurant_keepalive)                 lists of {restaurant_id, sent_at} | dead letters
           -> WriteKeepalivesToRedis                      last keep-alive per restaurant (hot state)
           -> KeepaliveSessions(gap)                      session windows: connected intervals
    ReadFromKafka(restaurant-availability, batch_size)
      -> DecodeAvailabilityChanges                        lists of AvailabilityChange | dead letters
           -> WriteAvailabilityToRedis                    status and schedules (hot state)
           -> WriteUnavailabilityHistory                  restaurant_unavailability
    RestorePresenceState (streaming from committed offsets)  the stores' progress, sessions, availability
    (sessions, changes, restored) -> RestaurantStatusIntervals  online / offline_scheduled / offline_unexplained
      -> WriteStatusIntervals                             restaurant_status_intervals + restaurant_offline_daily
                                                          + restaurant_presence_progress (one transaction)
    dead letters (input, and records a sink refused) -> CountDeadLetters -> WritePresenceDeadLetters
                                                          presence/dead_letter_<reason>, presence_dead_letters

``--bounded`` reads both topics to their end and evaluates up to ``--as_of`` (default: the time the run
starts): a session still open then stays online up to the cut-off. Streaming (Flink/Prism) evaluates as
the watermark passes each session's end and each day's closing time; started from the committed offsets
(the default), it first restores from the stores what the previous run had in flight
(``orderflow.io.presence_restore``), so a crash, stop or redeploy loses no session and no interval.
``python -m orderflow.pipelines.presence --bounded`` runs it.
"""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue

from orderflow.clients import avro_codec
from orderflow.config import DEFAULT_TIMEZONE, Settings, load_settings, with_overrides
from orderflow.io.avro import DecodeAvro, RetryingDecoder
from orderflow.io.kafka_offsets import COMMITTED
from orderflow.io.kafka_read import RECORDS, ReadFromKafka, StartPosition
from orderflow.io.presence_postgres import WritePresenceDeadLetters, WriteStatusIntervals, WriteUnavailabilityHistory
from orderflow.io.presence_redis import WriteAvailabilityToRedis, WriteKeepalivesToRedis
from orderflow.io.presence_restore import RestorePresenceState
from orderflow.model.presence import PresenceRules, to_ms
from orderflow.pipelines.progress import ProgressOptions, ProgressTarget
from orderflow.pipelines.runner import RunModeOptions, command_line, run_pipeline
from orderflow.pipelines.summary import (
    KEEPALIVES_DECODED,
    CountDeadLetters,
    SummaryOptions,
    metric_key,
    presence_summary,
    report_run,
    streaming_summary,
)
from orderflow.transforms.availability_changes import CHANGES, DecodeAvailabilityChanges
from orderflow.transforms.keepalive_sessions import SESSIONS, KeepaliveSessions
from orderflow.transforms.status_intervals import INTERVALS, RestaurantStatusIntervals


def parse_instant(text: str | None) -> int | None:
    """Epoch ms from ISO-8601 (naive = UTC) or an integer of epoch milliseconds; None stays None."""
    if text in (None, ""):
        return None
    if str(text).lstrip("-").isdigit():
        return int(text)
    return to_ms(dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")))


class PresenceOptions(PipelineOptions):
    """Knobs of the presence pipeline. Endpoints and names default to ``load_settings()`` (environment)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--keepalive_topic", default=None, help="default: settings")
        parser.add_argument("--availability_topic", default=None, help="default: settings")
        parser.add_argument("--presence_start", default=None,
                            help="earliest | latest | committed | ISO time | topic:p=o,...; default: earliest "
                                 "when --bounded, else the committed offsets of --presence_group_id")
        parser.add_argument("--presence_group_id", default="orderflow-presence", help="consumer group")
        parser.add_argument("--presence_batch_size", type=int, default=5000,
                            help="Kafka records per batch element (all work is per batch)")
        parser.add_argument("--presence_out_of_order_slack_seconds", type=float, default=0.0,
                            help="streaming: how far behind the latest record time of its partition a keep-alive "
                                 "or availability record may be and still be on time (the reads' watermark "
                                 "trails by this much)")
        parser.add_argument("--keepalive_timeout_seconds", type=float, default=None,
                            help="session gap: a restaurant is connected until this long after a keep-alive "
                                 "(default: settings, ORDERFLOW_KEEPALIVE_TIMEOUT_SECONDS, 120)")
        parser.add_argument("--opening_hours", default=None,
                            help="HH:MM-HH:MM, local time (default: settings, ORDERFLOW_OPENING_HOURS, 10:00-23:00)")
        parser.add_argument("--presence_timezone", default=None,
                            help="time zone of opening hours (default: settings, ORDERFLOW_PRESENCE_TIMEZONE, "
                                 f"{DEFAULT_TIMEZONE})")
        parser.add_argument("--as_of", default=None,
                            help="bounded: evaluate up to this instant (ISO-8601 or epoch ms; default: now)")
        parser.add_argument("--track_from", default=None,
                            help="bounded: start of the evaluated period (ISO-8601 or epoch ms): a restaurant "
                                 "with events by then is evaluated from here, one first seen later from its "
                                 "first event; default: every restaurant from its first keep-alive or "
                                 "availability change")
        parser.add_argument("--finalize_each_session", default=None, choices=["true", "false"],
                            help="emit intervals as each session closes (default: true when streaming, false "
                                 "when bounded, where everything is final at the end anyway)")
        parser.add_argument("--status_timer_granularity_seconds", type=float, default=60.0,
                            help="a shard's finalisation timer fires at most once per this much event time "
                                 "(intervals of a session or day are written up to this late)")
        parser.add_argument("--status_shards", type=int, default=128,
                            help="keys of the status evaluation (restaurants are spread over them): its parallelism")
        parser.add_argument("--presence_postgres_dsn", default=None, help="default: settings")
        parser.add_argument("--presence_redis_url", default=None, help="default: settings")
        parser.add_argument("--presence_redis_prefix", default=None,
                            help="key prefix of the hot state (default: settings, ORDERFLOW_PRESENCE_REDIS_PREFIX, "
                                 "restaurant:)")
        parser.add_argument("--presence_kafka_bootstrap", default=None, help="default: settings")


def presence_settings(options: PipelineOptions, settings: Settings | None = None) -> Settings:
    """``settings`` (default: from the environment) with the endpoints, topics and presence rules the options
    override: the API reads the same settings, so it answers with the rules the pipeline applies."""
    opts = options.view_as(PresenceOptions)
    return with_overrides(settings or load_settings(),
                          topics={"keepalive": opts.keepalive_topic, "availability": opts.availability_topic},
                          postgres_dsn=opts.presence_postgres_dsn, redis_url=opts.presence_redis_url,
                          kafka_bootstrap=opts.presence_kafka_bootstrap, opening_hours=opts.opening_hours,
                          presence_timezone=opts.presence_timezone,
                          keepalive_timeout_seconds=opts.keepalive_timeout_seconds,
                          presence_redis_prefix=opts.presence_redis_prefix)


def _one_by_one(batch):
    # Availability changes are few; the evaluation takes them one by one at their event time.
    return [TimestampedValue(change, change.occurred_at / 1000) for change in batch]


def build(pipeline: beam.Pipeline, options: PipelineOptions, settings: Settings | None = None) -> None:
    """Wires the presence pipeline onto ``pipeline`` (no runner choice here)."""
    opts = options.view_as(PresenceOptions)
    settings = presence_settings(options, settings)
    bounded = options.view_as(RunModeOptions).bounded
    rules = PresenceRules.from_settings(settings)
    hours, gap_ms, prefix = rules.hours, rules.gap_ms, settings.presence_redis_prefix
    as_of = parse_instant(opts.as_of) if bounded else None
    if bounded and as_of is None:
        as_of = to_ms(dt.datetime.now(dt.timezone.utc))
    at_session_end = (opts.finalize_each_session == "true") if opts.finalize_each_session else not bounded
    if opts.presence_start:
        start = StartPosition.parse(opts.presence_start)
    else:
        start = StartPosition.earliest() if bounded else StartPosition.committed()

    def read(label: str, topic: str):
        return pipeline | label >> ReadFromKafka(
            settings.kafka_bootstrap, topic, bounded=bounded, group_id=opts.presence_group_id, start=start,
            batch_size=opts.presence_batch_size, out_of_order_slack=opts.presence_out_of_order_slack_seconds,
            idle_poll_max_interval=options.view_as(RunModeOptions).idle_poll_max_seconds,
            caught_up_delay=options.view_as(RunModeOptions).caught_up_delay_seconds)

    keepalive_records = read("ReadKeepalives", settings.topics.keepalive)
    keepalives = keepalive_records | "DecodeKeepalives" >> DecodeAvro(
        avro_codec(settings, "keepalive"), retry_seconds=settings.sink_retry_seconds)
    keepalives_refused = keepalives.decoded | "KeepalivesToRedis" >> WriteKeepalivesToRedis(
        settings.redis_url, prefix, retry_seconds=settings.sink_retry_seconds, keepalive_timeout_ms=gap_ms)
    # Resuming from the committed offsets, what the previous run held downstream of them (open sessions, the
    # evaluation's progress and availability) comes back from the stores; a replay from a given position
    # recomputes from what it reads instead.
    restored = None
    if not bounded and start.kind == COMMITTED:
        restored = pipeline | "RestoreState" >> RestorePresenceState(
            settings.postgres_dsn, settings.redis_url, prefix, gap_ms, retry_seconds=settings.sink_retry_seconds)
        session_input = (keepalives.decoded, restored.pings)  # each merged where it is read, not flattened first
    else:
        session_input = keepalives.decoded
    sessions = session_input | "Sessions" >> KeepaliveSessions(gap_ms, hours, until_ms=as_of)

    availability_records = read("ReadAvailability", settings.topics.availability)
    changes = availability_records | "DecodeAvailability" >> DecodeAvailabilityChanges(
        RetryingDecoder(avro_codec(settings, "availability"), settings.sink_retry_seconds))
    availability_refused = changes.changes | "AvailabilityToRedis" >> WriteAvailabilityToRedis(
        settings.redis_url, prefix, retry_seconds=settings.sink_retry_seconds)
    history_refused = changes.changes | "UnavailabilityHistory" >> WriteUnavailabilityHistory(
        settings.postgres_dsn, retry_seconds=settings.sink_retry_seconds)
    single_changes = changes.changes | "OneByOne" >> beam.FlatMap(_one_by_one)

    status_inputs = (sessions, single_changes) if restored is None else (sessions, single_changes, restored.timelines)
    evaluated = status_inputs | "Status" >> RestaurantStatusIntervals(
        hours, gap_ms, as_of_ms=as_of, finalize_at_session_end=at_session_end,
        track_from_ms=parse_instant(opts.track_from), shards=opts.status_shards,
        granularity_ms=int(opts.status_timer_granularity_seconds * 1000), with_progress=True)
    intervals = evaluated.intervals
    # The progress follows its intervals into the one sink, which stores both in one transaction.
    intervals_refused = ((intervals, evaluated.progress)
                         | "IntervalsAndProgress" >> beam.Flatten()
                         | "StatusIntervalsToPostgres" >> WriteStatusIntervals(
                             settings.postgres_dsn, retry_seconds=settings.sink_retry_seconds))

    dead_letters = ((keepalives.dead_letter, changes.dead_letter, keepalives_refused, availability_refused,
                     history_refused, intervals_refused)
                    | "DeadLetters" >> beam.Flatten())
    _ = (dead_letters
         | "CountDeadLetters" >> CountDeadLetters("presence")
         | "DeadLettersToPostgres" >> WritePresenceDeadLetters(
             settings.postgres_dsn, retry_seconds=settings.sink_retry_seconds))

    summary = None if bounded else streaming_summary("presence", options, ProgressTarget(
        "presence", settings.postgres_dsn, opts.presence_group_id, (settings.topics.keepalive, settings.topics.availability)))
    if summary is not None:  # a bounded run's summary comes from its metrics when it ends
        summary.count(keepalive_records, metric_key(RECORDS), "keep-alive records")
        summary.count(availability_records, metric_key(RECORDS), "availability records")
        summary.count(keepalives.decoded, KEEPALIVES_DECODED)
        summary.count(changes.changes, metric_key(CHANGES))
        summary.count(sessions, metric_key(SESSIONS))
        summary.count(intervals, metric_key(INTERVALS))
        summary.count_dead_letters(dead_letters)


def run(argv: list[str] | None = None, settings: Settings | None = None):
    """Builds and runs the pipeline; bounded runs wait until finished and print a summary, streaming runs
    log one every ``--summary_interval_seconds``. Returns the PipelineResult."""
    result = run_pipeline(build, argv, settings)
    report_run(result, argv, "presence", presence_summary)
    return result


if __name__ == "__main__":
    command_line("presence", run, (__doc__ or "").strip().splitlines()[0],
                 [PresenceOptions, RunModeOptions, SummaryOptions, ProgressOptions])
