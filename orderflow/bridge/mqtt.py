"""The MQTT -> Kafka bridge: restaurants' keep-alives and last wills from Mosquitto into the presence topics.

One MQTT client per broker (``ORDERFLOW_MQTT_URL``, comma-separated: the brokers of a sharded fleet), each
subscribed to ``$share/<ORDERFLOW_MQTT_SHARE_GROUP>/restaurants/+/+`` at QoS 1 in a persistent MQTT 5 session
(client id ``orderflow-bridge-<instance>``, clean start off, a week's session expiry), so that:

- bridges started with different ``--instance`` numbers share the messages (the broker gives each message to
  one of them), and a stopped bridge's share goes to the others;
- a message is acknowledged (PUBACK, manual acknowledgement) only after Kafka confirmed its record: a bridge
  killed before that gets it again from the broker (at-least-once; a duplicate keep-alive or change is
  harmless to the presence pipeline), and the messages that arrive while no bridge runs wait in the broker's
  session queue.

What it writes (Kafka producer: idempotent, acks=all, retried until delivered):

- ``restaurants/{id}/keepalive`` -> ``ORDERFLOW_TOPIC_KEEPALIVE``: the very record ``POST
  /restaurants/{id}/keepalive`` writes (``orderflow.model.presence.keepalive_kafka_record``; the payload is
  empty or the HTTP body's JSON ``{"sent_at": ...}``; one further than ``ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS`` from
  the bridge's clock is recorded at the bridge's time, counted and logged, as the API does);
- ``restaurants/{id}/status`` ``offline`` (the last will: an abrupt disconnect) / ``online`` (after each
  connect) -> ``ORDERFLOW_TOPIC_AVAILABILITY``: a DISCONNECTED / CONNECTED change stamped now (Kafka timestamp =
  occurred_at). A retained copy (delivered because it was retained, not published now) is skipped.

Bad input is dropped, acknowledged, counted and logged (one WARNING line with the reason and the topic),
never fatal: a topic that is not ``restaurants/<valid id>/keepalive|status``, a payload that is not UTF-8,
larger than ``ORDERFLOW_MQTT_MAX_PAYLOAD_BYTES``, or not a keep-alive body / ``online`` / ``offline``, a
payload naming another restaurant than its topic. A broker or Kafka that is
down is waited for (paho reconnects; librdkafka retries), never fatal either.

Metrics (Prometheus, ``--metrics-port``): ``orderflow_bridge_forwarded_total{kind}`` (keepalive, connected,
disconnected), ``orderflow_bridge_dropped_total{reason}`` (``orderflow.model.mqtt.DROP_REASONS``),
``orderflow_bridge_retained_skipped_total``, ``orderflow_bridge_broker_up{broker}`` and
``orderflow_bridge_broker_clients{broker}`` (the broker's connected clients, from its ``$SYS`` topics).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import urllib.parse
import uuid

import orjson
from confluent_kafka import KafkaError, Producer
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from orderflow.clients import avro_codec
from orderflow.config import Settings
from orderflow.io.retry import call_with_retry
from orderflow.model.mqtt import (
    DROP_BAD_PAYLOAD,
    DROP_FOREIGN_ID,
    DROP_KAFKA_REFUSED,
    KEEPALIVE,
    OFFLINE,
    SUBSCRIPTION,
    Dropped,
    Message,
    parse,
)
from orderflow.model.presence import (
    CONNECTED,
    DISCONNECTED,
    AvailabilityChange,
    keepalive_kafka_record,
    stamp_keepalive,
)

__all__ = ["MqttBridge", "broker_addresses"]

log = logging.getLogger("orderflow.bridge")

SYS_CLIENTS = "$SYS/broker/clients/connected"
SESSION_EXPIRY_SECONDS = 7 * 86_400
# QoS 1 messages the broker may have in flight to one bridge client before it waits for acknowledgements:
# the bridge's backpressure while Kafka is slow or down.
RECEIVE_MAXIMUM = 20_000


def broker_addresses(url: str) -> list[tuple[str, int]]:
    """``mqtt://host:port[,mqtt://host:port...]`` -> ``[(host, port), ...]``."""
    out = []
    for part in url.split(","):
        parsed = urllib.parse.urlsplit(part.strip())
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise ValueError(f"ORDERFLOW_MQTT_URL: {part!r} is not mqtt://host:port")
        out.append((parsed.hostname, parsed.port or 1883))
    return out


class MqttBridge:
    """The bridge of ``settings``; ``run()`` until ``stop()`` (or a signal handler calling it)."""

    def __init__(self, settings: Settings, instance: int = 0, metrics_port: int | None = None):
        self.settings = settings
        self.instance = instance
        self.brokers = broker_addresses(settings.mqtt_url)
        self.producer = Producer({
            "bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "queue.buffering.max.messages": 1_000_000,
            # Retried until delivered: the MQTT message stays unacknowledged (and so in the broker) meanwhile.
            "message.timeout.ms": 0,
        })
        # The records the HTTP path writes: Confluent wire format, the topics' schema ids from the registry.
        self._keepalive_codec = avro_codec(settings, "keepalive")
        self._availability_codec = avro_codec(settings, "availability")
        self._stopping = threading.Event()
        self._clients: list[mqtt.Client] = []
        self.registry = CollectorRegistry()
        self.forwarded = Counter("orderflow_bridge_forwarded", "MQTT messages written to Kafka, by kind",
                                 ["kind"], registry=self.registry)
        self.dropped = Counter("orderflow_bridge_dropped", "MQTT messages dropped, by reason", ["reason"],
                               registry=self.registry)
        self.restamped = Counter("orderflow_bridge_keepalive_restamped",
                                 "keep-alives whose sent_at was too far from the bridge's clock, recorded at its "
                                 "time instead, by direction: ahead, behind", ["direction"], registry=self.registry)
        self.retained_skipped = Counter("orderflow_bridge_retained_skipped",
                                        "retained copies of statuses skipped (not published now)",
                                        registry=self.registry)
        self.broker_up = Gauge("orderflow_bridge_broker_up", "1 while the bridge is connected to the broker",
                               ["broker"], registry=self.registry)
        self.broker_clients = Gauge("orderflow_bridge_broker_clients", "clients connected to the broker ($SYS)",
                                    ["broker"], registry=self.registry)
        if metrics_port is not None:
            start_http_server(metrics_port, addr="127.0.0.1", registry=self.registry)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def run(self) -> None:
        # The schema ids, before any message is taken: a registry outage then waits here (the outage rule),
        # and once known, the ids are cached for the life of the process.
        for codec in (self._keepalive_codec, self._availability_codec):
            call_with_retry(f"the {codec.name} schema id", codec.header, self.settings.sink_retry_seconds)
        for host, port in self.brokers:
            self._clients.append(self._connect(host, port))
        log.info("bridge %d: %s -> Kafka %s (share group %s)", self.instance,
                 ", ".join(f"{h}:{p}" for h, p in self.brokers), self.settings.kafka_bootstrap,
                 self.settings.mqtt_share_group)
        while not self._stopping.is_set():
            self.producer.poll(0.1)
        # Deliver (and so acknowledge) what is in flight, then leave the sessions for the next start.
        self.producer.flush(30)
        self.producer.poll(0)
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        log.info("bridge %d stopped", self.instance)

    def stop(self, *_args) -> None:
        self._stopping.set()

    def _connect(self, host: str, port: int) -> mqtt.Client:
        broker = f"{host}:{port}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"orderflow-bridge-{self.instance}",
                             protocol=mqtt.MQTTv5, manual_ack=True)
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = functools.partial(self._on_connect, broker)
        client.on_disconnect = functools.partial(self._on_disconnect, broker)
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        client.connect_async(host, port, keepalive=30, clean_start=False, properties=properties)
        client.loop_start()
        return client

    def _on_connect(self, broker, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.error("bridge %d: broker %s refused the connection: %s", self.instance, broker, reason_code)
            return
        self.broker_up.labels(broker).set(1)
        # Subscribing again is harmless when the session kept the subscription.
        client.subscribe([(f"$share/{self.settings.mqtt_share_group}/{SUBSCRIPTION}", 1), (SYS_CLIENTS, 0)])
        log.info("bridge %d: connected to %s", self.instance, broker)

    def _on_disconnect(self, broker, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.broker_up.labels(broker).set(0)
        if not self._stopping.is_set():
            log.warning("bridge %d: lost broker %s (%s); reconnecting", self.instance, broker, reason_code)

    # -- messages (paho's network thread) ------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, _userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == SYS_CLIENTS:
            try:
                host, port = client.host, client.port
                self.broker_clients.labels(f"{host}:{port}").set(int(msg.payload))
            except ValueError:
                pass
            return
        if msg.retain:  # a retained status re-sent on subscription: it happened before, not now
            self.retained_skipped.inc()
            client.ack(msg.mid, msg.qos)
            return
        try:
            message = parse(msg.topic, msg.payload, self.settings.mqtt_max_payload_bytes)
            topic, key, value, timestamp, kind = self._record(message)
        except Dropped as dropped:
            self._drop(dropped, msg.payload)
            client.ack(msg.mid, msg.qos)
            return
        on_delivery = functools.partial(self._delivered, client, msg.mid, msg.qos, kind, msg.topic)
        while True:
            try:
                self.producer.produce(topic, value, key, timestamp=timestamp, on_delivery=on_delivery)
                return
            except BufferError:  # the producer's queue is full: wait for deliveries (polled by run())
                time.sleep(0.05)

    def _record(self, message: Message) -> tuple[str, bytes, bytes, int, str]:
        now_ms = int(time.time() * 1000)
        if message.kind == KEEPALIVE:
            sent_at = self._sent_at(message, now_ms)
            key, value, timestamp = keepalive_kafka_record(self._keepalive_codec, message.restaurant_id, sent_at)
            return self.settings.topics.keepalive, key, value, timestamp, "keepalive"
        kind = DISCONNECTED if message.text.encode() == OFFLINE else CONNECTED
        event = AvailabilityChange.event(uuid.uuid4().hex, message.restaurant_id, kind, now_ms)._asdict()
        return (self.settings.topics.availability, message.restaurant_id.encode(),
                self._availability_codec.encode(event), now_ms, kind.lower())

    def _sent_at(self, message: Message, now_ms: int) -> int:
        """The keep-alive's sent_at: now for an empty payload, else the HTTP body's ``sent_at``."""
        if not message.text.strip():
            return now_ms
        from pydantic import ValidationError

        from orderflow.api.ingest import KeepaliveIn  # the HTTP body's contract, stated once

        try:
            body = orjson.loads(message.text)
        except orjson.JSONDecodeError as exc:
            raise Dropped(DROP_BAD_PAYLOAD, f"keep-alive of {message.restaurant_id} is not JSON: {exc}") from None
        if isinstance(body, dict) and body.get("restaurant_id", message.restaurant_id) != message.restaurant_id:
            raise Dropped(DROP_FOREIGN_ID, f"keep-alive on the topic of {message.restaurant_id} names restaurant "
                                           f"{str(body['restaurant_id'])[:80]!r}")
        if isinstance(body, dict):
            body.pop("restaurant_id", None)
        try:
            parsed = KeepaliveIn.model_validate(body)
        except ValidationError as exc:
            raise Dropped(DROP_BAD_PAYLOAD, f"keep-alive of {message.restaurant_id}: "
                                            f"{exc.errors()[0]['msg'] if exc.errors() else exc}") from None
        sent_at = int(parsed.sent_at.timestamp() * 1000) if parsed.sent_at is not None else None
        stamp = stamp_keepalive(sent_at, now_ms, self.settings.keepalive_max_skew_seconds)
        if stamp.restamped:
            self.restamped.labels("ahead" if (stamp.skew_seconds or 0) > 0 else "behind").inc()
            log.warning("keep-alive of %s restamped: %s", message.restaurant_id, stamp.describe())
        return stamp.sent_at_ms

    def _drop(self, dropped: Dropped, payload: bytes) -> None:
        self.dropped.labels(dropped.reason).inc()
        log.warning("dropped MQTT message (%s): %s; payload %r", dropped.reason, dropped.detail, payload[:100])

    # -- delivery reports (run()'s thread) -----------------------------------------------------------------
    def _delivered(self, client: mqtt.Client, mid: int, qos: int, kind: str, mqtt_topic: str,
                   error: KafkaError | None, _record) -> None:
        if error is None:
            self.forwarded.labels(kind).inc()
        else:  # not retriable (librdkafka retries the others forever): acknowledged, or it blocks the queue
            self._drop(Dropped(DROP_KAFKA_REFUSED, f"Kafka refused the record of {mqtt_topic}: {error}"), b"")
        client.ack(mid, qos)
