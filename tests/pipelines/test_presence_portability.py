"""Portability check of the presence pipeline: its portable proto passes the Flink check, and it runs
through Beam's PortableRunner (in-process job service, SDK worker over the Fn API) on small bounded input
from the real local stack, with the same exact ranking as the generator's plan."""
from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import psycopg

from orderflow.generate.keepalive import make_plan, produce
from orderflow.pipelines import presence
from orderflow.portability import run_portable

START = dt.datetime(2026, 3, 12, 22, 15, tzinfo=ZoneInfo("America/Sao_Paulo"))


def test_presence_pipeline_runs_portably_with_exact_results(module_settings):
    settings = module_settings
    plan = make_plan(200, START, 60, seed=23)
    produce(plan, settings.kafka_bootstrap, settings.topics.keepalive, settings.topics.availability, corrupt=3,
            progress=False)

    def build(pipeline, options):
        presence.build(pipeline, options, settings)

    run = run_portable(build, ["--bounded", f"--track_from={plan.start_ms}", f"--as_of={plan.end_ms}",
                               f"--presence_redis_prefix=p-{uuid.uuid4().hex[:6]}:"])
    assert run.state == "DONE" and run.graph["problems"] == []
    assert run.counter("pings", "KeepaliveSessions") == plan.count_pings()
    assert run.counter("dead_letters") == 3
    with psycopg.connect(settings.postgres_dsn) as conn:
        got = {(r, d.isoformat()): s for r, d, s in conn.execute(
            "SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily")}
    assert got == plan.expected() and sum(got.values()) > 0
