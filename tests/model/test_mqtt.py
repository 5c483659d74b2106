"""The restaurants' MQTT contract: topics and payloads the bridge accepts, and the accounts' password hashes."""
from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest

from orderflow.model import mqtt


def test_a_message_names_its_restaurant_and_kind():
    assert mqtt.parse("restaurants/rest-1/keepalive", b"", 1024) == ("rest-1", "keepalive", "")
    assert mqtt.parse("restaurants/r.2@x/status", b"offline", 1024) == ("r.2@x", "status", "offline")


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("restaurants/rest-1/other", b"", mqtt.DROP_BAD_TOPIC),
    ("restaurants/rest-1/keepalive/extra", b"", mqtt.DROP_BAD_TOPIC),
    ("elsewhere/rest-1/keepalive", b"", mqtt.DROP_BAD_TOPIC),
    ("restaurants/-bad/keepalive", b"", mqtt.DROP_BAD_TOPIC),
    ("restaurants//keepalive", b"", mqtt.DROP_BAD_TOPIC),
    ("restaurants/rest-1/keepalive", b"x" * 11, mqtt.DROP_OVERSIZED),
    ("restaurants/rest-1/keepalive", b"\xff", mqtt.DROP_NOT_UTF8),
    ("restaurants/rest-1/status", b"gone", mqtt.DROP_BAD_PAYLOAD),
    ("restaurants/rest-1/status", b"Online", mqtt.DROP_BAD_PAYLOAD),
])
def test_what_the_bridge_drops_and_why(topic, payload, reason):
    with pytest.raises(mqtt.Dropped) as dropped:
        mqtt.parse(topic, payload, 10)
    assert dropped.value.reason == reason


def test_password_hashes_are_mosquitto_pbkdf2_sha512():
    salt = b"0123456789ab"
    hashed = mqtt.password_hash("secret", salt)
    _, seven, iterations, salt_b64, digest_b64 = hashed.split("$")
    assert (seven, int(iterations), base64.b64decode(salt_b64)) == ("7", 101, salt)
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
    assert mqtt.password_hash("secret") != mqtt.password_hash("secret")  # a fresh salt each time


@pytest.mark.needs_stack  # mosquitto_passwd comes with `make setup`'s mosquitto package
def test_mosquitto_passwd_writes_the_same_form(tmp_path):
    from tests.support.environment import require

    require(shutil.which("mosquitto_passwd") is not None, "mosquitto_passwd (Debian mosquitto) is not installed")
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "rest-1", "secret"], check=True)
    line = path.read_text().strip()
    user, hashed = line.split(":", 1)
    _, seven, iterations, salt_b64, _ = hashed.split("$")
    assert (user, seven, int(iterations)) == ("rest-1", "7", mqtt.PBKDF2_ITERATIONS)
    assert mqtt.password_hash("secret", base64.b64decode(salt_b64)) == hashed


def test_accounts_take_restaurant_ids_only():
    assert mqtt.check_restaurant_id("rest-00001") == "rest-00001"
    for bad in ("a:b", "a/b", "+", "#", "", "-x"):
        with pytest.raises(ValueError):
            mqtt.check_restaurant_id(bad)
