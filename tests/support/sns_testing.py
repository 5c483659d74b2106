"""What the moto server recorded as sent SMS (moto keeps every Publish to a phone number)."""
from __future__ import annotations

import json
import urllib.request


def sent_sms(sns_endpoint_url: str, phones: set[str] | None = None) -> list[tuple[str, str]]:
    """``(phone, message)`` of every SMS the moto server accepted, optionally only to ``phones``."""
    with urllib.request.urlopen(f"{sns_endpoint_url}/moto-api/data.json", timeout=30) as response:
        data = json.load(response)
    messages = [(m["phone_number"], m["message"]) for m in data.get("sns", {}).get("SMS", [])]
    return [m for m in messages if phones is None or m[0] in phones]
