"""write_isolating: the records a store refuses end alone with its message; every other record is written."""
from __future__ import annotations

import pytest

from orderflow.io.refusals import write_isolating


class Refused(Exception):
    pass


def _store(bad: set[int], calls: list):
    def write(part):
        calls.append(list(part))
        if bad & set(part):
            raise Refused(f"refused {sorted(bad & set(part))}")
        return len(part)
    return write


def _refusal(exc):
    return str(exc) if isinstance(exc, Refused) else None


def test_refused_records_end_alone_and_the_rest_is_written():
    calls: list = []
    written, refused = write_isolating(_store({3, 6}, calls), list(range(8)), _refusal)
    assert sum(written) == 6
    assert refused == [(3, "refused [3]"), (6, "refused [6]")]
    assert [0, 1, 2, 3, 4, 5, 6, 7] == calls[0] and len(calls) < 16  # halves, not one write per record


def test_a_clean_batch_is_one_write():
    calls: list = []
    assert write_isolating(_store(set(), calls), [1, 2, 3], _refusal) == ([3], [])
    assert calls == [[1, 2, 3]]


def test_a_failure_that_is_not_the_datas_fault_propagates():
    def down(part):
        raise ConnectionError("store unavailable")

    with pytest.raises(ConnectionError):
        write_isolating(down, [1, 2], _refusal)
