"""The ``make demo`` presence step on the test stack: generated restaurants, a bounded run, a ranking that
matches the plan."""
from __future__ import annotations

import dataclasses

from orderflow.demo.presence import demo

DEMO_REDIS_DB = 8  # the session's Redis is shared by all modules: this step's hot state goes to its own database


def test_prints_a_ranking_that_matches_the_plan(module_settings, capsys):
    settings = dataclasses.replace(module_settings,
                                   redis_url=module_settings.redis_url.rsplit("/", 1)[0] + f"/{DEMO_REDIS_DB}")
    assert demo(settings, restaurants=200, minutes=60) is True
    out = capsys.readouterr().out
    for expected in ("generated ", "of 200 restaurants", "bounded presence pipeline done", "top of the offline ranking",
                     "ranking matches the plan: True"):
        assert expected in out, out
