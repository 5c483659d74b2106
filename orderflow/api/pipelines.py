"""The streaming pipelines' health as the API sees it: their reports (``pipeline_progress``, written by each
worker process, see ``orderflow/pipelines/progress.py``) and their consumer lag (Kafka: the group's committed
offsets against the partitions' ends), for ``/metrics``, ``/healthz`` and the dashboard.

A pipeline is watched once it has reported (a row in ``pipeline_progress``). It is **failing** when

- its newest heartbeat is older than ``pipeline_stall_seconds`` (``ORDERFLOW_API_PIPELINE_STALL_SECONDS``): its
  process is gone or hung; or
- its consumer lag has grown for longer than ``pipeline_stall_seconds`` while none of its group's committed
  offsets moved (records arrive, nothing is finished). The API remembers, per process, the lag and the sum of
  committed offsets when it last saw progress; a lag that stays put (e.g. 1 behind a transaction marker that
  ends a partition) is not growth. The growth is timed from when the API first sees it: after a while without a
  look, a burst the pipeline is about to commit is not a stall.

Lag per partition is ``end - committed`` with the end read as a ``read_committed`` consumer sees it (the last
stable offset); a partition the group never committed counts from its earliest offset.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from orderflow.api.resources import Resources

__all__ = ["PipelineHealth", "watch_of"]

KAFKA_TIMEOUT_SECONDS = 3.0


@dataclasses.dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    end: int
    lag: int


@dataclasses.dataclass
class PipelineHealth:
    pipeline: str
    group_id: str
    topics: list[str]
    workers: int                    # worker processes that reported within pipeline_stall_seconds
    heartbeat_age_seconds: float
    progress_age_seconds: float | None
    newest_event_age_seconds: float | None
    records_in: int
    records_out: dict[str, int]     # stage -> records
    dead_letters: dict[str, int]    # reason -> records
    partitions: list[PartitionLag]
    lag: int | None                 # None: Kafka did not answer
    lag_error: str | None
    failing: str | None             # why it is failing, or None

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def read_reports(res: Resources) -> dict[str, list[dict]]:
    """``{pipeline: [row per worker process]}`` from ``pipeline_progress``, with ages computed by Postgres."""
    with res.pg.connection() as conn:
        rows = conn.execute(
            "SELECT pipeline, worker, group_id, topics, counters,"
            " extract(epoch FROM now() - heartbeat_at)::float8,"
            " extract(epoch FROM now() - progress_at)::float8,"
            " extract(epoch FROM now() - newest_event_at)::float8"
            " FROM pipeline_progress ORDER BY pipeline, heartbeat_at DESC").fetchall()
    reports: dict[str, list[dict]] = {}
    for pipeline, worker, group_id, topics, counters, heartbeat_age, progress_age, event_age in rows:
        reports.setdefault(pipeline, []).append({
            "worker": worker, "group_id": group_id, "topics": list(topics), "counters": counters,
            "heartbeat_age": heartbeat_age, "progress_age": progress_age, "event_age": event_age})
    return reports


def consumer_lag(admin, group_id: str, topics: list[str]) -> list[PartitionLag]:
    """Committed offsets of ``group_id`` against the ends of every partition of ``topics``."""
    from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    partitions = []
    for topic in topics:
        meta = admin.list_topics(topic=topic, timeout=KAFKA_TIMEOUT_SECONDS).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error if meta else 'unknown'}")
        partitions += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
    if not partitions:
        return []

    def offsets(spec) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets({tp: spec for tp in partitions}, isolation_level=IsolationLevel.READ_COMMITTED,
                                     request_timeout=KAFKA_TIMEOUT_SECONDS)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    ends, starts = offsets(OffsetSpec.latest()), offsets(OffsetSpec.earliest())
    request = [ConsumerGroupTopicPartitions(group_id, [TopicPartition(tp.topic, tp.partition) for tp in partitions])]
    answer = admin.list_consumer_group_offsets(request, request_timeout=KAFKA_TIMEOUT_SECONDS)[group_id].result()
    committed = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
    lags = []
    for tp in partitions:
        key = (tp.topic, tp.partition)
        done = committed.get(key)
        lags.append(PartitionLag(tp.topic, tp.partition, done, ends[key],
                                 max(0, ends[key] - max(done if done is not None else starts[key], starts[key]))))
    return lags


@dataclasses.dataclass
class _Baseline:
    committed_sum: int
    lag: int
    grown_since: float | None = None  # when the lag was first seen above ``lag`` with ``committed_sum`` unchanged


class PipelineWatch:
    """Evaluates the pipelines' health, remembering each one's lag when it last progressed (see the module
    docstring). Answers computed within ``cache_seconds`` are reused, so pages and scrapes cost little."""

    def __init__(self, stall_seconds: float, cache_seconds: float = 1.0):
        self.stall_seconds = stall_seconds
        self.cache_seconds = cache_seconds
        self._baselines: dict[str, _Baseline] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, list[PipelineHealth]] | None = None

    def health(self, res: Resources) -> list[PipelineHealth]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            states = [self._evaluate(res, name, rows) for name, rows in sorted(read_reports(res).items())]
            self._cached = (time.monotonic(), states)
            return states

    def _evaluate(self, res: Resources, name: str, rows: list[dict]) -> PipelineHealth:
        newest = rows[0]  # the most recent heartbeat
        group_id, topics = newest["group_id"], newest["topics"]
        records_in, out, dead = 0, {}, {}
        for row in rows:  # every process's totals: a restarted pipeline's counts keep growing
            counters = row["counters"]
            records_in += counters.get("records_in", 0)
            for total, part in ((out, "stages"), (dead, "dead_letters")):
                for key, value in counters.get(part, {}).items():
                    total[key] = total.get(key, 0) + value
        ages = [r["progress_age"] for r in rows if r["progress_age"] is not None]
        event_ages = [r["event_age"] for r in rows if r["event_age"] is not None]
        partitions, lag, lag_error = [], None, None
        try:
            partitions = consumer_lag(res.kafka_admin, group_id, topics)
            lag = sum(p.lag for p in partitions)
        except Exception as exc:  # noqa: BLE001 - Kafka's own check names it; the lag is unknown meanwhile
            lag_error = f"{type(exc).__name__}: {exc}"[:300]
        failing = None
        if newest["heartbeat_age"] > self.stall_seconds:
            failing = (f"no report for {newest['heartbeat_age']:.0f}s (over {self.stall_seconds:g}s): "
                       "its process is gone or hung")
        if lag is not None:
            committed_sum = sum(p.committed or 0 for p in partitions)
            now = time.monotonic()
            base = self._baselines.get(name)
            if base is None or committed_sum != base.committed_sum or lag <= base.lag:
                self._baselines[name] = _Baseline(committed_sum, lag)
            elif base.grown_since is None:
                # Timed from when the growth is first seen, not from the last look before it: after a while
                # without a look (no scrape, no page), a burst the pipeline is about to commit is not a stall.
                base.grown_since = now
            elif now - base.grown_since > self.stall_seconds and failing is None:
                failing = (f"consumer lag grew from {base.lag} to {lag} in {now - base.grown_since:.0f}s "
                           f"(over {self.stall_seconds:g}s) with no committed offset moving")
        return PipelineHealth(
            pipeline=name, group_id=group_id, topics=topics,
            workers=sum(1 for r in rows if r["heartbeat_age"] <= self.stall_seconds),
            heartbeat_age_seconds=round(newest["heartbeat_age"], 3),
            progress_age_seconds=round(min(ages), 3) if ages else None,
            newest_event_age_seconds=round(min(event_ages), 3) if event_ages else None,
            records_in=records_in, records_out=out, dead_letters=dead,
            partitions=partitions, lag=lag, lag_error=lag_error, failing=failing)


def watch_of(app_state, res: Resources) -> PipelineWatch:
    watch = getattr(app_state, "pipeline_watch", None)
    if watch is None:
        watch = app_state.pipeline_watch = PipelineWatch(res.config.pipeline_stall_seconds)
    return watch

