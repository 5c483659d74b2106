"""``make demo`` (``python -m orderflow_dev.demo``): the live system on the local stack (already up), see
``orderflow_dev.demo.live``. ``make demo-replay`` (``python -m orderflow_dev.demo replay``): the bounded walk-through,
one generated day replayed through both pipelines with summaries. ``python -m orderflow_dev.demo stop-api
[--root .local]``: stops the API ``make demo`` serves detached (and nothing else).

The demo runs on the local stack that ``ORDERFLOW_LOCAL_ROOT`` and ``ORDERFLOW_LOCAL_PORT_OFFSET`` name (as ``make
stack-up`` started it): its processes' pid files and logs go under that root, it talks to that stack's endpoints, and
its API listens on 18080 + the offset. Its sizes are options (``make demo ARGS='--restaurants 50'``): a smaller feed
for a busy machine, a smaller replay for a quick look.
"""
from __future__ import annotations

import argparse
import os
import sys

from orderflow.config import load_local_config, load_settings
from orderflow_dev.local.roundtrip import format_table, run_roundtrips


def _parser(local) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["live", "replay", "stop-api"], default="live",
                        help="live (make demo, the default), replay (make demo-replay), stop-api")
    parser.add_argument("--root", default=local.root,
                        help=f"the demo's pid files and logs (default: ORDERFLOW_LOCAL_ROOT, {local.root})")
    live = parser.add_argument_group("live")
    live.add_argument("--restaurants", type=int, default=1000, help="restaurants of the feed pinging over HTTP's path")
    live.add_argument("--orders-per-second", type=float, default=20.0, help="the feed's order rate")
    live.add_argument("--mqtt-restaurants", type=int, default=1000, help="restaurants connected over MQTT")
    replay = parser.add_argument_group("replay")
    replay.add_argument("--orders", type=int, default=20_000, help="generated orders of yesterday's session")
    replay.add_argument("--seed", type=int, default=None, help="the orders' seed (default: another each time)")
    replay.add_argument("--replay-restaurants", type=int, default=1000, help="generated restaurants")
    replay.add_argument("--minutes", type=int, default=90, help="minutes of their keep-alives")
    return parser


def main(argv: list[str] | None = None) -> int:
    local = load_local_config()
    args = _parser(local).parse_args(sys.argv[1:] if argv is None else argv)
    if args.what == "stop-api":
        from orderflow_dev.demo.api import stop_detached

        print(stop_detached(args.root))
        return 0
    from orderflow_dev.demo.api import DEFAULT_PORT
    from orderflow_dev.local.stack import LocalStack, StackPorts

    # The stack's own endpoints (moved with its port offset) over the environment's: the demo runs on that stack.
    stack = LocalStack(args.root, StackPorts.offset(local.port_offset))
    settings = load_settings({**os.environ, **stack.environment()})
    port = DEFAULT_PORT + local.port_offset
    print("== Round trip through every service of the local stack")
    rows = run_roundtrips(settings)
    print(format_table(rows))
    if not all(r.ok for r in rows):
        return 1
    if args.what == "live":
        from orderflow_dev.demo.live import demo as live_demo

        live_demo(settings, root=args.root, port=port, stack_root=args.root, mqtt_restaurants=args.mqtt_restaurants,
                  feed_args=["--restaurants", str(args.restaurants), "--orders-per-second", str(args.orders_per_second)])
        return 0
    from orderflow_dev.demo.orders import demo as orders_demo

    print("== Orders: reference data, generated orders, bounded pipeline run")
    orders_demo(settings, n=args.orders, seed=args.seed)
    from orderflow_dev.demo.presence import demo as presence_demo

    print(f"== Presence: {args.replay_restaurants:,} restaurants pinging for {args.minutes} minutes, bounded pipeline "
          "run, offline ranking")
    presence_demo(settings, restaurants=args.replay_restaurants, minutes=args.minutes)
    from orderflow_dev.demo.kafka import demo as kafka_demo

    print("== Kafka connector: the schema registry, group offsets, a replay plan, a priced order read back")
    kafka_demo(settings)
    from orderflow_dev.demo.flink import demo as flink_demo

    print("== Flink submission: dry run of both pipelines (resolved options, graph Flink can translate)")
    flink_demo(settings)
    # Keep this step last: the API stays up serving what the steps above produced (make stack-down stops it).
    from orderflow_dev.demo.api import demo as api_demo

    print("== HTTP API and live dashboard")
    api_demo(settings, root=args.root, port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
