"""The sample reference data set: B3 tickers with a base price in BRL, and their daily codes and prices.

``python -m orderflow.refdata load`` (without ``--file``), the demos, the generators and the tests use it.
"""
from __future__ import annotations

import datetime
import hashlib
from decimal import Decimal

__all__ = ["SAMPLE_ASSETS", "default_pricing_code", "sample_prices"]

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


def default_pricing_code(asset: str, day: datetime.date) -> str:
    """The pricing code a loaded asset gets on ``day`` when none is given: ``{ASSET}-{YYYYMMDD}``."""
    return f"{asset}-{day:%Y%m%d}"


def sample_prices(day: datetime.date) -> dict[str, tuple[str, Decimal]]:
    """The sample assets' codes and prices on ``day``: base price moved by a deterministic -5%..+5%."""
    entries = {}
    for asset, base in SAMPLE_ASSETS.items():
        digest = int.from_bytes(hashlib.sha256(f"{asset}:{day}".encode()).digest()[:4], "big")
        move = Decimal(digest % 1001 - 500) / Decimal(10_000)  # -0.0500 .. +0.0500
        entries[asset] = (default_pricing_code(asset, day), (base * (1 + move)).quantize(Decimal("0.01")))
    return entries
