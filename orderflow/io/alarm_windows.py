"""The alarm windows' exact totals in Postgres, and the alarms they fire: state that survives any runner.

``AlarmWindows.add(conn, inserted)`` runs inside the orders sink's transaction (``OrdersWriter``), with
the orders that transaction actually inserted: one statement adds their sums to each window's stored
total (``alarm_window_totals``), finds the windows whose total crossed the threshold in this very
statement (``total - added < threshold <= total``), records those alarms once and queues their SMS
(``orderflow.io.sns_alarms.fire_alarms_sql``). The order rows, the totals and the alarms commit or roll
back together, and an order is inserted once whatever duplicates, retries, crashes and replays happen, so
each window counts each order exactly once and crosses in exactly one transaction: an alarm fires once,
however the pipeline was stopped, killed, restarted or redeployed in the window.

``AlarmWindows.sync(conn)`` runs when an orders pipeline starts: a rule that is new, or whose windows
changed (scope, size, period, time zone), has its totals of the windows that ended at most
``backfill_seconds`` ago computed from the stored orders (day rules from ``client_daily_volume``, sliding
rules from ``orders`` summed per period), under a lock that holds concurrent order inserts back, so the
totals and the increments of later inserts add up exactly. Then every window of those horizons already at
or over its rule's threshold fires (once): a rule added or lowered mid-window fires at once for the windows
it already covers. A rule no longer configured is forgotten (its totals too): added again, it is computed
again. The rule set is the running pipeline's: two orders pipelines with different rules on one database
would undo each other's rules.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from decimal import Decimal

from orderflow.io.sns_alarms import fire_alarms_sql
from orderflow.model.alarms import DAY, AlarmRule, WindowKey, sum_slices, window_increments

__all__ = ["AlarmWindows"]

_SYNC_LOCK = 7_345_002  # advisory-lock key of the rules' synchronisation (beside the migrator's 7_345_001)

_WINDOWS = "%(rule_id)s::text[], %(scope)s::text[], %(window_start)s::timestamptz[], %(window_end)s::timestamptz[]"

ADD_TO_WINDOWS_SQL = fire_alarms_sql(f"""input AS (
    SELECT * FROM unnest({_WINDOWS}, %(added)s::numeric[], %(threshold)s::numeric[])
        AS t(rule_id, scope, window_start, window_end, added, threshold)
), totals AS (
    INSERT INTO alarm_window_totals AS w (rule_id, scope, window_start, window_end, total)
    SELECT rule_id, scope, window_start, window_end, added FROM input ORDER BY rule_id, scope, window_start
    ON CONFLICT (rule_id, scope, window_start) DO UPDATE SET total = w.total + EXCLUDED.total
    RETURNING rule_id, scope, window_start, window_end, total
), crossed AS (
    SELECT t.rule_id, t.scope, t.window_start, t.window_end, t.total, i.threshold
    FROM totals t JOIN input i USING (rule_id, scope, window_start)
    WHERE t.total >= i.threshold AND t.total - i.added < i.threshold
)""")

INSERT_TOTALS_SQL = f"""
INSERT INTO alarm_window_totals (rule_id, scope, window_start, window_end, total)
SELECT * FROM unnest({_WINDOWS}, %(added)s::numeric[])
"""

FIRE_CROSSED_SQL = fire_alarms_sql("""rules AS (
    SELECT * FROM unnest(%(rule_id)s::text[], %(threshold)s::numeric[]) AS r(rule_id, threshold)
), crossed AS (
    SELECT w.rule_id, w.scope, w.window_start, w.window_end, w.total, r.threshold
    FROM alarm_window_totals w JOIN rules r USING (rule_id)
    WHERE w.total >= r.threshold AND w.window_end > %(since)s
)""")

_SLIDING_SLICES_SQL = """
SELECT client_token, floor(extract(epoch FROM event_time) * 1000 / %(period_ms)s)::bigint AS slice, sum(total)
FROM orders WHERE event_time >= %(since)s GROUP BY 1, 2
"""
_DAY_SLICES_SQL = "SELECT client_token, day, total FROM client_daily_volume WHERE day >= %(since)s"


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def _columns(windows: dict[WindowKey, Decimal]) -> dict[str, list]:
    keys = sorted(windows)  # one lock order for concurrent writers
    return {"rule_id": [k.rule_id for k in keys], "scope": [k.scope for k in keys],
            "window_start": [_at(k.start_ms) for k in keys], "window_end": [_at(k.end_ms) for k in keys],
            "added": [windows[k] for k in keys]}


class AlarmWindows:
    """The alarm rules of a pipeline, applied to the stored window totals (see the module doc).

    Args:
        rules: the configured rules (``orderflow.model.alarms.parse_rules``).
        timezone: the exchange time zone (day windows).
        backfill_seconds: a new or changed rule is computed over the windows that ended at most this long
            before the pipeline started (and the open ones).
    """

    def __init__(self, rules: Iterable[AlarmRule], timezone: str, backfill_seconds: float = 3600.0):
        self.rules = list(rules)
        self.timezone = timezone
        self.backfill_seconds = backfill_seconds
        self._thresholds = {rule.rule_id: rule.threshold for rule in self.rules}

    def add(self, conn, inserted: list[dict]) -> tuple[int, int]:
        """Adds newly inserted priced orders to their windows, in the caller's transaction; returns (alarms
        fired, SMS queued)."""
        if not self.rules or not inserted:
            return 0, 0
        windows = window_increments(self.rules, inserted, self.timezone)
        params = _columns(windows)
        params["threshold"] = [self._thresholds[rule_id] for rule_id in params["rule_id"]]
        return conn.execute(ADD_TO_WINDOWS_SQL, params, prepare=True).fetchone()

    def sync(self, conn, now: dt.datetime | None = None) -> tuple[list[str], int, int]:
        """Brings the stored rules in line with ``self.rules`` in one transaction (see the module doc); returns
        (ids of the rules computed again, alarms fired, SMS queued)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        since = now - dt.timedelta(seconds=self.backfill_seconds)
        definitions = {rule.rule_id: rule.windows_definition(self.timezone) for rule in self.rules}
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SYNC_LOCK,))
            stored = dict(conn.execute("SELECT rule_id, windows_definition FROM alarm_rules").fetchall())
            gone = [rule_id for rule_id in stored if rule_id not in definitions]
            changed = [rule for rule in self.rules if stored.get(rule.rule_id) != definitions[rule.rule_id]]
            if gone or changed:
                # Inserts of orders wait while the totals are computed from the orders stored: each order is then
                # either in that computation or added by its own insert afterwards, never both or neither.
                conn.execute("LOCK TABLE orders IN SHARE MODE")
                conn.execute("DELETE FROM alarm_window_totals WHERE rule_id = ANY(%s)",
                             ([*gone, *(rule.rule_id for rule in changed)],))
                conn.execute("DELETE FROM alarm_rules WHERE rule_id = ANY(%s)", (gone,))
                if changed:
                    windows = self._from_stored_orders(conn, changed, since)
                    if windows:
                        conn.execute(INSERT_TOTALS_SQL, _columns(windows))
            conn.execute("""
                INSERT INTO alarm_rules (rule_id, windows_definition, threshold)
                SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[])
                ON CONFLICT (rule_id) DO UPDATE SET windows_definition = EXCLUDED.windows_definition,
                    threshold = EXCLUDED.threshold, synced_at = now()""",
                         (list(definitions), list(definitions.values()), [self._thresholds[r] for r in definitions]))
            fired, queued = conn.execute(FIRE_CROSSED_SQL, {
                "rule_id": list(self._thresholds), "threshold": list(self._thresholds.values()), "since": since}
            ).fetchone() if self.rules else (0, 0)
        return [rule.rule_id for rule in changed], fired, queued

    def _from_stored_orders(self, conn, rules: list[AlarmRule], since: dt.datetime) -> dict[WindowKey, Decimal]:
        """The totals of ``rules``' windows that end after ``since``, from the stored orders."""
        zone = zoneinfo.ZoneInfo(self.timezone)
        per_slice: dict[tuple[AlarmRule, str, dt.date | int], Decimal] = {}
        for rule in rules:
            if rule.window == DAY:
                first_day = since.astimezone(zone).date() - dt.timedelta(days=1)
                rows = conn.execute(_DAY_SLICES_SQL, {"since": first_day}).fetchall()
            else:
                rows = conn.execute(_SLIDING_SLICES_SQL, {
                    "period_ms": rule.period_seconds * 1000,
                    "since": since - dt.timedelta(seconds=rule.size_seconds)}).fetchall()
            for client_token, slice_key, amount in rows:
                key = (rule, rule.scope_of(client_token), slice_key)
                per_slice[key] = per_slice.get(key, Decimal(0)) + amount
        since_ms = int(since.timestamp() * 1000)
        return {key: total for key, total in sum_slices(per_slice, zone).items() if key.end_ms > since_ms}
