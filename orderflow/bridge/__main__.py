"""``python -m orderflow.bridge mqtt [--instance N] [--metrics-port PORT]``: the MQTT -> Kafka bridge
(``orderflow.bridge.mqtt``), until SIGTERM or SIGINT. Settings from the environment (ORDERFLOW_MQTT_*,
ORDERFLOW_KAFKA_BOOTSTRAP, the topic names). Several bridges with different ``--instance`` numbers share the
load; the same number again resumes that bridge's MQTT session."""
from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow.bridge", description=__doc__)
    parser.add_argument("bridge", choices=["mqtt"])
    parser.add_argument("--instance", type=int, default=0,
                        help="this bridge's number: its MQTT client id is orderflow-bridge-<N> (default 0)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on 127.0.0.1:PORT (default: none)")
    args = parser.parse_args(argv)

    from orderflow import logs
    from orderflow.bridge.mqtt import MqttBridge
    from orderflow.config import load_settings

    logs.configure("bridge")
    try:
        bridge = MqttBridge(load_settings(), instance=args.instance, metrics_port=args.metrics_port)
    except ValueError as exc:  # a setting that is not what it should be (ConfigurationError, the broker URL)
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, bridge.stop)
    signal.signal(signal.SIGINT, bridge.stop)
    bridge.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
