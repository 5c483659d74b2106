"""``make demo`` (``python -m orderflow_dev.demo``): the live system on the local stack (already up), see
``orderflow_dev.demo.live``. ``make demo-replay`` (``python -m orderflow_dev.demo replay``): the bounded walk-through,
one generated day replayed through both pipelines with summaries. ``python -m orderflow_dev.demo stop-api
[--root .local]``: stops the API ``make demo`` serves detached (and nothing else)."""
from __future__ import annotations

import argparse
import sys

from orderflow.config import load_settings
from orderflow_dev.local.roundtrip import format_table, run_roundtrips


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stop-api"]:
        from orderflow_dev.demo.api import stop_detached

        parser = argparse.ArgumentParser(prog="python -m orderflow_dev.demo stop-api")
        parser.add_argument("--root", default=".local", help="the demo's pid files (default: .local)")
        print(stop_detached(parser.parse_args(argv[1:]).root))
        return 0
    settings = load_settings()
    print("== Round trip through every service of the local stack")
    rows = run_roundtrips(settings)
    print(format_table(rows))
    if not all(r.ok for r in rows):
        return 1
    if argv[:1] != ["replay"]:
        from orderflow_dev.demo.live import demo as live_demo

        live_demo(settings)
        return 0
    from orderflow_dev.demo.orders import demo as orders_demo

    print("== Orders: reference data, generated orders, bounded pipeline run")
    orders_demo(settings)
    from orderflow_dev.demo.presence import demo as presence_demo

    print("== Presence: 1,000 restaurants pinging for 90 minutes, bounded pipeline run, offline ranking")
    presence_demo(settings)
    from orderflow_dev.demo.kafka import demo as kafka_demo

    print("== Kafka connector: the schema registry, group offsets, a replay plan, a priced order read back")
    kafka_demo(settings)
    from orderflow_dev.demo.flink import demo as flink_demo

    print("== Flink submission: dry run of both pipelines (resolved options, graph Flink can translate)")
    flink_demo(settings)
    # Keep this step last: the API stays up serving what the steps above produced (make stack-down stops it).
    from orderflow_dev.demo.api import demo as api_demo

    print("== HTTP API and live dashboard")
    api_demo(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
