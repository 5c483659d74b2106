"""Alarms recorded once in Postgres and sent once by SMS through SNS, via a transactional outbox.

``fire_alarms_sql``: one statement inserts the alarms of the windows that crossed their threshold
(``ON CONFLICT DO NOTHING`` on (rule_id, scope, window_start): a window fires once) and, in the same
statement, one ``sms_outbox`` row per active phone registered for the alarm's scope (phones with a NULL
client get every alarm). Recording an alarm and queueing its messages is therefore atomic; the orders
sink runs it in the transaction that inserts the orders and adds them to the window totals
(``orderflow.io.alarm_windows``). ``record_alarms`` records given ``Alarm``s the same way.

``relay_sms_outbox`` (the relay): takes one pending row at a time with ``FOR UPDATE SKIP LOCKED`` (several
relays never pick the same row), publishes the SMS (SNS ``Publish`` with ``PhoneNumber``), marks it sent
with the SNS message id and commits. A crash before the commit leaves the row pending and it is sent on
the next run: nothing is lost, and the only window for a repeat is between SNS accepting the message and
the commit of that single row. The pipeline runs the relay when the orders sink queued messages, once at
start (leftovers of a crashed run) and on an interval; ``python -m orderflow.io.sns_alarms`` runs it by hand.

Outages (``orderflow.io.retry``): the relay gives up its tick on a transient Postgres or SNS error and the
next tick (``--outbox_relay_seconds``) sends what is pending. A Postgres failure between SNS accepting an
SMS and the commit of its row repeats that one SMS.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow import clients
from orderflow.config import load_settings
from orderflow.io.retry import is_transient

__all__ = ["RelaySmsOutbox", "fire_alarms_sql", "record_alarms", "relay_sms_outbox"]

_LOG = logging.getLogger(__name__)


def fire_alarms_sql(crossed: str) -> str:
    """One statement that records every row of the CTE ``crossed`` (``rule_id, scope, window_start, window_end,
    total, threshold``) as an alarm once (``ON CONFLICT DO NOTHING``: a window fires once) and queues one
    SMS per active phone of its scope; returns (new alarms, queued messages). ``crossed`` is the text of
    the ``WITH`` list that defines it (after any CTEs it needs)."""
    return f"""
WITH {crossed}, fired AS (
    INSERT INTO alarms (rule_id, scope, window_start, window_end, total, threshold)
    SELECT rule_id, scope, window_start, window_end, total, threshold FROM crossed ORDER BY rule_id, scope, window_start
    ON CONFLICT (rule_id, scope, window_start) DO NOTHING
    RETURNING rule_id, scope, window_start, window_end, total, threshold
), queued AS (
    INSERT INTO sms_outbox (rule_id, scope, window_start, phone, message)
    SELECT f.rule_id, f.scope, f.window_start, p.phone,
           format('orderflow alarm %%s: %%s traded %%s >= %%s between %%s and %%s UTC', f.rule_id,
                  CASE WHEN f.scope = '*' THEN 'all clients' ELSE 'client ' || f.scope END,
                  f.total, f.threshold,
                  to_char(f.window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                  to_char(f.window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'))
    FROM fired f JOIN alarm_phones p ON p.active AND (p.client_token IS NULL OR p.client_token = f.scope)
    RETURNING 1
)
SELECT (SELECT count(*) FROM fired), (SELECT count(*) FROM queued)
"""


RECORD_ALARMS_SQL = fire_alarms_sql("""crossed AS (
    SELECT * FROM unnest(%(rule_id)s::text[], %(scope)s::text[], %(window_start)s::timestamptz[],
                         %(window_end)s::timestamptz[], %(total)s::numeric[], %(threshold)s::numeric[])
        AS t(rule_id, scope, window_start, window_end, total, threshold)
)""")

_CLAIM_SQL = """
SELECT rule_id, scope, window_start, phone, message FROM sms_outbox
WHERE sent_at IS NULL ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""
_MARK_SENT_SQL = """
UPDATE sms_outbox SET sent_at = now(), sns_message_id = %s
WHERE rule_id = %s AND scope = %s AND window_start = %s AND phone = %s
"""


def record_alarms(conn, alarms) -> tuple[int, int]:
    """Inserts ``Alarm``s and their outbox rows in one statement; returns (new alarms, queued messages)."""
    latest: dict[tuple, Any] = {}
    for alarm in alarms:  # one window given twice: keep the highest total
        key = (alarm.rule_id, alarm.scope, alarm.window_start)
        if key not in latest or latest[key].total < alarm.total:
            latest[key] = alarm
    rows = list(latest.values())
    params = {field: [getattr(a, field) for a in rows]
              for field in ("rule_id", "scope", "window_start", "window_end", "total", "threshold")}
    with conn.transaction():
        fired, queued = conn.execute(RECORD_ALARMS_SQL, params).fetchone()
    return fired, queued


def relay_sms_outbox(conn, sns_client, limit: int | None = None) -> int:
    """Sends pending outbox messages one row per transaction; returns how many were sent."""
    sent = 0
    while limit is None or sent < limit:
        with conn.transaction():
            row = conn.execute(_CLAIM_SQL).fetchone()
            if row is None:
                break
            rule_id, scope, window_start, phone, message = row
            message_id = sns_client.publish(PhoneNumber=phone, Message=message)["MessageId"]
            conn.execute(_MARK_SENT_SQL, (message_id, rule_id, scope, window_start, phone))
        sent += 1
    return sent


class _RelayOutboxFn(beam.DoFn):
    def __init__(self, dsn: str, sns: clients.AwsEndpoint):
        self.dsn = dsn
        self.sns = sns
        self.sent = Metrics.counter("orders", "sms_sent")
        self.failed_ticks = Metrics.counter("orders", "sms_relay_unavailable")

    def setup(self):
        self._conn = None
        self._sns = self.sns.client()

    def process(self, _tick):
        from orderflow.io.postgres import connect

        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn)
            sent = relay_sms_outbox(self._conn, self._sns)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The rows stay pending: the next tick sends them.
            self.failed_ticks.inc()
            _LOG.warning("SMS relay: a store is unavailable (%s: %s); pending messages wait for the next tick",
                         type(exc).__name__, exc)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return
        self.sent.inc(sent)
        if sent:
            yield sent

    def teardown(self):
        if self._conn is not None:
            self._conn.close()


class RelaySmsOutbox(beam.PTransform):
    """Any element (a tick) -> drains the SMS outbox through SNS; emits the number sent per tick.

    Args:
        dsn: the Postgres database of the outbox.
        sns: where SNS is (``orderflow.clients.aws_endpoint(settings, "sns")``).
    """

    def __init__(self, dsn: str, sns: clients.AwsEndpoint):
        super().__init__()
        self.dsn = dsn
        self.sns = sns

    def expand(self, ticks):
        return ticks | "Relay" >> beam.ParDo(_RelayOutboxFn(self.dsn, self.sns))


def main() -> int:
    settings = load_settings()
    with clients.postgres(settings) as conn:
        print(f"sent {relay_sms_outbox(conn, clients.aws_client(settings, 'sns'))} pending SMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
