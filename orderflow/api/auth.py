"""API keys: creation, hashed storage in PostgreSQL (table ``api_keys``), verification and scopes; the
dashboard's short-lived session tokens; the per-address limit on failed authentications.

A key looks like ``of_<key_id>_<secret>``: ``key_id`` (public, 12 hex characters) finds the row, the
whole key's SHA-256 digest is compared in constant time with the stored one. The secret has 256 bits of
entropy, which is why a plain SHA-256 (not a slow password hash) is the right tool here.

Scopes:

- ``read``: every query endpoint.
- ``ingest``: every ingest endpoint (orders, and any restaurant's keep-alives and availability).
- ``client:<token>``: reads only that client's orders and volume.
- ``restaurant:<id>``: acts (keep-alive, availability, unavailability) and reads only for that restaurant.
- ``admin``: manages the phones that receive alarm SMS (``/alarm-phones``).

An API key never travels in a URL. The dashboard page, whose event stream (EventSource) cannot send
headers, works with a *dashboard token* instead: ``odt_<key_id>_<expires>_<mac>``, read-only (accepted
by the dashboard's endpoints only), valid ``dashboard_token_seconds`` (15 min by default, renewed by the
open page), and void as soon as its key is revoked. The mac is an HMAC-SHA256 keyed with the key's
stored digest, so tokens need no table and no server secret, and every worker can check them.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import threading
import time

from orderflow.api.contract import TOKEN
from orderflow.api.metrics import KEY_LOOKUPS

__all__ = ["FailureLimiter", "InvalidScope", "KeyVerifier", "Principal", "create_key", "dashboard_token",
           "revoke_key"]

KEY_PREFIX = "of"
DASHBOARD_TOKEN_PREFIX = "odt"
_KEY_RE = re.compile(r"^of_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DASHBOARD_TOKEN_RE = re.compile(r"^odt_([0-9a-f]{12})_([0-9]{1,12})_([A-Za-z0-9_-]{43})$")
_SCOPE_RE = re.compile(rf"(read|ingest|admin|client:{TOKEN}|restaurant:[A-Za-z0-9._:@-]{{1,128}})")

_CACHED_LOOKUPS = KEY_LOOKUPS.labels("cached")  # resolved once: it is counted on every request with a cached key


class InvalidScope(ValueError):
    """A scope string that is not one of ``read``, ``ingest``, ``admin``, ``client:<token>``,
    ``restaurant:<id>``."""


def validate_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise InvalidScope("a key needs at least one scope")
    for scope in scopes:
        if not _SCOPE_RE.fullmatch(scope):
            raise InvalidScope(
                f"invalid scope {scope!r}: expected read, ingest, admin, client:<token> or restaurant:<id>"
            )
    return sorted(set(scopes))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and what its scopes allow."""

    key_id: str
    scopes: frozenset[str]
    dashboard_expires: int | None = None  # set when authenticated by a dashboard token (epoch seconds)

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

    def can_admin(self) -> bool:
        return "admin" in self.scopes

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


def _mac(digest: bytes, key_id: str, expires: int) -> str:
    mac = hmac.new(digest, f"dashboard:{key_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _dashboard_token(key_id: str, digest: bytes, ttl_seconds: float) -> tuple[str, int]:
    expires = int(time.time() + ttl_seconds)
    return f"{DASHBOARD_TOKEN_PREFIX}_{key_id}_{expires}_{_mac(digest, key_id, expires)}", expires


def dashboard_token(key: str, ttl_seconds: float) -> tuple[str, int]:
    """A dashboard token for ``key`` (which must hold the ``read`` scope to be of use) and its expiry.

    Needs no database: the mac is keyed with the digest the database stores for the key."""
    match = _KEY_RE.match(key.strip())
    if not match:
        raise ValueError("not an API key")
    return _dashboard_token(match.group(1), _digest(key.strip()), ttl_seconds)


_Row = tuple[bytes, frozenset[str]]  # (stored digest, scopes) of an active key


class KeyVerifier:
    """Verifies presented keys (and dashboard tokens) against ``api_keys`` through a connection pool.

    Active keys' rows are cached for ``cache_seconds`` (default 10 s) so that a busy endpoint does not cost
    a database round trip per request; a revocation therefore takes effect within that time. Key ids the
    database does not know (or knows as revoked) are remembered for ``unknown_cache_seconds`` in a
    bounded table of their own, so repeating a bad key costs no lookup and a flood of them cannot evict
    the active keys. The digest comparison runs on every request, in constant time.
    """

    def __init__(self, pool, cache_seconds: float = 10.0, unknown_cache_seconds: float = 60.0,
                 max_unknown: int = 100_000):
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._unknown_cache_seconds = unknown_cache_seconds
        self._max_unknown = max_unknown
        self._known: dict[str, tuple[float, _Row]] = {}
        self._unknown: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _cached_row(self, key_id: str) -> _Row | None | bool:
        """The cached row, None when cached as unknown, False when not cached (or expired)."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            if known is not None and known[0] >= now:
                return known[1]
            unknown_until = self._unknown.get(key_id)
            if unknown_until is not None and unknown_until >= now:
                return None
        return False

    def _row(self, key_id: str, fresh: bool = False) -> _Row | None:
        if not fresh:
            cached = self._cached_row(key_id)
            if cached is not False:
                _CACHED_LOOKUPS.inc()
                return cached
        with self._pool.connection() as conn:
            found = conn.execute(
                "SELECT key_sha256, scopes FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        now = time.monotonic()
        row = (bytes(found[0]), frozenset(found[1])) if found else None
        KEY_LOOKUPS.labels("found" if row else "unknown").inc()
        with self._lock:
            if row is None:
                self._known.pop(key_id, None)
                self._unknown[key_id] = now + self._unknown_cache_seconds
                self._unknown.move_to_end(key_id)
                while len(self._unknown) > self._max_unknown:
                    self._unknown.popitem(last=False)
            else:
                if len(self._known) > 10_000:
                    self._known.clear()
                self._known[key_id] = (now + self._cache_seconds, row)
        return row

    def lookup(self, key_id: str) -> _Row | None:
        """``(digest, scopes)`` of an active key (cached), or None."""
        return self._row(key_id)

    @staticmethod
    def session_token(key_id: str, row: _Row, ttl_seconds: float) -> tuple[str, int]:
        """A fresh dashboard token for an active key's row, and its expiry (epoch seconds)."""
        return _dashboard_token(key_id, row[0], ttl_seconds)

    def verify_cached(self, key: str) -> Principal | None | bool:
        """Like ``verify`` but never touches the database: ``False`` when the answer is not cached.

        Lets an async caller answer without a thread hop in the common case."""
        match = _KEY_RE.match(key.strip())
        if not match:
            return None
        row = self._cached_row(match.group(1))
        if row is False:
            return False
        _CACHED_LOOKUPS.inc()
        return self._check(key, match.group(1), row)

    def verify(self, key: str, fresh: bool = False) -> Principal | None:
        """The key's Principal, or None. ``fresh`` asks the database whatever the cache holds."""
        match = _KEY_RE.match(key.strip())
        if not match:
            return None
        return self._check(key, match.group(1), self._row(match.group(1), fresh))

    def dashboard_token_cached(self, token: str) -> Principal | None | bool:
        """Like ``verify_dashboard_token`` but never touches the database: ``False`` when the answer is not
        cached. A malformed or expired token is refused here: it needs no lookup, so it is answered 401 even
        from an address whose lookups are throttled."""
        match = _DASHBOARD_TOKEN_RE.match(token.strip())
        if not match or int(match.group(2)) < time.time():
            return None
        row = self._cached_row(match.group(1))
        if isinstance(row, bool):
            return False
        _CACHED_LOOKUPS.inc()
        return self._token_principal(match, row)

    def verify_dashboard_token(self, token: str, fresh: bool = False) -> Principal | None:
        """A read-only Principal for a valid, unexpired dashboard token of an active key with ``read``."""
        match = _DASHBOARD_TOKEN_RE.match(token.strip())
        if not match or int(match.group(2)) < time.time():
            return None
        return self._token_principal(match, self._row(match.group(1), fresh))

    @staticmethod
    def _token_principal(match: re.Match, row: _Row | None) -> Principal | None:
        key_id, expires, mac = match.group(1), int(match.group(2)), match.group(3)
        expected = _mac(row[0], key_id, expires) if row else "x" * 43
        if not hmac.compare_digest(mac, expected) or row is None or "read" not in row[1]:
            return None
        return Principal(key_id=key_id, scopes=frozenset({"read"}), dashboard_expires=expires)

    @staticmethod
    def _check(key: str, key_id: str, row: _Row | None) -> Principal | None:
        digest, scopes = row if row else (None, frozenset())
        # Compare against a dummy digest when the id is unknown so both paths do the same work.
        if not hmac.compare_digest(_digest(key.strip()), digest or b"\0" * 32) or digest is None:
            return None
        return Principal(key_id=key_id, scopes=scopes)


class FailureLimiter:
    """Failed authentications per client address: a token bucket of ``per_minute`` failures, refilled
    continuously. A blocked address gets 429 (with Retry-After) instead of a database lookup; keys already
    in the verifier's cache are still answered, so a legitimate client behind the same address keeps
    working."""

    def __init__(self, per_minute: int, max_addresses: int = 100_000):
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60.0
        self._max_addresses = max_addresses
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self._capacity, now))
        return min(self._capacity, tokens + (now - at) * self._refill_per_second)

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may fail again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(address, now)
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self._refill_per_second))

    def record_failure(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._buckets[address] = (self._tokens(address, now) - 1, now)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self._max_addresses:
                self._buckets.popitem(last=False)
