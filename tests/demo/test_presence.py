"""The ``make demo`` presence step on the test stack: generated restaurants, a bounded run, a ranking that
matches the plan (recomputed here from the same generator arguments, not taken from the demo's own check)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import psycopg

from orderflow.io.presence_queries import offline_ranking
from orderflow_dev.demo.presence import demo
from orderflow_dev.generate.keepalive import make_plan

DEMO_REDIS_DB = 8  # the session's Redis is shared by all modules: this step's hot state goes to its own database
END = dt.datetime(2026, 3, 10, 22, 30, tzinfo=ZoneInfo("America/Sao_Paulo"))
RESTAURANTS, MINUTES = 200, 60


def test_prints_a_ranking_that_matches_the_plan(module_settings, capsys):
    settings = dataclasses.replace(module_settings,
                                   redis_url=module_settings.redis_url.rsplit("/", 1)[0] + f"/{DEMO_REDIS_DB}")
    assert demo(settings, restaurants=RESTAURANTS, minutes=MINUTES, end=END) is True
    out = capsys.readouterr().out
    for expected in ("generated ", f"of {RESTAURANTS} restaurants", "bounded presence pipeline done",
                     "top of the offline ranking", "ranking matches the plan: True"):
        assert expected in out, out

    plan = make_plan(RESTAURANTS, END - dt.timedelta(minutes=MINUTES), MINUTES)  # the demo's plan
    planned = {rid: seconds for (rid, _), seconds in plan.expected().items()}
    top = sorted(planned.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert len(top) == 10 and top[0][1] > 0
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert offline_ranking(conn, END.date(), END.date(), limit=10) == top
    # The printed table is that ranking, in minutes, beside the planned minutes.
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [(row[1], float(row[2]), float(row[3])) for row in rows] == [
        (rid, round(seconds / 60, 1), round(seconds / 60, 1)) for rid, seconds in top]
