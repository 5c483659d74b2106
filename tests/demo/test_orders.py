"""The ``make demo`` orders step on the test stack: it runs and prints the summary it promises."""
from __future__ import annotations

import psycopg

from orderflow.demo.orders import demo


def test_prints_summary_and_fills_the_sinks(module_settings, capsys):
    demo(module_settings, n=2_000)
    out = capsys.readouterr().out
    for expected in ("produced 2,000 records", "dead letters by reason:", "top clients by volume",
                     "alarms recorded:", "SMS sent through SNS:"):
        assert expected in out, out
    with psycopg.connect(module_settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] > 1_800
