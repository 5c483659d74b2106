"""The restaurants' MQTT contract, Beam-free and I/O-free: topics, payloads, accounts and the broker's ACL.

- ``restaurants/{id}/keepalive``: a keep-alive. Payload empty (sent now) or the HTTP body's JSON
  ``{"sent_at": "<RFC 3339>"}``; the bridge writes the record ``POST /restaurants/{id}/keepalive`` writes.
- ``restaurants/{id}/status``: ``online`` (retained) after each connect; ``offline`` is the connection's last
  will (retained), which the broker publishes when the connection drops without a DISCONNECT (a crash, a
  lost network, the keep-alive timeout). The bridge turns them into CONNECTED / DISCONNECTED changes.

Each restaurant's account is its id (the broker's ACL lets user ``%u`` write ``restaurants/%u/...`` only), so
another restaurant's topic is refused by the broker itself; the bridge's account reads ``restaurants/#``.
Passwords are stored as Mosquitto 2.0 hashes (``$7$``: PBKDF2-HMAC-SHA512, ``mosquitto_passwd``'s format).
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import NamedTuple

__all__ = ["DROP_BAD_PAYLOAD", "DROP_BAD_TOPIC", "DROP_FOREIGN_ID", "DROP_KAFKA_REFUSED", "DROP_NOT_UTF8",
           "DROP_OVERSIZED", "Dropped", "KEEPALIVE", "Message", "OFFLINE", "ONLINE", "PBKDF2_ITERATIONS", "STATUS",
           "SUBSCRIPTION", "acl", "check_restaurant_id", "new_password", "parse", "password_hash", "password_line",
           "topic"]

TOPIC_ROOT = "restaurants"
KEEPALIVE = "keepalive"
STATUS = "status"
ONLINE = b"online"
OFFLINE = b"offline"
# The filter every bridge subscribes to (as ``$share/<group>/<filter>``).
SUBSCRIPTION = f"{TOPIC_ROOT}/+/+"
# A restaurant id as the API takes it in paths (orderflow.api.contract.PATH_ID): never '+', '#' or '/'.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")

# Why the bridge drops a message (its counter's label and log line).
DROP_BAD_TOPIC = "bad_topic"            # not restaurants/{valid id}/keepalive|status
DROP_NOT_UTF8 = "not_utf8"
DROP_OVERSIZED = "oversized"
DROP_BAD_PAYLOAD = "bad_payload"        # not empty, not {"sent_at": ...}; a status other than online/offline
DROP_FOREIGN_ID = "foreign_id"          # the payload names another restaurant than the topic
DROP_KAFKA_REFUSED = "kafka_refused"    # Kafka refused the record for good (e.g. too large): not retriable
DROP_REASONS = (DROP_BAD_TOPIC, DROP_NOT_UTF8, DROP_OVERSIZED, DROP_BAD_PAYLOAD, DROP_FOREIGN_ID, DROP_KAFKA_REFUSED)


class Dropped(ValueError):
    """A message the bridge drops: ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Message(NamedTuple):
    restaurant_id: str
    kind: str  # KEEPALIVE or STATUS
    text: str  # the payload, decoded


def topic(restaurant_id: str, kind: str) -> str:
    return f"{TOPIC_ROOT}/{restaurant_id}/{kind}"


def parse(topic_name: str, payload: bytes, max_payload_bytes: int) -> Message:
    """The restaurant, kind and text of a message; raises Dropped."""
    parts = topic_name.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or parts[2] not in (KEEPALIVE, STATUS) \
            or not _ID.fullmatch(parts[1]):
        raise Dropped(DROP_BAD_TOPIC, f"topic {topic_name[:200]!r} is not {TOPIC_ROOT}/<restaurant id>/"
                                      f"{KEEPALIVE}|{STATUS}")
    if len(payload) > max_payload_bytes:
        raise Dropped(DROP_OVERSIZED, f"{len(payload)} bytes on {topic_name}, at most {max_payload_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Dropped(DROP_NOT_UTF8, f"payload on {topic_name} is not UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    if parts[2] == STATUS and payload not in (ONLINE, OFFLINE):
        raise Dropped(DROP_BAD_PAYLOAD, f"status on {topic_name} is {text[:80]!r}, not 'online' or 'offline'")
    return Message(parts[1], parts[2], text)


# -- accounts -------------------------------------------------------------------------------------------
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$


def password_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``$7$<iterations>$<salt>$<hash>``, the form ``mosquitto_passwd`` writes (Mosquitto 2.0)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    return secrets.token_urlsafe(18)


def password_line(username: str, password: str) -> str:
    if ":" in username:
        raise ValueError(f"an MQTT account name cannot hold ':': {username!r}")
    return f"{username}:{password_hash(password)}\n"


def check_restaurant_id(restaurant_id: str) -> str:
    if not _ID.fullmatch(restaurant_id) or ":" in restaurant_id:
        raise ValueError(f"{restaurant_id!r} is not a restaurant id MQTT accounts take (letters, digits, '._@-', "
                         "starting with a letter or digit)")
    return restaurant_id


def acl(bridge_username: str) -> str:
    """The broker's ACL: the bridge reads every restaurant's topics (and the broker's $SYS counters); a
    restaurant (account = its id) writes its own two topics and reads its own status, nothing else."""
    return "\n".join([
        f"user {bridge_username}",
        f"topic read {TOPIC_ROOT}/#",
        "topic read $SYS/#",
        "",
        "# every other account is a restaurant whose name is its id",
        f"pattern write {TOPIC_ROOT}/%u/{KEEPALIVE}",
        f"pattern readwrite {TOPIC_ROOT}/%u/{STATUS}",
        "",
    ])
