"""Presence Postgres sinks on the module's real, migrated database."""
from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from orderflow.io.presence_postgres import write_dead_letters, write_intervals, write_unavailability
from orderflow.io.presence_queries import offline_ranking
from orderflow.model.dead_letter import DeadLetter
from orderflow.model.presence import AvailabilityChange, StatusInterval

DAY = dt.date(2026, 3, 10)
T0 = 1773147600000  # 2026-03-10 10:00 in Sao Paulo


def iv(rid, start_min, end_min, status="offline_unexplained", reason="no_keepalive"):
    return StatusInterval(rid, T0 + start_min * 60_000, T0 + end_min * 60_000, status, reason, DAY)


@pytest.fixture
def conn(pg_dsn):
    with psycopg.connect(pg_dsn) as c:
        for table in ("restaurant_status_intervals", "restaurant_offline_daily", "restaurant_unavailability",
                      "presence_dead_letters"):
            c.execute(f"DELETE FROM {table}")
        c.commit()
        yield c


def daily(conn):
    return dict(((r, d), s) for r, d, s in conn.execute(
        "SELECT restaurant_id, day, unexplained_offline_seconds FROM restaurant_offline_daily"))


def test_daily_offline_is_recomputed_not_added(conn):
    batch = [iv("a", 0, 10, "online", None), iv("a", 10, 25), iv("b", 0, 5), iv("b", 5, 60, "offline_scheduled", "HOLIDAYS")]
    write_intervals(conn, batch)
    write_intervals(conn, batch)  # a replay changes nothing
    assert daily(conn) == {("a", DAY): 900, ("b", DAY): 300}
    # a later finalisation of the same interval (same start, later end) replaces it
    write_intervals(conn, [iv("a", 10, 40), iv("a", 40, 50, "online", None)])
    assert daily(conn) == {("a", DAY): 1800, ("b", DAY): 300}
    assert offline_ranking(conn, DAY, DAY) == [("a", 1800), ("b", 300)]
    # a re-run over an overlapping stretch replaces what it covers: a[0,10) online is cut at 5
    write_intervals(conn, [iv("a", 5, 8)])
    rows = conn.execute("SELECT start_at, end_at, status FROM restaurant_status_intervals WHERE restaurant_id = 'a' "
                        "ORDER BY start_at").fetchall()
    assert [((s.timestamp() * 1000 - T0) / 60_000, (e.timestamp() * 1000 - T0) / 60_000, st) for s, e, st in rows] == [
        (0, 5, "online"), (5, 8, "offline_unexplained"), (10, 40, "offline_unexplained"), (40, 50, "online")]
    assert daily(conn)[("a", DAY)] == 1800 + 180
    assert offline_ranking(conn, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1)) == []


def change(kind, minute, *, rid="a", event_id=None, **fields):
    return AvailabilityChange(event_id or f"{kind}-{minute}", rid, kind, fields.get("status"), fields.get("schedule_id"),
                              fields.get("reason"), fields.get("starts_at"), fields.get("ends_at"), T0 + minute * 60_000)


def test_unavailability_history(conn):
    write_unavailability(conn, [
        change("SET_STATUS", 5, status="UNAVAILABLE", reason="OVERLOADED_OFFLINE_ORDERS"),
        change("SET_STATUS", 7, status="UNAVAILABLE"),  # already unavailable: same stretch
        change("SET_STATUS", 20, status="AVAILABLE"),
        change("SCHEDULE_CANCELLED", 2, schedule_id="s2"),  # cancellation seen before its creation
        change("SCHEDULE_CREATED", 1, schedule_id="s1", reason="HOLIDAYS", starts_at=T0 + 3_600_000,
               ends_at=T0 + 7_200_000),
    ])
    write_unavailability(conn, [change("SCHEDULE_CREATED", 1, schedule_id="s2", reason="CONNECTION_ISSUES",
                                       starts_at=T0 + 600_000, ends_at=T0 + 900_000)])
    write_unavailability(conn, [change("SET_STATUS", 30, status="UNAVAILABLE")])
    rows = conn.execute("SELECT schedule_id, kind, reason, starts_at, ends_at, cancelled_at FROM restaurant_unavailability "
                        "ORDER BY kind, schedule_id").fetchall()
    ms = lambda d: None if d is None else int(d.timestamp() * 1000)  # noqa: E731
    got = [(sid, kind, reason, ms(s), ms(e), ms(c)) for sid, kind, reason, s, e, c in rows]
    assert got == [
        ("s1", "schedule", "HOLIDAYS", T0 + 3_600_000, T0 + 7_200_000, None),
        ("s2", "schedule", "CONNECTION_ISSUES", T0 + 600_000, T0 + 900_000, T0 + 120_000),
        ("SET_STATUS-30", "status", None, T0 + 1_800_000, None, None),
        ("SET_STATUS-5", "status", "OVERLOADED_OFFLINE_ORDERS", T0 + 300_000, T0 + 1_200_000, None),
    ]


def test_dead_letters_are_kept_once_per_source(conn):
    letters = [DeadLetter("avro_corrupt", "bad", b"\x00", "t/0/1", "DecodeAvro"),
               DeadLetter("avro_corrupt", "bad", b"\x01", "", "DecodeAvro")]
    write_dead_letters(conn, letters)
    write_dead_letters(conn, letters)
    rows = conn.execute("SELECT source, payload FROM presence_dead_letters ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["t/0/1", "", ""]  # coordinates dedupe; without them nothing can


def test_refused_intervals_are_bisected_out_and_the_rest_written(conn, pg_dsn):
    """NUL in a restaurant id (22P05), an over-long one (54000), a time past year 9999: refused alone."""
    import random
    import string

    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from orderflow.io.presence_postgres import WriteStatusIntervals

    huge_id = "".join(random.Random(1).choices(string.ascii_letters, k=3000))
    good = [iv(f"r{i}", 0, 10) for i in range(30)]
    bad = [iv("nu\x00l", 0, 10), iv(huge_id, 0, 10),
           StatusInterval("late", T0, 400_000_000_000_000, "offline_unexplained", "no_keepalive", DAY)]
    with TestPipeline() as p:
        refused = p | beam.Create(good[:10] + bad[:1] + good[10:] + bad[1:]) | WriteStatusIntervals(pg_dsn)
        assert_that(refused | beam.Map(lambda d: (d.reason, d.stage, d.source[:20], d.detail.split(" ")[:2])),
                    equal_to([
            ("postgres_rejected", "presence_postgres/status_intervals", "interval:nu\x00l@177314", ["client", "DataError:"]),
            ("postgres_rejected", "presence_postgres/status_intervals", f"interval:{huge_id[:11]}",
             ["54000", "ProgramLimitExceeded:"]),
            ("postgres_rejected", "presence_postgres/status_intervals", "interval:late@177314", ["ValueError:", "year"]),
        ]))
    assert conn.execute("SELECT count(*) FROM restaurant_status_intervals").fetchone() == (30,)
    assert len(daily(conn)) == 30


def test_refused_dead_letters_text_is_made_storable(conn):
    letters = [DeadLetter("postgres_rejected", "detail with \x00 NUL", b"\x00", "interval:nu\x00l@1", "s"),
               DeadLetter("postgres_rejected", "long", b"x", "interval:" + "y" * 5000 + "@1", "s")]
    write_dead_letters(conn, letters)
    write_dead_letters(conn, letters)  # the shortened source still dedupes
    rows = conn.execute("SELECT source, detail FROM presence_dead_letters ORDER BY id").fetchall()
    assert rows[0] == ("interval:nu\\x00l@1", "detail with \\x00 NUL")
    assert len(rows) == 2 and len(rows[1][0]) < 300 and "sha256:" in rows[1][0]
