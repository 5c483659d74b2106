"""The repository's schemas are pinned: an edit, even a harmless-looking one, fails here until it is made on
purpose (the previous version copied to orderflow/schemas/history/, the change checked against the registry's
BACKWARD rule by ``make bootstrap``, the pins below updated)."""
from __future__ import annotations

import hashlib
import json

import pytest

from orderflow.model.avro import TOPIC_SCHEMAS, AvroCodec, load_schema

# schema -> (CRC-64-AVRO fingerprint of its Parsing Canonical Form, SHA-256 prefix of its whole JSON: defaults,
# docs and aliases included, which the canonical form leaves out).
PINNED = {
    "order": ("c7fd6a51198ac44c", "b161739fe8388035"),
    "priced_order": ("1c54a26a6ae4bfaf", "740950902bd80e59"),
    "restaurant_keepalive": ("1943e01597b1a99f", "a2d374b72af1fb0f"),
    "restaurant_availability": ("3b7d66417f52cbde", "dc315fb675404349"),  # + CONNECTED, DISCONNECTED (MQTT)
}


def test_every_topic_schema_is_pinned():
    assert set(PINNED) == set(TOPIC_SCHEMAS.values())


@pytest.mark.parametrize("name", sorted(PINNED))
def test_schema_is_unchanged(name):
    whole = hashlib.sha256(json.dumps(load_schema(name), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert (AvroCodec(name).fingerprint.hex(), whole[:16]) == PINNED[name], (
        f"orderflow/schemas/{name}.avsc changed: if on purpose, copy the previous version to schemas/history/, "
        "check it with `make bootstrap` against a registry holding the old one, then update PINNED")
