"""``make demo`` orders step: yesterday's reference data, generated orders, a bounded replay, a summary."""
from __future__ import annotations

import datetime
import json
import time

import psycopg
from apache_beam.metrics.metric import MetricsFilter

from orderflow import refdata
from orderflow.clients import avro_codec, aws_client
from orderflow.config import Settings
from orderflow.model import pricing, sample_assets
from orderflow.pipelines import orders
from orderflow_dev.generate.orders import generate, produce


def demo(settings: Settings, n: int = 20_000, seed: int | None = None) -> None:
    """``make demo`` step: load yesterday's reference data, generate its session (another each time, unless
    ``seed`` is given), run bounded, print a summary.

    Yesterday, because a whole generated session of today would carry event times in the future, which a
    Kafka 4 broker refuses (``log.message.timestamp.after.max.ms``, one hour) as it should."""
    day = pricing.today(settings) - datetime.timedelta(days=1)
    refdata.load_reference_data(settings, day, sample_assets.sample_prices(day))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES ('+5511900000001', NULL) "
                     "ON CONFLICT (phone) DO NOTHING")
    counts = produce(settings.kafka_bootstrap, settings.topics.orders,
                     generate(n, seed=int(time.time()) if seed is None else seed, day=day,
                              timezone=settings.exchange_timezone, avro=avro_codec(settings, "orders")), total=n)
    print(f"produced {n:,} records for {day}: {counts['order']:,} orders, {counts['duplicate']:,} duplicates, "
          f"{counts['malformed']:,} malformed")
    rules = [{"id": "demo-client-day", "scope": "client", "window": "day", "threshold": str(n * 100)},
             {"id": "demo-all-1h", "scope": "all", "window": {"size_seconds": 3600, "period_seconds": 900},
              "threshold": str(n * 220)}]
    started = time.monotonic()
    result = orders.run(["--bounded", f"--trade_days={day}", f"--alarm_rules={json.dumps(rules)}",
                         "--orders_batch_size=2000"], settings=settings)
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    print(f"pipeline (bounded, whole topic) in {time.monotonic() - started:.1f}s: "
          f"{counters.get('records_in', 0):,} records, {counters.get('orders_priced', 0):,} priced, "
          f"{counters.get('postgres_inserted', 0):,} new orders, {counters.get('postgres_duplicates', 0):,} duplicates")
    reasons = {name[len("dead_letter_"):]: value for name, value in counters.items() if name.startswith("dead_letter_")}
    print("dead letters by reason: " + (", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"))
    table = aws_client(settings, "dynamodb")
    items, kwargs = [], {}
    while True:
        page = table.scan(TableName=settings.client_volume_table, **kwargs)
        items += [i for i in page["Items"] if i["day"]["S"] == str(day)]
        if "LastEvaluatedKey" not in page:
            break
        kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    top = sorted(items, key=lambda i: -float(i["total"]["N"]))[:5]
    print(f"top clients by volume on {day} (DynamoDB {settings.client_volume_table}):")
    for item in top:
        print(f"  {item['client_token']['S']:<14} {item['total']['N']:>20} BRL  {item['order_count']['N']:>6} orders")
    with psycopg.connect(settings.postgres_dsn) as conn:
        fired = conn.execute("SELECT count(*) FROM alarms").fetchone()[0]
        sent = conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NOT NULL").fetchone()[0]
    print(f"alarms recorded: {fired}, SMS sent through SNS: {sent}")
