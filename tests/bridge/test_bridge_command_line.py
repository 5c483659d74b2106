"""``python -m orderflow.bridge mqtt`` as users type it: settings from the environment, refused when wrong.
(Its effect, Kafka records from MQTT messages, is tests/bridge/test_mqtt.py's.)"""
from __future__ import annotations

import os
import subprocess
import sys


def _bridge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow.bridge", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_broker_url_that_is_not_mqtt_is_refused_by_name():
    refused = _bridge("mqtt", env={"ORDERFLOW_MQTT_URL": "mqtt://127.0.0.1:1,http://127.0.0.1:2"})
    assert refused.returncode == 2
    assert "ORDERFLOW_MQTT_URL: 'http://127.0.0.1:2' is not mqtt://host:port" in refused.stderr


def test_a_bad_setting_is_refused_by_name():
    refused = _bridge("mqtt", env={"ORDERFLOW_MQTT_MAX_PAYLOAD_BYTES": "lots"})
    assert refused.returncode == 2 and "ORDERFLOW_MQTT_MAX_PAYLOAD_BYTES='lots' is not a whole number" in refused.stderr


def test_only_the_mqtt_bridge_exists():
    assert _bridge("amqp", env={}).returncode == 2


def test_help_lists_the_options_with_their_defaults():
    shown = _bridge("--help", env={})
    text = " ".join(shown.stdout.split())
    assert shown.returncode == 0, shown.stderr
    assert "--instance INSTANCE this bridge's number" in text and "(default 0)" in text
    assert "--metrics-port METRICS_PORT serve Prometheus metrics" in text and "(default: none)" in text
