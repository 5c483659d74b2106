"""A streaming pipeline's report of itself, for the API's ``/metrics``, ``/healthz`` and dashboard.

Every worker process of a streaming run upserts one row of ``pipeline_progress`` (Postgres, which both pipelines
already write) every ``--progress_interval_seconds``: a heartbeat, the time it last read a record, the newest
Kafka record timestamp it has read (freshness), its consumer group and topics (the API computes the consumer
lag from Kafka's committed and end offsets), and its running totals: records in, records out per stage, dead
letters per reason (the tallies of ``summary.StreamingSummary``). One row per process (``host:pid``): a
restarted pipeline writes a new row, and the rows of processes gone for ``FORGET_AFTER`` are deleted.

A report that fails (Postgres down) is logged and tried again at the next interval: it never stops the pipeline.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import socket
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["ProgressOptions", "ProgressTarget", "ProgressWriter"]

_LOG = logging.getLogger(__name__)
FORGET_AFTER = dt.timedelta(days=1)


class ProgressOptions(PipelineOptions):
    """How often a streaming run's worker processes report their progress."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--progress_interval_seconds", type=float, default=5.0,
                            help="streaming: each worker process writes its heartbeat, freshness and totals to "
                                 "pipeline_progress (Postgres) this often (0: never)")


@dataclasses.dataclass(frozen=True)
class ProgressTarget:
    """Where and as what a pipeline reports.

    Args:
        pipeline: the pipeline's name (``orders``, ``presence``).
        postgres_dsn: the database holding ``pipeline_progress``.
        group_id: the consumer group whose committed offsets the pipeline advances.
        topics: the topics it reads.
        interval_seconds: how often a worker process reports.
    """

    pipeline: str
    postgres_dsn: str
    group_id: str
    topics: tuple[str, ...]
    interval_seconds: float = 5.0


class ProgressWriter:
    """Upserts this process's row of ``pipeline_progress``; reconnects after a failure."""

    def __init__(self, target: ProgressTarget):
        self.target = target
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self._conn: Any = None  # a psycopg connection once connected
        self._failing = False

    def write(self, counters: dict[str, int], progress_at: dt.datetime | None, newest_event_ms: int | None) -> bool:
        import psycopg

        t = self.target
        newest = (dt.datetime.fromtimestamp(newest_event_ms / 1000, dt.timezone.utc)
                  if newest_event_ms is not None else None)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(t.postgres_dsn, autocommit=True, connect_timeout=5)
                self._conn.execute("DELETE FROM pipeline_progress WHERE pipeline = %s AND heartbeat_at < now() - %s",
                                   (t.pipeline, FORGET_AFTER))
            self._conn.execute(
                "INSERT INTO pipeline_progress (pipeline, worker, group_id, topics, started_at, heartbeat_at,"
                " progress_at, newest_event_at, counters) VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s)"
                " ON CONFLICT (pipeline, worker) DO UPDATE SET group_id = EXCLUDED.group_id,"
                " topics = EXCLUDED.topics, heartbeat_at = now(), progress_at = EXCLUDED.progress_at,"
                " newest_event_at = EXCLUDED.newest_event_at, counters = EXCLUDED.counters",
                (t.pipeline, self.worker, t.group_id, list(t.topics), self.started_at, progress_at, newest,
                 json.dumps(counters)))
            if self._failing:
                _LOG.info("progress report of %s written again", t.pipeline,
                          extra={"pipeline": t.pipeline, "stage": "progress"})
            self._failing = False
            return True
        except Exception as exc:  # noqa: BLE001 - a report is best effort; the next interval retries
            if not self._failing:
                _LOG.warning("progress report of %s failed (retried every %gs): %s", t.pipeline,
                             t.interval_seconds, exc, extra={"pipeline": t.pipeline, "stage": "progress"})
            self._failing = True
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self._conn = None
            return False
