"""``python -m orderflow_dev.generate orders``: realistic order traffic for ``ordem-ativo``.

Deterministic for a seed: the four input models mixed (plain JSON, REST-proxy envelope, CSV, canonical
Avro), skewed assets and clients (Zipf-like), event times over a trading session with bursts, a
configurable share of duplicates (an earlier order with an id sent again, byte for byte) and of
malformed records (each with the dead-letter reason the pipeline must give it). The Kafka record
timestamp is the order's event time, so formats without a time field (CSV) get the same event time.

``generate(...)`` yields ``GeneratedRecord``s (with what was meant), so tests compute expectations
independently of the pipeline; ``produce(...)`` writes them to Kafka.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import random
import sys
import zoneinfo
from collections.abc import Iterable, Iterator

import orjson

from orderflow.clients import schema_registry
from orderflow.config import DEFAULT_TIMEZONE, load_settings
from orderflow.model.avro import AvroCodec, subject_for
from orderflow.model.orders import encode_order_avro
from orderflow.model.pricing import today
from orderflow.model.sample_assets import SAMPLE_ASSETS

FORMATS = ("json", "rest", "csv", "avro")
MALFORMED_REASONS = ("unparseable", "invalid_quantity", "missing_token", "unknown_asset")
UNKNOWN_ASSET = "ZZZZ9"  # never in the reference data


@dataclasses.dataclass(frozen=True)
class GeneratedRecord:
    key: bytes | None
    value: bytes
    timestamp_ms: int
    kind: str                  # "order" | "duplicate" | "malformed"
    reason: str | None = None  # the dead-letter reason a malformed record must get
    order_id: str | None = None  # None: the pipeline derives it from the Kafka coordinates
    client_token: str | None = None
    asset: str | None = None
    quantity: int | None = None
    fmt: str = "json"


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


def encode_order(fmt: str, order_id: str | None, client: str | None, asset: str, quantity, event_ms: int,
                 avro: AvroCodec | None = None) -> bytes:
    """One order in the input model ``fmt``; "avro" is the Confluent wire format through ``avro`` (the orders
    topic's codec), or the single-object encoding of records written before the switch when it is None."""
    fields = {"ativo": asset, "quantidade": quantity}
    if client is not None:
        fields["token"] = client
    if order_id is not None:
        fields["id"] = order_id
    if fmt == "json":
        return orjson.dumps(fields)
    if fmt == "rest":
        return orjson.dumps({"records": [{"value": {**fields, "timestamp": event_ms}}]})
    if fmt == "csv":
        return ",".join(str(v) for v in (asset, quantity, client or "", *([order_id] if order_id else []))).encode()
    order = {"order_id": order_id, "client_token": client, "asset": asset, "quantity": quantity,
             "event_time": datetime.datetime.fromtimestamp(event_ms / 1000, datetime.timezone.utc),
             "source_format": "AVRO"}
    return avro.encode(order) if avro is not None else encode_order_avro(order)


def generate(n: int, *, seed: int = 7, day: datetime.date | None = None, timezone: str = DEFAULT_TIMEZONE,
             duplicate_rate: float = 0.05, malformed_rate: float = 0.02, clients: int = 500,
             assets: Iterable[str] | None = None, formats: Iterable[str] = FORMATS, id_prefix: str | None = None,
             session_hours: float = 7.0, anonymous_share: float = 0.2,
             near_midnight: int = 0, avro: AvroCodec | None = None) -> Iterator[GeneratedRecord]:
    """``n`` records: about ``n * duplicate_rate`` duplicates, ``n * malformed_rate`` malformed, the rest orders.

    ``anonymous_share`` of the JSON/CSV orders carry no id (the pipeline derives one from the Kafka
    coordinates); duplicates are drawn only from orders with an id, as only those can be recognised.
    ``near_midnight`` of the records fall outside the session, in the first hour of ``day`` (the first half)
    and its last hour (the rest), local time: their UTC date is another day on one side of midnight or the
    other (in São Paulo, UTC-3, the last hour's), so a trading day taken in the wrong time zone shows.
    """
    rng = random.Random(seed)
    zone = zoneinfo.ZoneInfo(timezone)
    day = day or datetime.datetime.now(zone).date()
    assets = list(assets or SAMPLE_ASSETS)
    formats = list(formats)
    asset_weights = _zipf_weights(len(assets), 1.0)
    client_names = [f"client-{i:04d}" for i in range(clients)]
    client_weights = _zipf_weights(clients, 1.1)
    id_prefix = id_prefix or f"g{seed}-{day:%Y%m%d}"
    # The session opens at 10:00 local time; orders spread over it with bursts of 20x the usual rate.
    open_ms = int(datetime.datetime(day.year, day.month, day.day, 10, tzinfo=zone).timestamp() * 1000)
    mean_gap_ms = session_hours * 3_600_000 / max(n, 1)
    event_ms = float(open_ms)
    burst_left = 0
    with_ids: list[GeneratedRecord] = []
    early, late = near_midnight // 2, near_midnight - near_midnight // 2
    day_start_ms = int(datetime.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)
    next_day = day + datetime.timedelta(days=1)
    day_end_ms = int(datetime.datetime(next_day.year, next_day.month, next_day.day, tzinfo=zone).timestamp() * 1000)
    for i in range(n):
        if burst_left == 0 and rng.random() < 0.002:
            burst_left = rng.randint(50, 300)
        gap = rng.expovariate(1.0 / mean_gap_ms) / (20 if burst_left else 1)
        burst_left = max(0, burst_left - 1)
        event_ms += gap
        ts = int(event_ms)
        near = i < early or i >= n - late  # a new record (not a duplicate, which keeps its original's time)
        if i < early:  # spread over 00:00-01:00 local, after midnight
            ts = day_start_ms + (i + 1) * 3_600_000 // (early + 1)
        elif near:  # spread over 23:00-24:00 local, before the next midnight
            ts = day_end_ms - 3_600_000 + (i - (n - late) + 1) * 3_600_000 // (late + 1)
        roll = rng.random()
        if roll < duplicate_rate and with_ids and not near:
            original = rng.choice(with_ids)
            yield dataclasses.replace(original, kind="duplicate")
            continue
        fmt = rng.choice(formats)
        client = rng.choices(client_names, client_weights)[0]
        asset = rng.choices(assets, asset_weights)[0]
        quantity = min(int(rng.paretovariate(1.3) * 10), 100_000)
        if roll < duplicate_rate + malformed_rate:
            reason = MALFORMED_REASONS[i % len(MALFORMED_REASONS)]
            if reason == "unparseable":
                value = rng.choice([b'{"ativo": "PETR4", "quantidade": ', b"\x00\x01garbage", b"PETR4;10;x",
                                    b"\xc3\x01" + bytes(8) + b"junk"])
                yield GeneratedRecord(None, value, ts, "malformed", reason, fmt=fmt)
                continue
            order_id = f"{id_prefix}-{i}"
            if reason == "invalid_quantity":
                value = encode_order(fmt if fmt != "avro" else "json", order_id, client, asset, rng.choice([0, -5]), ts)
            elif reason == "missing_token":
                value = encode_order(fmt if fmt != "avro" else "rest", order_id, None, asset, quantity, ts)
            else:
                value = encode_order(fmt, order_id, client, UNKNOWN_ASSET, quantity, ts, avro)
            yield GeneratedRecord(client.encode(), value, ts, "malformed", reason, order_id, client, asset, quantity, fmt)
            continue
        anonymous = fmt in ("json", "csv") and rng.random() < anonymous_share
        order_id = None if anonymous else f"{id_prefix}-{i}"
        record = GeneratedRecord(client.encode(), encode_order(fmt, order_id, client, asset, quantity, ts, avro), ts,
                                 "order",
                                 None, order_id, client, asset, quantity, fmt)
        if order_id is not None:
            with_ids.append(record)
        yield record


def produce(bootstrap: str, topic: str, records: Iterable[GeneratedRecord], *, total: int | None = None,
            progress: bool = False) -> collections.Counter:
    """Writes the records to ``topic`` (record timestamp = event time); returns counts by kind/format/reason."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 512 * 1024})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    counts: collections.Counter = collections.Counter()
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, total=total, unit="rec", desc=f"-> {topic}", file=sys.stderr)
    for record in iterator:
        while True:
            try:
                producer.produce(topic, record.value, record.key, timestamp=record.timestamp_ms, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        counts[record.kind] += 1
        counts[f"format:{record.fmt}"] += record.kind != "malformed"
        if record.reason:
            counts[f"reason:{record.reason}"] += 1
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"{len(failures)} records failed, {remaining} undelivered; first: {failures[:1]}")
    return counts


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.generate orders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="records to produce (default 10000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--topic", default=settings.topics.orders)
    parser.add_argument("--day", type=datetime.date.fromisoformat,
                        help="trading day (default: yesterday); a day whose session is not over would carry "
                             "event times in the future, which Kafka refuses (log.message.timestamp.after.max.ms); "
                             "for live traffic use `python -m orderflow_dev.generate feed`")
    parser.add_argument("--duplicate-rate", type=float, default=0.05)
    parser.add_argument("--malformed-rate", type=float, default=0.02)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {FORMATS}")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or set(formats) - set(FORMATS):
        parser.error(f"--formats must be a comma list of {FORMATS}")
    day = args.day or today(settings) - datetime.timedelta(days=1)
    if day >= today(settings):
        parser.error(f"--day {day}: its session is not over, so its orders would be stamped in the future; "
                     "pick an earlier day, or stream live orders with `python -m orderflow_dev.generate feed`")
    records = generate(args.n, seed=args.seed, day=day, timezone=settings.exchange_timezone,
                       duplicate_rate=args.duplicate_rate, malformed_rate=args.malformed_rate,
                       clients=args.clients, formats=formats,
                       avro=AvroCodec("order", registry=schema_registry(settings), subject=subject_for(args.topic)))
    counts = produce(settings.kafka_bootstrap, args.topic, records, total=args.n, progress=not args.no_progress)
    print(f"produced {args.n} records for {day} to {args.topic}: " + ", ".join(
        f"{key}={value}" for key, value in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
