"""The orders end-to-end scenario shared by the orders pipeline tests (plain helpers, not a test module):
reference data, generated records, the independent expectation, alarm phones and rules, the records on Kafka;
and the checks of what the pipeline wrote."""
from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import random
import zoneinfo
from decimal import Decimal

import psycopg

from orderflow import refdata
from orderflow.clients import avro_codec, aws_client
from orderflow.model import sample_assets
from orderflow_dev.generate.orders import generate, produce
from tests.support.kafka_testing import read_partition
from tests.support.sns_testing import sent_sms

DAY = datetime.date(2026, 11, 13)
SLIDE_SIZE, SLIDE_PERIOD = 3600, 900
# Records in the first and last hour of DAY, local time (the last hour is the next day in UTC): a trade day
# computed in the wrong time zone prices them for a day without reference data, and the checks fail.
NEAR_MIDNIGHT = 40


@dataclasses.dataclass(frozen=True)
class Scenario:
    records: list
    prices: dict
    expected: dict
    phones: dict[str, str]
    rules: list[dict]
    alarms: set


def prepare_scenario(settings, n: int, seed: int) -> Scenario:
    """Loads DAY's reference data, generates ``n`` records with ``seed``, computes what the pipeline must produce,
    registers phones (all clients and the two top clients), derives the alarm rules and the alarms they must raise,
    and produces the records to the orders topic."""
    prices = sample_assets.sample_prices(DAY)
    refdata.load_reference_data(settings, DAY, prices)
    records = list(generate(n, seed=seed, day=DAY, timezone=settings.exchange_timezone, near_midnight=NEAR_MIDNIGHT,
                            avro=avro_codec(settings, "orders")))
    zone = zoneinfo.ZoneInfo(settings.exchange_timezone)
    local_days = {datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, zone).date() for r in records}
    utc_days = {datetime.datetime.fromtimestamp(r.timestamp_ms / 1000, datetime.timezone.utc).date() for r in records}
    assert local_days == {DAY} and utc_days != {DAY}  # a trade day taken in UTC would be another day for some
    expected = expected_outcome(records, prices)
    top_clients = [c for c, _ in sorted(expected["volumes"].items(), key=lambda kv: -kv[1][0])[:2]]
    phones = register_phones(settings, top_clients)
    rules = alarm_rules(expected)
    alarms = expected_alarms(expected, rules)
    produce(settings.kafka_bootstrap, settings.topics.orders, records)
    return Scenario(records=records, prices=prices, expected=expected, phones=phones, rules=rules, alarms=alarms)


def expected_outcome(records, prices, timezone="America/Sao_Paulo"):
    """What the pipeline must produce, computed from the generator's intent, not from pipeline code."""
    volumes = collections.defaultdict(lambda: [Decimal(0), 0])
    windows = collections.defaultdict(Decimal)
    unique, reasons = 0, collections.Counter()
    for record in records:
        if record.kind == "malformed":
            reasons[record.reason] += 1
            continue
        if record.kind == "duplicate":
            continue
        unique += 1
        total = prices[record.asset][1] * record.quantity
        volumes[record.client_token][0] += total
        volumes[record.client_token][1] += 1
        seconds = record.timestamp_ms // 1000
        last_start = seconds - seconds % SLIDE_PERIOD
        for start in range(last_start, seconds - SLIDE_SIZE, -SLIDE_PERIOD):
            windows[start] += total
    return {"volumes": {c: tuple(v) for c, v in volumes.items()}, "windows": dict(windows), "unique": unique,
            "reasons": reasons}


def read_topic(settings, topic):
    return [m for p in range(settings.topic_partitions) for m in read_partition(settings.kafka_bootstrap, topic, p)]


def dynamodb_volumes(settings, day):
    client = aws_client(settings, "dynamodb")
    items, kwargs = [], {}
    while True:
        page = client.scan(TableName=settings.client_volume_table, ConsistentRead=True, **kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    return {i["client_token"]["S"]: (Decimal(i["total"]["N"]), int(i["order_count"]["N"]))
            for i in items if i["day"]["S"] == str(day)}


def alarm_rules(expected):
    ranked = sorted((v[0] for v in expected["volumes"].values()), reverse=True)
    window_totals = sorted(expected["windows"].values())
    return [
        {"id": "e2e-client-day", "scope": "client", "window": "day", "threshold": str(ranked[2])},
        {"id": "e2e-all-1h", "scope": "all", "window": {"size_seconds": SLIDE_SIZE, "period_seconds": SLIDE_PERIOD},
         "threshold": str(window_totals[len(window_totals) * 3 // 4])},
    ]


def expected_alarms(expected, rules):
    client_threshold, window_threshold = Decimal(rules[0]["threshold"]), Decimal(rules[1]["threshold"])
    day_start = datetime.datetime(DAY.year, DAY.month, DAY.day, tzinfo=zoneinfo.ZoneInfo("America/Sao_Paulo"))
    alarms = {("e2e-client-day", client, day_start.astimezone(datetime.timezone.utc))
              for client, (total, _) in expected["volumes"].items() if total >= client_threshold}
    alarms |= {("e2e-all-1h", "*", datetime.datetime.fromtimestamp(start, datetime.timezone.utc))
               for start, total in expected["windows"].items() if total >= window_threshold}
    return alarms


def pipeline_args(rules, *extra):
    return ["--bounded", "--orders_start=earliest", f"--trade_days={DAY}", f"--alarm_rules={json.dumps(rules)}",
            "--orders_batch_size=500", *extra]


def register_phones(settings, top_clients):
    phones = {"all": f"+5511{random.randint(10**8, 10**9 - 1)}",
              **{client: f"+5531{random.randint(10**8, 10**9 - 1)}" for client in top_clients}}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, NULL)", (phones["all"],))
        for client in top_clients:
            conn.execute("INSERT INTO alarm_phones (phone, client_token) VALUES (%s, %s)", (phones[client], client))
    return phones


def check_state(settings, expected, alarms, phones):
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == expected["unique"]
        by_client = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE trade_day = %s GROUP BY 1", (DAY,))}
        assert by_client == expected["volumes"]
        recorded = conn.execute("SELECT rule_id, scope, window_start, total, threshold FROM alarms").fetchall()
        assert {(r, s, w) for r, s, w, _, _ in recorded} == alarms
        # Each alarm's window total (stored) is its window's total computed independently; the alarm records the
        # total of the transaction that crossed: at least the rule's threshold, at most the window's total.
        thresholds = {rule["id"]: Decimal(rule["threshold"]) for rule in alarm_rules(expected)}

        def window_total(rule, scope, start):
            return expected["volumes"][scope][0] if rule == "e2e-client-day" else expected["windows"][int(start.timestamp())]

        stored = {(r, s, w): t for r, s, w, t in conn.execute(
            "SELECT rule_id, scope, window_start, total FROM alarm_window_totals WHERE (rule_id, scope, window_start)"
            " IN (SELECT rule_id, scope, window_start FROM alarms)")}
        assert stored == {(r, s, w): window_total(r, s, w) for r, s, w, _, _ in recorded}
        for rule, scope, start, total, threshold in recorded:
            assert (threshold, thresholds[rule] <= total <= window_total(rule, scope, start)) == (thresholds[rule], True)
        assert conn.execute("SELECT count(*) FROM sms_outbox WHERE sent_at IS NULL").fetchone()[0] == 0
    # DynamoDB: every client's daily volume equals the independent computation, exactly.
    assert dynamodb_volumes(settings, DAY) == expected["volumes"]
    # One SMS per alarm to the all-clients phone, and one to the client's own phone for her alarms.
    sms = collections.Counter(phone for phone, _ in sent_sms(settings.sns_endpoint_url, set(phones.values())))
    expected_sms = collections.Counter({phones["all"]: len(alarms)})
    for client, phone in phones.items():
        if client != "all":
            expected_sms[phone] = sum(1 for rule, scope, _ in alarms if scope == client)
    assert sms == +expected_sms


def demo_session(n: int, seed: int, day: datetime.date, timezone: str) -> tuple[collections.Counter, dict, set]:
    """``make demo-replay``'s orders step (``orderflow_dev.demo.orders``) recomputed from the generator's intent: the
    kinds of its ``n`` records of ``day`` generated with ``seed``, what the pipeline must produce, and the alarms its
    two rules (a client's day over n * 100, an hour of everyone's over n * 220, sliding by 15 minutes) must raise:
    ``(rule, scope, window start)``."""
    records = list(generate(n, seed=seed, day=day, timezone=timezone))
    expected = expected_outcome(records, sample_assets.sample_prices(day), timezone)
    zone = zoneinfo.ZoneInfo(timezone)
    day_start = datetime.datetime.combine(day, datetime.time(), zone).astimezone(datetime.timezone.utc)
    alarms = {("demo-client-day", client, day_start) for client, (total, _) in expected["volumes"].items()
              if total >= Decimal(n * 100)}
    alarms |= {("demo-all-1h", "*", datetime.datetime.fromtimestamp(start, datetime.timezone.utc))
               for start, total in expected["windows"].items() if total >= Decimal(n * 220)}
    return collections.Counter(record.kind for record in records), expected, alarms

