"""The ``make demo`` Flink submission step: both pipelines' dry runs as a table (no cluster, no stack)."""
from __future__ import annotations

from orderflow.config import Settings
from orderflow_dev.demo.flink import demo


def test_prints_both_dry_runs(capsys):
    demo(Settings(topic_partitions=6))
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert set(rows) == {"orders", "presence"}
    for row in rows.values():
        assert "FlinkRunner streaming, Flink 1.20, parallelism 6 (max 720)" in row
        assert "EXACTLY_ONCE every 60 s" in row and "EXTERNAL localhost:50000" in row
        assert row.rstrip().endswith("yes")  # the graph is one Flink can translate
    assert "stateful" in rows["presence"]
