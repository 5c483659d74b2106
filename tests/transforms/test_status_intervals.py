"""The status evaluation's state coders: explicit bytes that survive a release (no pickled classes).

A Flink savepoint holds these bytes and the next release reads them: they must decode into exactly what
was written, name no Python class or module (moving ``AvailabilityChange`` must not break a restore), and
keep their layout (the pinned bytes below are the format; changing it needs a new format version).
"""
from __future__ import annotations

import pytest
from apache_beam.coders import PickleCoder

from orderflow.model.presence import AvailabilityChange
from orderflow.transforms.status_intervals import PendingItemCoder, ShardProgressCoder, _EvaluateStatusFn

SCHEDULE = AvailabilityChange("ev-2", "rest-9", "SCHEDULE_CREATED", None, "sch-1", "holiday", 1_700_000_000_000,
                              1_700_003_600_000, 1_699_999_000_000)
STATUS = AvailabilityChange("ev-1", "rest-9", "SET_STATUS", "OFFLINE", None, None, None, None, 1_700_000_000_000)
PENDING = [
    ("rest-9", ("S", 1_700_000_000_000, 1_700_000_120_000)),
    ("rest-9", ("A", STATUS)),
    ("rest-é", ("A", SCHEDULE)),                        # non-ASCII ids survive too
    ("r", ("S", -5, 0)),                                # before the epoch
]
PROGRESS = [
    {"rest-9": [None, 1_700_000_120_000, 1_700_000_000_000], "rest-2": [1_700_000_060_000, 1_700_000_120_000, 5]},
    {},
]


@pytest.mark.parametrize("value", PENDING)
def test_a_pending_item_decodes_into_exactly_what_was_encoded(value):
    decoded = PendingItemCoder().decode(PendingItemCoder().encode(value))
    assert decoded == value
    if value[1][0] == "A":
        assert type(decoded[1][1]) is AvailabilityChange   # the domain type, not a plain tuple


@pytest.mark.parametrize("value", PROGRESS)
def test_a_shard_progress_decodes_into_exactly_what_was_encoded(value):
    decoded = ShardProgressCoder().decode(ShardProgressCoder().encode(value))
    assert decoded == value
    assert all(type(entry) is list for entry in decoded.values())  # the DoFn updates entries in place
    assert list(decoded) == list(value)


@pytest.mark.parametrize(("coder", "value"), [*((PendingItemCoder(), v) for v in PENDING),
                                              *((ShardProgressCoder(), v) for v in PROGRESS)])
def test_state_bytes_name_no_python_class_or_module(coder, value):
    encoded = coder.encode(value)
    for name in (b"orderflow", b"presence_rules", b"AvailabilityChange", b"builtins", b"collections"):
        assert name not in encoded
    assert not encoded.startswith(b"\x80")                 # not a pickle (protocol 2+ header)


def test_the_pickle_coder_it_replaces_would_have_named_the_class():
    # The check above can fail: a pickled change names its module and class.
    assert b"AvailabilityChange" in PickleCoder().encode(("rest-9", ("A", STATUS)))


def test_the_state_format_is_pinned():
    # Version 1 of the format, byte for byte: a savepoint written by this release must read in the next.
    assert PendingItemCoder().encode(("r1", ("S", 1000, 2000))).hex() == "0102723101e807d00f00"
    assert PendingItemCoder().encode(("r1", ("A", AvailabilityChange(
        "e1", "r1", "SET_STATUS", "OFFLINE", None, None, None, None, 1_700_000_000_000)))).hex() == (
        "0102723100010265310272310a5345545f53544154555301074f46464c494e450000000080d095ffbc31")
    assert ShardProgressCoder().encode({"r1": [None, 5, 3], "r2": [10, 20, 1]}).hex() == (
        "0100000002027231000503027232010a1401")


def test_an_unknown_format_version_is_refused_with_a_clear_error():
    future = bytes.fromhex("02") + PendingItemCoder().encode(("r1", ("S", 1000, 2000)))[1:]
    with pytest.raises(ValueError, match="format version 2"):
        PendingItemCoder().decode(future)


def test_the_stateful_evaluation_keeps_its_state_with_these_coders():
    assert type(_EvaluateStatusFn.PENDING.coder) is PendingItemCoder
    assert type(_EvaluateStatusFn.PROGRESS.coder) is ShardProgressCoder
    assert all(spec.coder.is_deterministic() for spec in (_EvaluateStatusFn.PENDING, _EvaluateStatusFn.PROGRESS))
