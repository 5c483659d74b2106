"""Reference data for pricing: the model, its reader, and ``python -m orderflow.refdata load``.

The model (one trading day ``D`` = ``YYYY-MM-DD`` in the exchange time zone):

- memcached ``assets:{D}`` -> JSON list of the assets traded on ``D``. memcached cannot list its keys, so
  this index is how a reader learns which ``pricing-code`` keys exist for the day: one ``get`` for the
  index, then one ``get_many`` for all of the day's codes.
- memcached ``pricing-code:{ASSET}:{D}`` -> the asset's pricing code on ``D`` (codes change daily).
- DynamoDB ``Settings.prices_table`` item ``{pricing_code: S, price: N}`` -> the code's price (exact decimal).

An asset that is listed for the day but has no code, or whose code has no price, is a reference-data
gap: orders for it are dead-lettered with ``no_pricing_code`` / ``no_price``; an asset absent from the
day's list is ``unknown_asset``.

``load`` replaces a day's asset list with the assets it loads (an asset listed before but not loaded
again becomes ``unknown_asset``) and says so, naming what it dropped; ``load --merge`` adds and updates
the loaded assets and keeps the others listed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import zoneinfo
from decimal import Decimal

from orderflow.config import Settings, load_settings

# Assets of the sample data set (B3 tickers) with a base price in BRL; the daily price moves around it.
SAMPLE_ASSETS: dict[str, Decimal] = {
    asset: Decimal(price) for asset, price in [
        ("PETR4", "38.20"), ("VALE3", "61.35"), ("ITUB4", "35.90"), ("BBDC4", "13.42"), ("BBAS3", "27.15"),
        ("WEGE3", "41.50"), ("ABEV3", "12.80"), ("B3SA3", "11.95"), ("RENT3", "45.10"), ("SUZB3", "56.70"),
        ("ITSA4", "10.25"), ("ELET3", "42.30"), ("JBSS3", "33.60"), ("RDOR3", "28.85"), ("GGBR4", "19.40"),
        ("PRIO3", "44.75"), ("LREN3", "16.90"), ("RADL3", "26.05"), ("EQTL3", "31.20"), ("VIVT3", "50.15"),
        ("CSAN3", "9.87"), ("HAPV3", "3.91"), ("MGLU3", "8.64"), ("EMBR3", "58.30"), ("TOTS3", "30.45"),
        ("CMIG4", "10.98"), ("SBSP3", "92.10"), ("KLBN11", "21.33"), ("BPAC11", "33.07"), ("UGPA3", "22.48"),
    ]
}


def assets_key(day: datetime.date | str) -> str:
    return f"assets:{day}"


def pricing_code_key(asset: str, day: datetime.date | str) -> str:
    return f"pricing-code:{asset}:{day}"


def default_pricing_code(asset: str, day: datetime.date) -> str:
    return f"{asset}-{day:%Y%m%d}"


def sample_prices(day: datetime.date) -> dict[str, tuple[str, Decimal]]:
    """The sample assets' codes and prices on ``day``: base price moved by a deterministic -5%..+5%."""
    entries = {}
    for asset, base in SAMPLE_ASSETS.items():
        digest = int.from_bytes(hashlib.sha256(f"{asset}:{day}".encode()).digest()[:4], "big")
        move = Decimal(digest % 1001 - 500) / Decimal(10_000)  # -0.0500 .. +0.0500
        entries[asset] = (default_pricing_code(asset, day), (base * (1 + move)).quantize(Decimal("0.01")))
    return entries


def today(settings: Settings) -> datetime.date:
    return datetime.datetime.now(zoneinfo.ZoneInfo(settings.exchange_timezone)).date()


def _memcached(settings: Settings):
    from pymemcache.client.base import Client

    return Client(settings.memcached_host_port, connect_timeout=5, timeout=10)


def _dynamodb(settings: Settings):
    from orderflow.bootstrap import aws_client

    return aws_client(settings, "dynamodb")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What a load did to a day's asset list: the list before (None when the day had none) and after."""

    previous: list[str] | None
    listed: list[str]

    @property
    def dropped(self) -> list[str]:
        return sorted(set(self.previous or ()) - set(self.listed))


def load_reference_data(settings: Settings, day: datetime.date,
                        entries: dict[str, tuple[str | None, Decimal | None]], expire_seconds: int = 0,
                        merge: bool = False) -> Loaded:
    """Writes one day's reference data: the asset index, each asset's code and each code's price.

    ``entries`` maps asset -> (pricing_code, price); a None code lists the asset without a code, a None
    price writes the code without a price (both useful to exercise the dead-letter paths). The day's
    asset list becomes ``entries``' assets, or, with ``merge``, those plus the ones already listed (the
    index is updated with compare-and-set, so concurrent merges do not lose each other's assets).
    """
    client = _memcached(settings)
    try:
        codes = {pricing_code_key(asset, day): code for asset, (code, _) in entries.items() if code is not None}
        failed = client.set_many(codes, expire=expire_seconds, noreply=False) if codes else []
        if failed:
            raise RuntimeError(f"memcached refused {len(failed)} pricing codes, e.g. {failed[:3]}")
        # The index goes last: a reader that sees an asset listed finds its code already there.
        loaded = _write_index(client, assets_key(day), sorted(entries), expire_seconds, merge)
    finally:
        client.close()
    table = _dynamodb_resource(settings).Table(settings.prices_table)
    with table.batch_writer(overwrite_by_pkeys=["pricing_code"]) as batch:  # BatchWriteItem, 25 per request
        for code, price in entries.values():
            if code is not None and price is not None:
                batch.put_item(Item={"pricing_code": code, "price": Decimal(price)})
    return loaded


def _write_index(client, key: str, assets: list[str], expire_seconds: int, merge: bool) -> Loaded:
    for _ in range(20):
        raw, cas = client.gets(key)
        previous = json.loads(raw) if raw is not None else None
        listed = sorted(set(previous or ()) | set(assets)) if merge else assets
        value = json.dumps(listed)
        if raw is None:
            written = client.add(key, value, expire=expire_seconds, noreply=False)
        else:
            written = client.cas(key, value, cas, expire=expire_seconds, noreply=False)
        if written:
            return Loaded(previous, listed)
    raise RuntimeError(f"memcached: {key} kept changing while it was written; load again")


def _dynamodb_resource(settings: Settings):
    from orderflow.bootstrap import aws_resource

    return aws_resource(settings, "dynamodb")


def read_reference_data(settings: Settings, days: list[datetime.date | str]) -> dict[str, dict[str, tuple]]:
    """``{day: {asset: (pricing_code | None, price | None)}}`` for the days that have an asset index.

    Three round trips whatever the number of assets: the day indexes, all pricing codes (memcached
    ``get_many``), all prices (DynamoDB BatchGetItem, 100 keys per request).
    """
    days = [str(day) for day in days]
    client = _memcached(settings)
    try:
        indexes = client.get_many([assets_key(day) for day in days])
        listed = {day: json.loads(indexes[assets_key(day)]) for day in days if assets_key(day) in indexes}
        keys = [pricing_code_key(asset, day) for day, assets in listed.items() for asset in assets]
        codes = {}
        for start in range(0, len(keys), 500):
            codes.update(client.get_many(keys[start:start + 500]))
    finally:
        client.close()
    prices = _batch_get_prices(settings, sorted({code.decode() for code in codes.values()}))
    result = {}
    for day, assets in listed.items():
        result[day] = {}
        for asset in assets:
            raw = codes.get(pricing_code_key(asset, day))
            code = raw.decode() if raw is not None else None
            result[day][asset] = (code, prices.get(code) if code else None)
    return result


def _batch_get_prices(settings: Settings, codes: list[str]) -> dict[str, Decimal]:
    client = _dynamodb(settings)
    prices = {}
    for start in range(0, len(codes), 100):
        request = {settings.prices_table: {"Keys": [{"pricing_code": {"S": c}} for c in codes[start:start + 100]]}}
        while request:
            response = client.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(settings.prices_table, []):
                prices[item["pricing_code"]["S"]] = Decimal(item["price"]["N"])
            request = response.get("UnprocessedKeys") or None
    return prices


def _read_csv(path: str, day: datetime.date) -> dict[str, tuple[str | None, Decimal | None]]:
    """``asset,price[,pricing_code]`` lines; an empty price lists the code without a price."""
    entries = {}
    with open(path) as source:
        for number, line in enumerate(source, 1):
            fields = [f.strip() for f in line.split(",")]
            if not fields[0] or fields[0].lower() in ("asset", "ativo"):
                continue
            if len(fields) not in (2, 3):
                raise SystemExit(f"{path}:{number}: expected asset,price[,pricing_code]")
            asset = fields[0].upper()
            code = fields[2] if len(fields) == 3 and fields[2] else default_pricing_code(asset, day)
            entries[asset] = (code, Decimal(fields[1]) if fields[1] else None)
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow.refdata", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="write the pricing codes and prices of one or more days")
    load.add_argument("--day", action="append", type=datetime.date.fromisoformat,
                      help="trading day YYYY-MM-DD (repeatable; default: today in the exchange time zone)")
    load.add_argument("--file", help="CSV asset,price[,pricing_code] (default: the built-in sample assets); the "
                                     "day's asset list becomes the file's assets unless --merge")
    load.add_argument("--merge", action="store_true",
                      help="add and update the loaded assets, keeping the other assets listed for the day")
    load.add_argument("--expire-seconds", type=int, default=0, help="memcached expiry (0 = never)")
    show = commands.add_parser("show", help="print what the pipeline would read for a day")
    show.add_argument("--day", action="append", type=datetime.date.fromisoformat)
    args = parser.parse_args(argv)
    settings = load_settings()
    days = args.day or [today(settings)]
    if args.command == "load":
        for day in days:
            entries = _read_csv(args.file, day) if args.file else sample_prices(day)
            loaded = load_reference_data(settings, day, entries, args.expire_seconds, merge=args.merge)
            print(f"{day}: {len(entries)} assets -> memcached {settings.memcached_address}, "
                  f"prices -> DynamoDB {settings.prices_table}")
            if args.merge:
                print(f"{day}: merged into the day's asset list: {len(loaded.listed)} assets listed")
            elif loaded.previous is None:
                print(f"{day}: the day's asset list: {len(loaded.listed)} assets")
            else:
                dropped = loaded.dropped
                print(f"{day}: replaced the day's asset list ({len(loaded.previous)} -> {len(loaded.listed)} assets)"
                      + (f"; no longer listed (orders for them become unknown_asset): {', '.join(dropped)}"
                         "; use --merge to keep them" if dropped else ""))
    else:
        for day, assets in read_reference_data(settings, days).items():
            for asset, (code, price) in sorted(assets.items()):
                print(f"{day} {asset:<8} {code or '-':<20} {price if price is not None else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
