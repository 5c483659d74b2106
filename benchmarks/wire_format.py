"""The Confluent wire format beside the single-object encoding it replaced: what the schema id costs per record.

Starts its own Kafka and schema registry (free ports, like the tests), registers ``PricedOrder`` once, then in
one process, over the same ``--n`` priced orders:

- encode: single-object (C3 01 + fingerprint, no registry) vs Confluent (00 + the id cached after one look-up);
- decode: single-object (writer found by fingerprint) vs Confluent (writer found by id in the codec's bounded
  cache: the per-record id look-up), both resolved to the current reader schema;
- the id look-up alone, per record (the bounded cache's get);
- an uncached look-up: the registry's HTTP round trip a new process pays once per schema (register, and the
  writer schema by id), median of ``--lookups`` fresh clients.

    .venv/bin/python benchmarks/wire_format.py --n 200000
"""
from __future__ import annotations

import argparse
import datetime as dt
import decimal
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from orderflow.clients import SchemaRegistry, avro_codec  # noqa: E402
from orderflow.config import load_settings  # noqa: E402
from orderflow.model.avro import AvroCodec  # noqa: E402
from orderflow_dev.local import temporary_stack  # noqa: E402


def priced(i: int) -> dict:
    return {"order_id": f"o-{i:09d}", "client_token": f"client-{i % 300:04d}", "asset": "PETR4", "quantity": 100 + i % 50,
            "event_time": dt.datetime(2026, 11, 10, 14, 0, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=i),
            "source_format": "JSON", "trade_day": dt.date(2026, 11, 10), "pricing_code": "PC-PETR4",
            "price": decimal.Decimal("38.120000"), "total": decimal.Decimal("3812.000000")}


def per_record(label: str, fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    micros = (time.perf_counter() - started) / len(items) * 1e6
    print(f"{label:<58} {micros:8.2f} us/record")
    return micros


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="priced orders encoded and decoded each way")
    parser.add_argument("--lookups", type=int, default=20, help="uncached look-ups (fresh clients)")
    args = parser.parse_args(argv)
    orders = [priced(i) for i in range(args.n)]
    with temporary_stack("bench-wire-", "/tmp", timeout=120, only=("kafka", "registry")) as stack:
        settings = load_settings(stack.environment())
        confluent = avro_codec(settings, "priced_orders")
        single = AvroCodec("priced_order")
        confluent_bytes = [confluent.encode(o) for o in orders[:1]]  # registered: the id is cached from here
        schema_id = confluent.schema_id
        print(f"{args.n:,} priced orders, schema id {schema_id}, {len(confluent_bytes[0])} bytes Confluent vs "
              f"{len(single.encode_single_object(orders[0]))} bytes single-object")
        enc_single = per_record("encode, single-object", single.encode_single_object, orders)
        enc_confluent = per_record("encode, Confluent (id cached)", confluent.encode, orders)
        singles = [single.encode_single_object(o) for o in orders]
        confluents = [confluent.encode(o) for o in orders]
        dec_single = per_record("decode, single-object (writer by fingerprint)", single.decode, singles)
        dec_confluent = per_record("decode, Confluent (writer by id, bounded cache)", confluent.decode, confluents)
        per_record("  of which the id look-up (cache get)", lambda data: confluent.writer_schema(
            int.from_bytes(data[1:5], "big")), confluents)
        registers, fetches = [], []
        for _ in range(args.lookups):
            fresh = SchemaRegistry(settings.schema_registry_url)
            started = time.perf_counter()
            fresh.register(confluent.subject, confluent.schema_text)
            registers.append(time.perf_counter() - started)
            fresh = SchemaRegistry(settings.schema_registry_url)
            started = time.perf_counter()
            fresh.schema(schema_id)
            fetches.append(time.perf_counter() - started)
        print(f"{'uncached: register/look up the id (HTTP), once per process':<58} "
              f"{statistics.median(registers) * 1e3:8.2f} ms")
        print(f"{'uncached: writer schema by id (HTTP), once per id':<58} {statistics.median(fetches) * 1e3:8.2f} ms")
        print(f"ratio single-object / Confluent: encode {enc_single / enc_confluent:.2f}, "
              f"decode {dec_single / dec_confluent:.2f} (above 1: the Confluent format is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
