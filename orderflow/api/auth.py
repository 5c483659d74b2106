"""API keys: creation, hashed storage in PostgreSQL (table ``api_keys``), verification and scopes.

A key looks like ``of_<key_id>_<secret>``: ``key_id`` (public, 12 hex characters) finds the row, the
whole key's SHA-256 digest is compared in constant time with the stored one. The secret has 256 bits of
entropy, which is why a plain SHA-256 (not a slow password hash) is the right tool here.

Scopes:

- ``read``: every query endpoint.
- ``ingest``: every ingest endpoint (orders, and any restaurant's keep-alives and availability).
- ``client:<token>``: reads only that client's orders and volume.
- ``restaurant:<id>``: acts (keep-alive, availability, unavailability) and reads only for that restaurant.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import threading
import time

KEY_PREFIX = "of"
_KEY_RE = re.compile(r"^of_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCOPE_RE = re.compile(r"^(read|ingest|client:[A-Za-z0-9._:@-]{1,128}|restaurant:[A-Za-z0-9._:@-]{1,128})$")


class InvalidScope(ValueError):
    """A scope string that is not one of ``read``, ``ingest``, ``client:<token>``, ``restaurant:<id>``."""


def validate_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise InvalidScope("a key needs at least one scope")
    for scope in scopes:
        if not _SCOPE_RE.match(scope):
            raise InvalidScope(
                f"invalid scope {scope!r}: expected read, ingest, client:<token> or restaurant:<id>"
            )
    return sorted(set(scopes))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and what its scopes allow."""

    key_id: str
    scopes: frozenset[str]

    @property
    def clients(self) -> set[str]:
        return {s.split(":", 1)[1] for s in self.scopes if s.startswith("client:")}

    @property
    def restaurants(self) -> set[str]:
        return {s.split(":", 1)[1] for s in self.scopes if s.startswith("restaurant:")}

    def can_read(self) -> bool:
        return "read" in self.scopes

    def can_ingest(self) -> bool:
        return "ingest" in self.scopes

    def can_read_client(self, token: str) -> bool:
        return self.can_read() or token in self.clients

    def can_read_restaurant(self, restaurant_id: str) -> bool:
        return self.can_read() or restaurant_id in self.restaurants

    def can_act_for_restaurant(self, restaurant_id: str) -> bool:
        return self.can_ingest() or restaurant_id in self.restaurants


def create_key(dsn: str, scopes: list[str], name: str = "") -> tuple[str, str]:
    """Stores a new key's digest with its scopes; returns ``(key_id, key)``. The key is shown only once."""
    import psycopg

    scopes = validate_scopes(scopes)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_keys (key_id, key_sha256, scopes, name) VALUES (%s, %s, %s, %s)",
            (key_id, _digest(key), scopes, name),
        )
    return key_id, key


def revoke_key(dsn: str, key_id: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
        )
        return cur.rowcount == 1


class KeyVerifier:
    """Verifies presented keys against ``api_keys`` through a connection pool.

    Rows are cached for ``cache_seconds`` (default 10 s) so that a busy endpoint does not cost a database
    round trip per request; a revocation therefore takes effect within that time. The digest comparison
    runs on every request, in constant time.
    """

    def __init__(self, pool, cache_seconds: float = 10.0):
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, bytes | None, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def verify_cached(self, key: str) -> Principal | None | bool:
        """Like ``verify`` but never touches the database: ``False`` when the answer is not cached.

        Lets an async caller answer without a thread hop in the common case."""
        match = _KEY_RE.match(key.strip())
        if not match:
            return None
        with self._lock:
            cached = self._cache.get(match.group(1))
        if cached is None or cached[0] < time.monotonic():
            return False
        return self._check(key, match.group(1), cached)

    def verify(self, key: str) -> Principal | None:
        match = _KEY_RE.match(key.strip())
        if not match:
            return None
        key_id = match.group(1)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT key_sha256, scopes FROM api_keys WHERE key_id = %s AND revoked_at IS NULL",
                    (key_id,),
                ).fetchone()
            digest, scopes = (bytes(row[0]), frozenset(row[1])) if row else (None, frozenset())
            cached = (now + self._cache_seconds, digest, scopes)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[key_id] = cached
        return self._check(key, key_id, cached)

    @staticmethod
    def _check(key: str, key_id: str, cached: tuple[float, bytes | None, frozenset[str]]) -> Principal | None:
        _, digest, scopes = cached
        # Compare against a dummy digest when the id is unknown so both paths do the same work.
        if not hmac.compare_digest(_digest(key.strip()), digest or b"\0" * 32) or digest is None:
            return None
        return Principal(key_id=key_id, scopes=scopes)
