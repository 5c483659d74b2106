"""A write-then-read through every service of the stack: the proof that the stack is usable.

``make demo`` prints it as a table; the tests assert every row.
"""
from __future__ import annotations

import dataclasses
import time
import uuid

from orderflow import clients
from orderflow.bootstrap import create_topics
from orderflow.config import Settings


@dataclasses.dataclass
class RoundTrip:
    service: str
    operation: str
    ok: bool
    millis: float
    detail: str


def _timed(service: str, operation: str, action) -> RoundTrip:
    start = time.perf_counter()
    try:
        ok, detail = action()
    except Exception as exc:  # noqa: BLE001 - the table reports any failure with its reason
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return RoundTrip(service, operation, ok, (time.perf_counter() - start) * 1000, detail)


def kafka_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    from confluent_kafka import Consumer, TopicPartition

    topic = f"roundtrip-{token}"
    create_topics(settings.kafka_bootstrap, [topic], 1)
    producer = clients.kafka_producer(settings)
    delivered = []
    producer.produce(topic, key=token, value=b"ping-" + token.encode(), on_delivery=lambda e, m: delivered.append((e, m)))
    producer.flush(10)
    error, message = delivered[0]
    if error:
        return False, str(error)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": topic,
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, message.offset())])
        record = consumer.poll(10)
    finally:
        consumer.close()
    ok = record is not None and record.error() is None and record.value() == b"ping-" + token.encode()
    return ok, f"{topic}[0]@{message.offset()}"


def postgres_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    # A temporary table: the check writes and reads a row without a migration of its own in the runtime
    # package's schema (the table goes with the connection).
    with clients.postgres(settings, connect_timeout=5) as conn:
        conn.execute("CREATE TEMPORARY TABLE stack_roundtrip (id bigserial PRIMARY KEY, note text NOT NULL)")
        row_id = conn.execute("INSERT INTO stack_roundtrip (note) VALUES (%s) RETURNING id", (token,)).fetchone()[0]
        note = conn.execute("SELECT note FROM stack_roundtrip WHERE id = %s", (row_id,)).fetchone()[0]
    return note == token, f"stack_roundtrip id={row_id}"


def redis_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    client = clients.redis_client(settings, socket_timeout=5)
    client.set(f"roundtrip:{token}", token, ex=60)
    return client.get(f"roundtrip:{token}") == token.encode(), f"key roundtrip:{token}"


def memcached_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    client = clients.memcached(settings, connect_timeout=5, timeout=5)
    client.set(f"roundtrip:{token}", token.encode(), expire=60)
    return client.get(f"roundtrip:{token}") == token.encode(), f"key roundtrip:{token}"


def dynamodb_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    client = clients.aws_client(settings, "dynamodb")
    client.put_item(TableName=settings.prices_table,
                    Item={"pricing_code": {"S": f"roundtrip-{token}"}, "price": {"N": "1.23"}})
    item = client.get_item(TableName=settings.prices_table, Key={"pricing_code": {"S": f"roundtrip-{token}"}},
                           ConsistentRead=True).get("Item")
    client.delete_item(TableName=settings.prices_table, Key={"pricing_code": {"S": f"roundtrip-{token}"}})
    return bool(item) and item["price"]["N"] == "1.23", f"{settings.prices_table}"


def sns_roundtrip(settings: Settings, token: str) -> tuple[bool, str]:
    client = clients.aws_client(settings, "sns")
    arn = client.create_topic(Name=settings.alarm_sns_topic)["TopicArn"]
    message_id = client.publish(TopicArn=arn, Message=f"roundtrip {token}")["MessageId"]
    sms_id = client.publish(PhoneNumber="+5511999990000", Message=f"roundtrip {token}")["MessageId"]
    return bool(message_id and sms_id), f"topic + SMS message ids {message_id[:8]}, {sms_id[:8]}"


CHECKS = [
    ("kafka", "produce + consume", kafka_roundtrip),
    ("postgres", "INSERT + SELECT", postgres_roundtrip),
    ("redis", "SET + GET", redis_roundtrip),
    ("memcached", "set + get", memcached_roundtrip),
    ("dynamodb", "PutItem + GetItem", dynamodb_roundtrip),
    ("sns", "Publish (topic, SMS)", sns_roundtrip),
]


def run_roundtrips(settings: Settings) -> list[RoundTrip]:
    token = uuid.uuid4().hex[:10]
    return [_timed(service, op, lambda f=fn: f(settings, token)) for service, op, fn in CHECKS]


def format_table(rows: list[RoundTrip]) -> str:
    lines = [f"{'service':<10} {'operation':<22} {'result':<6} {'ms':>8}  detail", "-" * 78]
    for r in rows:
        lines.append(f"{r.service:<10} {r.operation:<22} {'OK' if r.ok else 'FAIL':<6} {r.millis:>8.1f}  {r.detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from orderflow.config import load_settings

    results = run_roundtrips(load_settings())
    print(format_table(results))
    sys.exit(0 if all(r.ok for r in results) else 1)
