"""Reference data for pricing: ``python -m orderflow.refdata load`` and ``show``, and its writer.

The stores' layout and the reader are ``orderflow.io.reference_data_store``; the sample data set is
``orderflow.model.sample_assets``; the trading day is ``orderflow.model.pricing.today``.

``load`` replaces a day's asset list with the assets it loads (an asset listed before but not loaded
again becomes ``unknown_asset``) and says so, naming what it dropped; ``load --merge`` adds and updates
the loaded assets and keeps the others listed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from decimal import Decimal

from orderflow import clients
from orderflow.config import Settings, load_settings
from orderflow.io import reference_data_store
from orderflow.model import pricing, sample_assets


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
    client = clients.memcached(settings)
    try:
        codes = {reference_data_store.pricing_code_key(asset, day): code for asset, (code, _) in entries.items() if code is not None}
        failed = client.set_many(codes, expire=expire_seconds, noreply=False) if codes else []
        if failed:
            raise RuntimeError(f"memcached refused {len(failed)} pricing codes, e.g. {failed[:3]}")
        # The index goes last: a reader that sees an asset listed finds its code already there.
        loaded = _write_index(client, reference_data_store.assets_key(day), sorted(entries), expire_seconds, merge)
    finally:
        client.close()
    table = clients.aws_resource(settings, "dynamodb").Table(settings.prices_table)
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
            code = fields[2] if len(fields) == 3 and fields[2] else sample_assets.default_pricing_code(asset, day)
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
    days = args.day or [pricing.today(settings)]
    if args.command == "load":
        for day in days:
            entries = _read_csv(args.file, day) if args.file else sample_assets.sample_prices(day)
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
        for day, assets in reference_data_store.read_reference_data(settings, days).items():
            for asset, (code, price) in sorted(assets.items()):
                print(f"{day} {asset:<8} {code or '-':<20} {price if price is not None else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
