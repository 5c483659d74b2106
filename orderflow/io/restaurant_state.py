"""Redis hot state of restaurants: what is needed to say "online or offline, and why" right now.

One Redis hash per restaurant, ``{prefix}{restaurant_id}``, written by the presence pipeline:

- ``last_keepalive_ms``: the latest keep-alive's ``sent_at`` (only ever moves forward);
- ``sessions``: the restaurant's latest connected intervals ``start,end;...`` (``[first ping, last ping + timeout)``,
  merged as session windows merge, the latest ``SESSIONS_KEPT``): what a restarted presence pipeline rebuilds
  the sessions it had open from (``orderflow.io.presence_restore``);
- ``status``, ``status_since_ms``, ``status_reason``: the restaurant's own availability (the latest
  SET_STATUS by ``occurred_at`` wins, whatever order events arrive in);
- ``connection``, ``connection_since_ms``: the latest connection change (DISCONNECTED: the MQTT last will,
  CONNECTED: back), by ``occurred_at`` like the status;
- ``schedule:{schedule_id}``: JSON ``{"reason", "starts_at_ms", "ends_at_ms", "cancelled_at_ms"}`` of each
  scheduled unavailability (a cancellation sticks even if the creation arrives after it).

``WriteKeepalivesToRedis`` and ``WriteAvailabilityToRedis`` (``orderflow.io.presence_redis``) are the
pipeline's Beam sinks; this module has no Beam, so the API reads the state with ``RestaurantStateStore``.

Every write is a Lua script, so concurrent writers merge instead of overwriting each other, and a batch
of writes is one round trip. A write Redis refuses because of the data (e.g. ``WRONGTYPE``: the key holds
something else than a hash; a script error on a corrupt stored field) does not fail the others: the
writes report it (``RedisWrites.refused``, with Redis' message; a refused keep-alive script call of many
restaurants is bisected down to the one refused) and the Beam sinks return those records as
``DeadLetter``s (reason ``redis_rejected``, counter ``RestaurantState/dead_letters``). ``RestaurantStateStore.statuses`` answers up to thousands of ids with one
pipelined round trip (HGETALL per id) and evaluates the rules of ``orderflow.model.presence`` at ``now``.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import redis

from orderflow.io.retry import REDIS_SERVER_STATE_ERRORS
from orderflow.model.presence import (
    AVAILABLE,
    CONNECTION_KINDS,
    DEFAULT_KEEPALIVE_GAP_MS,
    SCHEDULE_CANCELLED,
    SCHEDULE_CREATED,
    SET_STATUS,
    UNAVAILABLE,
    AvailabilityChange,
    OpeningHours,
    PresenceRules,
    current_status,
    merge_pings,
    ms_to_datetime,
    to_ms,
)

__all__ = ["DEFAULT_KEY_PREFIX", "REDIS_REJECTED", "RedisWrites", "RestaurantStateStore"]

DEFAULT_KEY_PREFIX = "restaurant:"
REDIS_REJECTED = "redis_rejected"


def _refused_for_its_data(result) -> bool:
    # Error replies about the server's state (OOM, LOADING, ...) are an outage, not the data's fault.
    return isinstance(result, redis.ResponseError) and not str(result).startswith(REDIS_SERVER_STATE_ERRORS)


class RedisWrites(NamedTuple):
    """How many writes were made, and the items Redis refused because of their data with its message."""

    written: int
    refused: list[tuple[Any, str]]
MAX_IDS_PER_CALL = 10_000
# Sessions kept per restaurant: those a restarted pipeline may still need are the ones that ended after its
# timeline was last made final (a minute or two behind the stream), far fewer than this.
SESSIONS_KEPT = 16

# KEYS: restaurant hashes; ARGV[i]: "<latest ping ms> [<start ms> <end ms> ...]" for KEYS[i], the connected
# intervals of the pings written now; ARGV[#KEYS + 1]: how many sessions to keep. ``last_keepalive_ms`` keeps the
# maximum; ``sessions`` ("start,end;..." by start) merges the intervals in as session windows merge (overlapping
# ones join, touching ones stay apart) and keeps the latest ones: what a restarted pipeline rebuilds its open
# sessions from (``orderflow.io.presence_restore``).
_RECORD_KEEPALIVES = """
local keep = tonumber(ARGV[#KEYS + 1])
for i, key in ipairs(KEYS) do
  local given = {}
  for n in string.gmatch(ARGV[i], '%S+') do given[#given + 1] = tonumber(n) end
  local current = tonumber(redis.call('HGET', key, 'last_keepalive_ms') or '-1')
  if given[1] > current then
    redis.call('HSET', key, 'last_keepalive_ms', string.match(ARGV[i], '^%S+'))
  end
  if #given > 1 then
    local sessions = {}
    for s, e in string.gmatch(redis.call('HGET', key, 'sessions') or '', '(%d+),(%d+)') do
      sessions[#sessions + 1] = {tonumber(s), tonumber(e)}
    end
    for j = 2, #given - 1, 2 do sessions[#sessions + 1] = {given[j], given[j + 1]} end
    table.sort(sessions, function(a, b) return a[1] < b[1] end)
    local merged = {}
    for _, s in ipairs(sessions) do
      local last = merged[#merged]
      if last and s[1] < last[2] then
        if s[2] > last[2] then last[2] = s[2] end
      else
        merged[#merged + 1] = {s[1], s[2]}
      end
    end
    local kept = {}
    for j = math.max(1, #merged - keep + 1), #merged do
      kept[#kept + 1] = string.format('%d,%d', merged[j][1], merged[j][2])
    end
    redis.call('HSET', key, 'sessions', table.concat(kept, ';'))
  end
end
return #KEYS
"""

# KEYS[1]: restaurant hash; ARGV: field ('status' or 'connection'), occurred_at ms, value, reason ('' = none).
# The latest occurred_at wins (``{field}_since_ms``).
_SET_STATE = """
local since = ARGV[1] .. '_since_ms'
local current = tonumber(redis.call('HGET', KEYS[1], since) or '-1')
if tonumber(ARGV[2]) >= current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], since, ARGV[2], ARGV[1] .. '_reason', ARGV[4])
  return 1
end
return 0
"""

# KEYS[1]: restaurant hash; ARGV: field, JSON object of the fields to merge into the stored JSON.
_MERGE_SCHEDULE = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local merged = stored and cjson.decode(stored) or {}
for k, v in pairs(cjson.decode(ARGV[2])) do
  if k == 'cancelled_at_ms' and merged[k] and tonumber(merged[k]) <= tonumber(v) then
    -- the earliest cancellation stays
  else
    merged[k] = v
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(merged))
return 1
"""


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def _int(value) -> int | None:
    return None if value in (None, b"", "") else int(value)


class RestaurantStateStore:
    """Reads and writes the restaurants' hot state in Redis.

    ``opening_hours`` and ``keepalive_timeout_ms`` are the rules used to evaluate statuses on read
    (defaults: 10:00-23:00 America/Sao_Paulo, two minutes). ``from_settings`` builds the store the
    configuration describes (rules and key prefix), as the pipeline writes and the API reads it.
    """

    def __init__(self, redis_url: str, *, opening_hours: OpeningHours | None = None,
                 keepalive_timeout_ms: int = DEFAULT_KEEPALIVE_GAP_MS, key_prefix: str = DEFAULT_KEY_PREFIX,
                 client: redis.Redis | None = None):
        self.redis_url = redis_url
        self.opening_hours = opening_hours or OpeningHours()
        self.keepalive_timeout_ms = keepalive_timeout_ms
        self.key_prefix = key_prefix
        self._client = client
        self._scripts: dict[str, Any] = {}  # the Lua scripts, registered with the client

    @classmethod
    def from_settings(cls, settings, client: redis.Redis | None = None) -> RestaurantStateStore:
        """The store of ``settings`` (``orderflow.config.Settings``): its Redis, key prefix and presence rules."""
        rules = PresenceRules.from_settings(settings)
        return cls(settings.redis_url, opening_hours=rules.hours, keepalive_timeout_ms=rules.gap_ms,
                   key_prefix=settings.presence_redis_prefix, client=client)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        if not self._scripts:
            self._scripts = {
                "keepalives": self._client.register_script(_RECORD_KEEPALIVES),
                "state": self._client.register_script(_SET_STATE),
                "schedule": self._client.register_script(_MERGE_SCHEDULE),
            }
        return self._client

    def key(self, restaurant_id: str) -> str:
        return f"{self.key_prefix}{restaurant_id}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._scripts = {}

    # -- writes (the presence pipeline) ------------------------------------------------------------
    def record_keepalives(self, pings: Mapping[str, int | Iterable[int]], chunk: int = 5_000) -> RedisWrites:
        """Moves each restaurant's ``last_keepalive_ms`` forward to its latest ping in ``pings[id]`` (one ms, or
        several) and, for several, merges their connected intervals (``keepalive_timeout_ms``) into its
        recent ``sessions``; one script call per ``chunk`` restaurants, all in one pipelined round trip.
        ``refused``: ``((id, latest ms), message)``."""
        client = self.client  # (registers the scripts)
        items = [(rid, self._keepalive_argument(given)) for rid, given in pings.items()]
        if not items:
            return RedisWrites(0, [])
        parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        with client.pipeline(transaction=False) as pipe:
            for part in parts:
                self._keepalives(part, pipe)
            results = pipe.execute(raise_on_error=False)
        refused: list[tuple[Any, str]] = []
        for part, result in zip(parts, results, strict=True):
            if isinstance(result, Exception):
                self._bisect_keepalives(part, result, refused)
        return RedisWrites(len(items) - len(refused), [((rid, int(arg.split()[0])), message)
                                                       for (rid, arg), message in refused])

    def _keepalive_argument(self, given: int | Iterable[int]) -> str:
        if isinstance(given, int):
            return str(given)
        pings = list(given)
        intervals = merge_pings(pings, self.keepalive_timeout_ms)
        return " ".join([str(max(pings)), *(f"{s} {e}" for s, e in intervals)])

    def _keepalives(self, part: list[tuple[str, str]], client):
        return self._scripts["keepalives"](keys=[self.key(r) for r, _ in part],
                                          args=[*(arg for _, arg in part), SESSIONS_KEPT], client=client)

    def _bisect_keepalives(self, part: list[tuple[str, str]], error: Exception, refused: list) -> None:
        """A refused script call stops at the key Redis refused: rerun each half alone (the maximum and the
        merge are idempotent) down to the refused keys."""
        if not _refused_for_its_data(error):
            raise error
        if len(part) == 1:
            refused.append((part[0], str(error)))
            return
        for half in (part[:len(part) // 2], part[len(part) // 2:]):
            try:
                self._keepalives(half, self.client)
            except redis.ResponseError as exc:
                self._bisect_keepalives(half, exc, refused)

    def recent_sessions(self, batch: int = 1_000) -> Iterator[tuple[str, list[tuple[int, int]]]]:
        """Every restaurant of this prefix with its recent sessions ``[(start_ms, end_ms), ...]`` (SCAN, then
        one pipelined round trip per ``batch`` keys)."""
        client = self.client
        keys: list[bytes] = []

        def read(chunk: list[bytes]):
            with client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hget(key, "sessions")
                values = pipe.execute(raise_on_error=False)
            for key, value in zip(chunk, values, strict=True):
                if isinstance(value, bytes) and value:
                    sessions = [tuple(int(x) for x in part.split(b",")) for part in value.split(b";")]
                    yield key[len(self.key_prefix.encode()):].decode(), sessions

        for key in client.scan_iter(match=f"{_glob_escape(self.key_prefix)}*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                yield from read(keys)
                keys = []
        if keys:
            yield from read(keys)

    def apply_changes(self, changes: Iterable[AvailabilityChange]) -> RedisWrites:
        """Applies availability changes (status and schedules) in one pipelined round trip.
        ``refused``: ``(change, message)``."""
        client = self.client
        applied = []
        with client.pipeline(transaction=False) as pipe:
            for c in changes:
                key = self.key(c.restaurant_id)
                if c.kind == SET_STATUS:
                    self._scripts["state"](keys=[key], args=["status", c.occurred_at, c.status, c.reason or ""],
                                           client=pipe)
                elif c.kind in CONNECTION_KINDS:
                    self._scripts["state"](keys=[key], args=["connection", c.occurred_at, c.kind, ""], client=pipe)
                elif c.kind == SCHEDULE_CREATED:
                    fields = {"reason": c.reason, "starts_at_ms": str(c.starts_at),
                              "ends_at_ms": "" if c.ends_at is None else str(c.ends_at)}
                    self._scripts["schedule"](keys=[key], args=[f"schedule:{c.schedule_id}", json.dumps(fields)],
                                              client=pipe)
                elif c.kind == SCHEDULE_CANCELLED:
                    self._scripts["schedule"](keys=[key], args=[f"schedule:{c.schedule_id}",
                                                                json.dumps({"cancelled_at_ms": str(c.occurred_at)})],
                                              client=pipe)
                else:
                    continue
                applied.append(c)
            results = pipe.execute(raise_on_error=False) if applied else []
        refused: list[tuple[Any, str]] = []
        for change, result in zip(applied, results, strict=True):
            if isinstance(result, Exception):
                if not _refused_for_its_data(result):
                    raise result
                refused.append((change, str(result)))
        return RedisWrites(len(applied) - len(refused), refused)

    # -- reads (the HTTP API) --------------------------------------------------------------------------
    def raw(self, ids: list[str]) -> list[dict[bytes, bytes]]:
        """The stored hashes of ``ids`` in order, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for restaurant_id in ids:
                pipe.hgetall(self.key(restaurant_id))
            return pipe.execute()

    def statuses(self, ids: list[str], now: dt.datetime | None = None) -> dict[str, dict]:
        """Status of each restaurant at ``now`` (default: the current time), in ONE Redis round trip::

            {"r-1": {"status": "online" | "offline", "reasons": [...], "last_keepalive": iso | None,
                     "availability": {"status": "AVAILABLE" | "UNAVAILABLE", "since": iso | None,
                                      "reason": str | None, "scheduled": [active schedules at now]},
                     "connection": None | {"state": "CONNECTED" | "DISCONNECTED", "since": iso}}}

        ``reasons`` is empty when online, else any of ``outside_opening_hours``, ``disconnected`` (the MQTT
        last will), ``no_keepalive``, ``unavailable``, ``scheduled_unavailability:<REASON>``. Unknown ids
        answer offline / no_keepalive.
        """
        if len(ids) > MAX_IDS_PER_CALL:
            raise ValueError(f"at most {MAX_IDS_PER_CALL} ids per call, got {len(ids)}")
        now_ms = to_ms(now or dt.datetime.now(dt.timezone.utc))
        assert now_ms is not None  # of a datetime
        unique = list(dict.fromkeys(ids))
        # The opening hours are everyone's: once per call, not per restaurant (a third of the evaluation).
        open_now = self.opening_hours.is_open(now_ms)
        return {rid: self._evaluate(rid, stored, now_ms, open_now)
                for rid, stored in zip(unique, self.raw(unique), strict=True)}

    def _evaluate(self, restaurant_id: str, stored: dict[bytes, bytes], now_ms: int, open_now: bool) -> dict:
        last = _int(stored.get(b"last_keepalive_ms"))
        status = (stored.get(b"status") or AVAILABLE.encode()).decode()
        active = []
        for field, value in stored.items():
            if not field.startswith(b"schedule:"):
                continue
            schedule = json.loads(value)
            if "starts_at_ms" not in schedule:
                continue  # a cancellation whose creation has not arrived yet
            starts, ends = int(schedule["starts_at_ms"]), _int(schedule.get("ends_at_ms"))
            cancelled = _int(schedule.get("cancelled_at_ms"))
            until = min(x for x in (ends, cancelled, 2**62) if x is not None)
            if starts <= now_ms < until:
                active.append({"schedule_id": field[len(b"schedule:"):].decode(), "reason": schedule["reason"],
                               "starts_at": _iso(starts), "ends_at": _iso(ends)})
        active.sort(key=lambda s: (s["starts_at"], s["schedule_id"]))
        connection = (stored.get(b"connection") or b"").decode() or None
        online, reasons = current_status(now_ms, last, status, [s["reason"] for s in active],
                                         self.opening_hours, self.keepalive_timeout_ms, connection, open_now)
        return {
            "status": online,
            "reasons": reasons,
            "last_keepalive": _iso(last),
            "availability": {
                "status": UNAVAILABLE if (status == UNAVAILABLE or active) else AVAILABLE,
                "set_status": status,
                "since": _iso(_int(stored.get(b"status_since_ms"))),
                "reason": (stored.get(b"status_reason") or b"").decode() or None,
                "scheduled": active,
            },
            # Only for restaurants connected over MQTT: their latest connection change.
            "connection": None if connection is None else {
                "state": connection, "since": _iso(_int(stored.get(b"connection_since_ms")))},
        }
