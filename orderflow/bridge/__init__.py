"""Bridges into Kafka: ``python -m orderflow.bridge mqtt`` carries the restaurants' MQTT keep-alives and last
wills into the presence topics (``orderflow.bridge.mqtt``)."""
