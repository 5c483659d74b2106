"""The pure presence rules on hand-made timelines (no Beam)."""
from __future__ import annotations

import datetime as dt

import pytest

from orderflow.model.presence import (
    OpeningHours,
    current_status,
    evaluate,
    keepalive_skew,
    merge_pings,
    normalize,
    to_ms,
)
from tests.support.presence_timeline import HOURS, at, cancel, connection, pings, schedule, status, summarize


def test_merge_pings_is_session_windows():
    assert merge_pings([0, 90_000, 180_000]) == [(0, 300_000)]           # 90 s gaps: one session
    assert merge_pings([0, 180_000]) == [(0, 120_000), (180_000, 300_000)]  # 3 min gap: two
    assert merge_pings([0, 120_000]) == [(0, 120_000), (120_000, 240_000)]  # exactly the gap: touching, apart
    assert normalize([(5, 9), (0, 6), (9, 10)]) == [(0, 9), (9, 10)]


def test_to_ms_accepts_fastavro_datetimes():
    assert to_ms(dt.datetime(2026, 3, 10, 13, 0, 0, 123000, tzinfo=dt.timezone.utc)) == 1773147600123
    assert to_ms(5) == 5 and to_ms(None) is None


def test_ninety_second_gap_stays_online():
    connected = merge_pings(pings(at(12), at(12, 9, 31)) + pings(at(12, 11), at(12, 20)))  # 12:09:30 -> 12:11:00
    got = summarize(evaluate("r", at(12), at(12, 20), connected, [], HOURS))
    assert got == [("online", None, "10 12:00:00", "10 12:20:00")]


def test_three_minute_gap_goes_offline_at_last_ping_plus_two_minutes():
    connected = merge_pings(pings(at(12), at(12, 5, 1)) + pings(at(12, 8), at(12, 20)))  # last 12:05, next 12:08
    got = summarize(evaluate("r", at(12), at(12, 20), connected, [], HOURS))
    assert got == [("online", None, "10 12:00:00", "10 12:07:00"),
                   ("offline_unexplained", "no_keepalive", "10 12:07:00", "10 12:08:00"),
                   ("online", None, "10 12:08:00", "10 12:20:00")]


def test_outside_opening_hours_nothing_is_online():
    connected = merge_pings(pings(at(9), at(10, 30)) + pings(at(22, 30), at(24 + 1)))
    got = summarize(evaluate("r", at(9), at(24 + 1), connected, [], HOURS))
    assert got == [("online", None, "10 10:00:00", "10 10:31:30"),
                   ("offline_unexplained", "no_keepalive", "10 10:31:30", "10 22:30:00"),
                   ("online", None, "10 22:30:00", "10 23:00:00")]


def test_schedule_explains_and_cancelled_schedule_does_not():
    changes = [schedule("r", "s1", at(9), at(13), at(14), "LACK_OF_DELIVERY_STAFF"),
               schedule("r", "s2", at(9), at(15), at(16)), cancel("r", "s2", at(11)),
               schedule("r", "s3", at(9), at(17), at(18), "CONNECTION_ISSUES"), cancel("r", "s3", at(17, 30))]
    got = summarize(evaluate("r", at(12), at(19), merge_pings(pings(at(12), at(13))), changes, HOURS))
    assert got == [("online", None, "10 12:00:00", "10 13:00:00"),
                   ("offline_scheduled", "LACK_OF_DELIVERY_STAFF", "10 13:00:00", "10 14:00:00"),
                   ("offline_unexplained", "no_keepalive", "10 14:00:00", "10 17:00:00"),
                   ("offline_scheduled", "CONNECTION_ISSUES", "10 17:00:00", "10 17:30:00"),
                   ("offline_unexplained", "no_keepalive", "10 17:30:00", "10 19:00:00")]


def test_unavailable_while_pinging_is_offline():
    changes = [status("r", at(12, 10), "UNAVAILABLE"), status("r", at(12, 40), "AVAILABLE")]
    got = summarize(evaluate("r", at(12), at(13), merge_pings(pings(at(12), at(13))), changes, HOURS))
    assert got == [("online", None, "10 12:00:00", "10 12:10:00"),
                   ("offline_unexplained", "unavailable", "10 12:10:00", "10 12:40:00"),
                   ("online", None, "10 12:40:00", "10 13:00:00")]


def test_an_abrupt_disconnect_is_offline_at_once_until_the_reconnection():
    # Pings every 30 s all along; the last will at 12:10:05 and the reconnection at 12:12 cut the session.
    changes = [connection("r", at(12), "CONNECTED"), connection("r", at(12, 10, 5), "DISCONNECTED"),
               connection("r", at(12, 12), "CONNECTED"), status("r", at(12, 11), "UNAVAILABLE"),
               status("r", at(12, 11, 30), "AVAILABLE")]
    got = summarize(evaluate("r", at(12), at(13), merge_pings(pings(at(12), at(13))), changes, HOURS))
    assert got == [("online", None, "10 12:00:00", "10 12:10:05"),
                   ("offline_unexplained", "disconnected", "10 12:10:05", "10 12:12:00"),
                   ("online", None, "10 12:12:00", "10 13:00:00")]
    # Still disconnected when the pings stop: "disconnected" outlasts the keep-alive timeout.
    silent = summarize(evaluate("r", at(12), at(13), merge_pings(pings(at(12), at(12, 10))), changes[:2], HOURS))
    assert silent == [("online", None, "10 12:00:00", "10 12:10:05"),
                      ("offline_unexplained", "disconnected", "10 12:10:05", "10 13:00:00")]
    # A schedule still explains the time it covers.
    scheduled = changes[:2] + [schedule("r", "s", at(9), at(12, 20), at(12, 30))]
    got = summarize(evaluate("r", at(12), at(13), merge_pings(pings(at(12), at(13))), scheduled, HOURS))
    assert got == [("online", None, "10 12:00:00", "10 12:10:05"),
                   ("offline_unexplained", "disconnected", "10 12:10:05", "10 12:20:00"),
                   ("offline_scheduled", "HOLIDAYS", "10 12:20:00", "10 12:30:00"),
                   ("offline_unexplained", "disconnected", "10 12:30:00", "10 13:00:00")]


def test_split_at_closing_time_and_midnight():
    late = OpeningHours.parse("18:00-02:00")
    connected = merge_pings(pings(at(22, 30), at(24 + 1)))  # 22:30 -> 01:00 (+2 min)
    got = evaluate("r", at(22), at(24 + 3), connected, [], late)
    assert summarize(got) == [("offline_unexplained", "no_keepalive", "10 22:00:00", "10 22:30:00"),
                              ("online", None, "10 22:30:00", "11 00:00:00"),
                              ("online", None, "11 00:00:00", "11 01:01:30"),
                              ("offline_unexplained", "no_keepalive", "11 01:01:30", "11 02:00:00")]
    assert [i.day for i in got] == [dt.date(2026, 3, 10)] * 2 + [dt.date(2026, 3, 11)] * 2
    default = evaluate("r", at(22), at(24 + 3), connected, [], HOURS)
    assert summarize(default) == [("offline_unexplained", "no_keepalive", "10 22:00:00", "10 22:30:00"),
                                  ("online", None, "10 22:30:00", "10 23:00:00")]


def test_current_status_reasons():
    assert current_status(at(12), at(11, 59), "AVAILABLE", [], HOURS) == ("online", [])
    assert current_status(at(12), at(11, 58), None, [], HOURS) == ("offline", ["no_keepalive"])
    assert current_status(at(23), at(22, 59), "UNAVAILABLE", ["HOLIDAYS"], HOURS) == (
        "offline", ["outside_opening_hours", "unavailable", "scheduled_unavailability:HOLIDAYS"])
    # The last will: offline at once, though the last ping is a second old; a reconnection ends it.
    assert current_status(at(12), at(11, 59, 59), None, [], HOURS, connection="DISCONNECTED") == (
        "offline", ["disconnected"])
    assert current_status(at(12), at(11, 59, 59), None, [], HOURS, connection="CONNECTED") == ("online", [])


def test_opening_hours_parse_rejects_nonsense():
    with pytest.raises(ValueError):
        OpeningHours.parse("ten to eleven")
    with pytest.raises(ValueError):
        OpeningHours.parse("10:00-10:00")


@pytest.mark.parametrize("skew_ms, refused", [
    (-300_001, "sent_at is 300 s behind the server's clock; at most 300 s either way is accepted"),
    (-300_000, None), (0, None), (300_000, None),
    (300_001, "sent_at is 300 s ahead of the server's clock; at most 300 s either way is accepted"),
])
def test_keepalive_skew_is_refused_beyond_the_limit_either_way(skew_ms, refused):
    # The clock pinned: the API's test (tests/api/test_ingest.py) can only stay far from the boundary.
    now_ms = 1_796_000_000_000
    assert keepalive_skew(now_ms + skew_ms, now_ms, 300.0) == refused
