"""``python -m orderflow_dev.local up|down|status``: the local stack of real services on loopback.

``python -m orderflow_dev.local redeploy PIPELINE [-- OPTIONS...]``: stops a running pipeline (it drains: the records
it read are committed) and starts it again with the options it ran with followed by OPTIONS (a later option
wins), e.g. a new alarm rule set; nothing is lost, duplicated or missed (docs/reliability.md).

``python -m orderflow_dev.local mqtt-credentials ID...`` issues MQTT accounts for restaurants on the stack's broker
(account = the restaurant id; prints ``id password`` lines, the only copy of the passwords).
"""
from __future__ import annotations

import argparse
import sys
import time

from orderflow.config import load_local_config
from orderflow.pipelines import PIPELINES
from orderflow_dev.local.processes import DEAD, RUNNING, DetachedProcess, detached_processes
from orderflow_dev.local.stack import LocalStack, ServiceFailed, StackPorts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.local", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "redeploy", "mqtt-credentials"])
    parser.add_argument("ids", nargs="*", metavar="NAME",
                        help=f"with redeploy: the pipeline ({', '.join(sorted(PIPELINES))}); with mqtt-credentials: "
                             "the restaurants' ids")
    parser.epilog = "redeploy: the pipeline's new options follow --, e.g. redeploy orders -- --alarm_rules=@rules.json"
    local = load_local_config()  # ORDERFLOW_LOCAL_ROOT, ORDERFLOW_LOCAL_PORT_OFFSET: what `make stack-up` etc. pass
    parser.add_argument("--root", default=local.root,
                        help=f"data, logs and pid files (default: ORDERFLOW_LOCAL_ROOT, {local.root})")
    parser.add_argument("--no-bootstrap", action="store_true", help="with up: skip topics/tables/migrations")
    parser.add_argument("--port-offset", type=int, default=local.port_offset,
                        help="every service's port + N: a second stack beside the default one (give the same "
                             "offset to status and down; the services' ORDERFLOW_* endpoints move with it; "
                             f"default: ORDERFLOW_LOCAL_PORT_OFFSET, {local.port_offset})")
    argv = sys.argv[1:] if argv is None else list(argv)
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    # ids may follow options: mqtt-credentials --root R ID...
    args = parser.parse_intermixed_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.command == "redeploy":
        return _redeploy(parser, args, options)
    stack = LocalStack(args.root, StackPorts.offset(args.port_offset))
    if args.command == "mqtt-credentials":
        try:
            issued = stack.issue_mqtt_credentials(args.ids)
        except ValueError as exc:
            parser.error(str(exc))
        for restaurant_id, password in issued.items():
            print(restaurant_id, password)
        return 0
    try:
        if args.command == "up":
            states = stack.up()
            if not args.no_bootstrap:
                from orderflow.bootstrap import bootstrap_all
                from orderflow.config import load_settings

                bootstrap_all(load_settings(stack.environment()))
        elif args.command == "down":
            for pipeline in detached_processes(args.root):
                print(f"{pipeline.name:<10} {pipeline.stop():<12} {'':<16} log: {pipeline.log_path}")
            states = stack.down()
        else:
            states = stack.status()
    except ServiceFailed as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return 1
    for name, state in states.items():
        port = stack.services[name].port
        print(f"{name:<10} {state:<12} 127.0.0.1:{port:<6} log: {stack.log_path(name)}")
    if args.command != "status":
        return 0
    dead = False
    for pipeline in detached_processes(args.root):
        state = pipeline.status()
        print(f"{pipeline.name:<10} {state:<12} {'pid ' + str(pipeline.pid):<16} log: {pipeline.log_path}")
        if state == DEAD:
            dead = True
            print("  " + pipeline.log_tail().replace("\n", "\n  "))
    return 3 if dead or any(s != "ready" for s in states.values()) else 0


def _redeploy(parser: argparse.ArgumentParser, args, options: list[str]) -> int:
    if len(args.ids) != 1 or args.ids[0] not in PIPELINES:
        parser.error(f"redeploy takes one pipeline name: {', '.join(sorted(PIPELINES))}")
    name = args.ids[0]
    process = DetachedProcess(name, args.root)
    if process.status() != RUNNING:
        print(f"{name} is not running ({process.status()}): start it first", file=sys.stderr)
        return 1
    started = time.monotonic()
    stopped, pid = process.redeploy(options)
    print(f"{name:<10} {stopped} (exit {process.exit_status}), started again as pid {pid} "
          f"{time.monotonic() - started:.1f} s later with {' '.join(process.last_args()) or 'no options'}; "
          f"log: {process.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
