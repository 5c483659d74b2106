"""``python -m orderflow_dev.generate keepalive``: restaurants pinging every 30 s, with planned outages.

Deterministic for a seed. Every restaurant pings at ``start`` and then every ``--interval`` seconds
(its own phase) until ``end``; some get up to two planned events, each in its own third of the period:

- ``outage``: pings stop for a while; offline (unexplained) from the last ping + the keep-alive timeout
  until pings resume, a whole number of minutes;
- ``scheduled``: the same, inside a scheduled unavailability (created at ``start``): nothing unexplained;
- ``cancelled``: the same, but the schedule is cancelled before it starts: all of it unexplained;
- ``unavailable``: the restaurant sets itself UNAVAILABLE, then AVAILABLE again, pinging all along;
- ``gone``: pings stop for good (last third only).

Because the plan is known, so is each restaurant's unexplained offline time per local day inside
opening hours (``Plan.expected``), computed here from the plan alone (not with the pipeline's rules):
the end-to-end test and ``make demo`` compare the pipeline's ranking with it.

Keep-alives go to ``restaurant-keepalive`` and changes to ``restaurant-availability`` (Avro, key =
restaurant id, Kafka timestamp = event time), keep-alives in time order as restaurants send them.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import sys
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from orderflow.clients import schema_registry
from orderflow.config import DEFAULT_TIMEZONE, Settings, load_settings
from orderflow.model.avro import AvroCodec, SchemaSource, subject_for
from orderflow.model.presence import AvailabilityChange

DEFAULT_TZ = DEFAULT_TIMEZONE
KINDS = ("outage", "scheduled", "cancelled", "unavailable", "gone")
WEIGHTS = (35, 20, 15, 20, 10)
REASONS = ("LACK_OF_DELIVERY_STAFF", "CONNECTION_ISSUES", "OVERLOADED_OFFLINE_ORDERS", "HOLIDAYS")


@dataclasses.dataclass
class RestaurantPlan:
    restaurant_id: str
    phase_ms: int
    skipped: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # ping steps [from, to) not sent
    gone_after: int | None = None       # last ping step sent
    events: list[str] = dataclasses.field(default_factory=list)
    unexplained: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # [a, b) ms, before hours


@dataclasses.dataclass
class Plan:
    start_ms: int
    end_ms: int
    interval_ms: int
    gap_ms: int
    timezone: str
    opens: dt.time
    closes: dt.time
    restaurants: list[RestaurantPlan]
    changes: list[dict]

    @property
    def steps(self) -> int:
        return (self.end_ms - self.start_ms + self.interval_ms - 1) // self.interval_ms

    def pings(self) -> Iterator[tuple[str, int]]:
        """``(restaurant_id, sent_at ms)`` in time order: the start ping, then each step's pings by phase."""
        by_phase = sorted(self.restaurants, key=lambda r: (r.phase_ms, r.restaurant_id))
        for r in by_phase:
            yield r.restaurant_id, self.start_ms
        quiet = {r.restaurant_id: r for r in by_phase if r.skipped or r.gone_after is not None}
        for k in range(self.steps):
            base = self.start_ms + k * self.interval_ms
            for r in by_phase:
                t = base + r.phase_ms
                if t >= self.end_ms or t == self.start_ms:
                    continue
                plan = quiet.get(r.restaurant_id)
                if plan is not None and ((plan.gone_after is not None and k > plan.gone_after)
                                         or any(a <= k < b for a, b in plan.skipped)):
                    continue
                yield r.restaurant_id, t

    def count_pings(self) -> int:
        return sum(1 for _ in self.pings())

    def expected(self) -> dict[tuple[str, str], int]:
        """Unexplained offline seconds per (restaurant, local day ISO), inside opening hours, every
        restaurant and day of the period present (0 when none)."""
        tz = ZoneInfo(self.timezone)
        days = _days(self.start_ms, self.end_ms, tz)
        out = {}
        for r in self.restaurants:
            for day in days:
                out[(r.restaurant_id, day.isoformat())] = 0
            for a, b in r.unexplained:
                for day, ms in _open_ms_by_day(max(a, self.start_ms), min(b, self.end_ms), tz, self.opens,
                                               self.closes).items():
                    out[(r.restaurant_id, day.isoformat())] += ms // 1000
        return out


def _days(start_ms: int, end_ms: int, tz) -> list[dt.date]:
    first = dt.datetime.fromtimestamp(start_ms / 1000, tz).date()
    last = dt.datetime.fromtimestamp((end_ms - 1) / 1000, tz).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _open_ms_by_day(a: int, b: int, tz, opens: dt.time, closes: dt.time) -> dict[dt.date, int]:
    """Milliseconds of ``[a, b)`` inside each local day's ``[opens, closes)`` (closes after opens)."""
    out = {}
    if b <= a:
        return out
    for day in _days(a, b, tz):
        o = int(dt.datetime.combine(day, opens, tzinfo=tz).timestamp() * 1000)
        c = int(dt.datetime.combine(day, closes, tzinfo=tz).timestamp() * 1000)
        overlap = min(b, c) - max(a, o)
        if overlap > 0:
            out[day] = overlap
    return out


def make_plan(restaurants: int, start: dt.datetime, minutes: int, *, interval_s: int = 30, gap_s: int = 120,
              seed: int = 7, event_share: float = 0.7, timezone: str = DEFAULT_TZ,
              opens: dt.time = dt.time(10), closes: dt.time = dt.time(23)) -> Plan:
    """A deterministic plan; ``start`` is aware (or UTC when naive)."""
    if closes <= opens:
        raise ValueError("the generator's expectations support opening hours within one day only")
    if interval_s * 1000 >= gap_s * 1000:
        raise ValueError("the ping interval must be shorter than the keep-alive timeout")
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    rng = random.Random(seed)
    start_ms = int(start.timestamp()) * 1000
    interval, gap = interval_s * 1000, gap_s * 1000
    plan = Plan(start_ms, start_ms + minutes * 60_000, interval, gap, timezone, opens, closes, [], [])
    steps = plan.steps
    width = max(len(str(restaurants - 1)), 5)
    thirds = [(6, steps // 3), (steps // 3 + 2, 2 * steps // 3), (2 * steps // 3 + 2, steps - 2)]
    for i in range(restaurants):
        r = RestaurantPlan(f"rest-{i:0{width}d}", rng.randrange(1, interval // 1000) * 1000)
        plan.restaurants.append(r)
        if rng.random() >= event_share:
            continue
        for slot in sorted(rng.sample(range(3), rng.choice((1, 1, 2)))):
            lo, hi = thirds[slot]
            kinds = KINDS if slot == 2 else KINDS[:-1]
            kind = rng.choices(kinds, WEIGHTS[:len(kinds)])[0]
            _plan_event(plan, r, kind, lo, hi, rng)
            if kind == "gone":
                break
    return plan


def _plan_event(plan: Plan, r: RestaurantPlan, kind: str, lo: int, hi: int, rng: random.Random) -> None:
    interval, gap, start = plan.interval_ms, plan.gap_ms, plan.start_ms
    if hi - lo < 8:
        return
    n = len(r.events)
    r.events.append(kind)
    step_ms = lambda k: start + k * interval + r.phase_ms  # noqa: E731 - the time of ping step k
    if kind == "gone":
        k = rng.randrange(lo, hi)
        r.gone_after = k
        r.unexplained.append((step_ms(k) + gap, plan.end_ms))
        return
    if kind == "unavailable":
        minutes = rng.randint(1, max(1, min(20, (hi - lo) * interval // 60_000 - 1)))
        a = start + ((lo * interval) // 60_000 + 1) * 60_000
        a += rng.randrange(0, max(1, ((hi - lo) * interval - minutes * 60_000 - 60_000) // 60_000)) * 60_000
        b = a + minutes * 60_000
        plan.changes.append(_change(r, n, "SET_STATUS", a, status="UNAVAILABLE", reason=rng.choice(REASONS)))
        plan.changes.append(_change(r, n + 100, "SET_STATUS", b, status="AVAILABLE"))
        r.unexplained.append((a, b))
        return
    # an outage: the last ping at step k, pings resume at step k + m; offline from the last ping + the
    # timeout to the resumed ping, a whole number of minutes when the interval divides a minute
    max_minutes = max(1, min(20, ((hi - lo) * interval - gap) // 60_000 - 1))
    minutes = rng.randint(1, max_minutes)
    m = -(-(minutes * 60_000 + gap) // interval)
    k = rng.randrange(lo, max(lo + 1, hi - m))
    r.skipped.append((k + 1, k + m))
    offline = (step_ms(k) + gap, step_ms(k + m))
    if kind == "outage":
        r.unexplained.append(offline)
        return
    schedule_id = f"{r.restaurant_id}-s{n}"
    # the schedule covers the whole outage (and a little of the pinging around it)
    s = max(start + 120_000, (offline[0] // 60_000) * 60_000 - rng.randint(0, 2) * 60_000)
    e = (-(-offline[1] // 60_000)) * 60_000 + rng.randint(0, 2) * 60_000
    plan.changes.append(_change(r, n, "SCHEDULE_CREATED", start, schedule_id=schedule_id, reason=rng.choice(REASONS),
                                starts_at=s, ends_at=e))
    if kind == "cancelled":
        plan.changes.append(_change(r, n + 100, "SCHEDULE_CANCELLED", start + 60_000, schedule_id=schedule_id))
        r.unexplained.append(offline)


def _change(r: RestaurantPlan, n: int, kind: str, occurred_at: int, **fields) -> dict:
    return AvailabilityChange.event(f"{r.restaurant_id}-e{n}", r.restaurant_id, kind, occurred_at, **fields)._asdict()


# -- Kafka ------------------------------------------------------------------------------------------------
def _zigzag_varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class KeepaliveEncoder:
    """Avro ``RestaurantKeepalive`` bytes, the prefix (header, id) built once per restaurant: identical to
    ``codec.encode`` and ~10x faster. The header is the Confluent one of ``codec`` (the keep-alive topic's,
    registered once), or the single-object one of records written before the switch when it is None."""

    def __init__(self, codec: AvroCodec | None = None):
        self._codec = codec or AvroCodec("restaurant_keepalive")
        self._header = codec.header() if codec is not None else b"\xc3\x01" + self._codec.fingerprint
        self._prefixes: dict[str, bytes] = {}

    def encode(self, restaurant_id: str, sent_at_ms: int) -> bytes:
        prefix = self._prefixes.get(restaurant_id)
        if prefix is None:
            raw = restaurant_id.encode()
            prefix = self._prefixes[restaurant_id] = self._header + _zigzag_varint(len(raw)) + raw
        return prefix + _zigzag_varint(sent_at_ms)


def produce(plan: Plan, bootstrap: str, keepalive_topic: str, availability_topic: str, *, corrupt: int = 0,
            progress: bool = True, registry: SchemaSource | None = None) -> dict[str, int]:
    """Writes the plan to Kafka; returns counts (``keepalives``, ``changes``, ``corrupt``). With ``registry``,
    records are in the Confluent wire format under the topics' subjects; without, in the single-object
    encoding of records written before the switch."""
    from confluent_kafka import Producer
    from tqdm import tqdm

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000, "compression.type": "none",
                         "enable.idempotence": False})
    failures = []

    def on_delivery(error, _message):
        if error is not None:
            failures.append(error)

    if registry is not None:
        availability = AvroCodec("restaurant_availability", registry=registry, subject=subject_for(availability_topic))
        encoder = KeepaliveEncoder(AvroCodec("restaurant_keepalive", registry=registry,
                                             subject=subject_for(keepalive_topic)))
        encode = availability.encode
    else:
        encoder, encode = KeepaliveEncoder(), AvroCodec("restaurant_availability").encode_single_object
    for change in sorted(plan.changes, key=lambda c: (c["occurred_at"], c["event_id"])):
        producer.produce(availability_topic, key=change["restaurant_id"].encode(), value=encode(change),
                         timestamp=change["occurred_at"], on_delivery=on_delivery)
    total = len(plan.restaurants) * (plan.steps + 1)
    sent = 0
    with tqdm(total=total, unit="ping", disable=not progress, file=sys.stderr, mininterval=0.5) as bar:
        for i, (restaurant_id, t) in enumerate(plan.pings()):
            key = restaurant_id.encode()
            while True:
                try:
                    producer.produce(keepalive_topic, key=key, value=encoder.encode(restaurant_id, t), timestamp=t,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
            if i % 10_000 == 0:
                producer.poll(0)
                bar.update(10_000 if i else 1)
        bar.update(max(0, sent - bar.n))
    for j in range(corrupt):  # undecodable payloads: they must come out as dead letters, not vanish
        producer.produce(keepalive_topic, key=b"corrupt", value=b"not avro %d" % j, timestamp=plan.start_ms,
                         on_delivery=on_delivery)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"Kafka delivery failed: {remaining} undelivered, errors: {failures[:3]}")
    return {"keepalives": sent, "changes": len(plan.changes), "corrupt": corrupt}


def default_end(now: dt.datetime | None = None, timezone: str = DEFAULT_TZ) -> dt.datetime:
    """Now (to the minute) when inside opening hours, else the last 22:30 local: a period with open time."""
    tz = ZoneInfo(timezone)
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(tz).replace(second=0, microsecond=0)
    if dt.time(11, 30) <= now.time() < dt.time(23):
        return now
    day = now.date() if now.time() >= dt.time(23) else now.date() - dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(22, 30), tzinfo=tz)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow_dev.generate keepalive", description=__doc__.split("\n")[0])
    parser.add_argument("--restaurants", "-n", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=90, help="length of the period")
    parser.add_argument("--end", default=None,
                        help="ISO end of the period, naive = UTC (default: now if open, else 22:30 local)")
    parser.add_argument("--interval", type=int, default=30, help="seconds between pings")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--corrupt", type=int, default=0, help="also send this many undecodable keep-alives")
    parser.add_argument("--expected", default=None, help="write the plan's expected offline seconds (JSON) here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = settings or load_settings()
    end = dt.datetime.fromisoformat(args.end) if args.end else default_end()
    plan = make_plan(args.restaurants, end - dt.timedelta(minutes=args.minutes), args.minutes,
                     interval_s=args.interval, seed=args.seed)
    counts = produce(plan, settings.kafka_bootstrap, settings.topics.keepalive, settings.topics.availability,
                     corrupt=args.corrupt, progress=not args.no_progress, registry=schema_registry(settings))
    summary = {"start": _iso(plan.start_ms), "end": _iso(plan.end_ms), **counts}
    if args.expected:
        with open(args.expected, "w") as f:
            json.dump({**summary, "expected_unexplained_seconds": {
                f"{rid}/{day}": s for (rid, day), s in sorted(plan.expected().items())}}, f, indent=1)
    print(json.dumps(summary))
    print(f"bounded run: python -m orderflow.pipelines.presence --bounded --track_from {summary['start']} "
          f"--as_of {summary['end']}")
    return 0


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    sys.exit(main())
