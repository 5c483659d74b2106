"""Idempotent batched order writes on real Postgres: duplicates, replays, owned orders, exact volumes."""
from __future__ import annotations

import datetime
import random
import string
from decimal import Decimal

import apache_beam as beam
import psycopg
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from orderflow.io.postgres_orders import OrdersWriter, WriteOrdersToPostgres

DAY = datetime.date(2026, 11, 17)
UTC = datetime.timezone.utc


def _priced(order_id, client, total, source, day=DAY):
    return {"order_id": order_id, "client_token": client, "asset": "WEGE3", "quantity": 1, "pricing_code": "W",
            "price": Decimal(total), "total": Decimal(total),
            "event_time": datetime.datetime(day.year, day.month, day.day, 15, tzinfo=UTC), "trade_day": day,
            "source_format": "JSON", "source": source}


def test_duplicates_and_replays_never_count_twice(pg_dsn):
    written = []
    writer = OrdersWriter(pg_dsn, written.append, max_batches=1)  # the production writer, a commit per batch
    first = [_priced("a", "ana", "10.5", "t/0/1#0"), _priced("b", "ana", "0.25", "t/0/2#0"),
             _priced("a", "ana", "10.5", "t/0/3#0"),  # duplicate inside the batch
             _priced("c", "bia", "7", "t/0/4#0")]
    volumes = [("ana", DAY, Decimal("10.75"), 2), ("bia", DAY, Decimal("7"), 1)]
    try:
        owned, counts, _ = writer.write(first)
        assert sorted(o["order_id"] for o in owned) == ["a", "b", "c"]
        assert counts == {"inserted": 3, "replayed": 0, "duplicates": 1, "rejected": 0}
        assert [sorted(v) for v in written] == [volumes]

        # The same batch again (a replay): nothing inserted, volumes unchanged, the owners re-emitted,
        # the absolute volumes written again (a lost write is repaired).
        owned, counts, _ = writer.write(first)
        assert sorted(o["order_id"] for o in owned) == ["a", "b", "c"]
        assert counts == {"inserted": 0, "replayed": 3, "duplicates": 1, "rejected": 0}
        assert [sorted(v) for v in written] == [volumes, volumes]

        # A duplicate delivered by another record, plus one new order: only the new one counts.
        owned, counts, _ = writer.write([_priced("c", "bia", "7", "t/1/9#0"),
                                         _priced("d", "bia", "1.000001", "t/1/10#0")])
        assert [o["order_id"] for o in owned] == ["d"]
        assert counts == {"inserted": 1, "replayed": 0, "duplicates": 1, "rejected": 0}
        assert written[-1] == [("bia", DAY, Decimal("8.000001"), 2)]
    finally:
        writer.close()

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT order_id, total, source FROM orders ORDER BY order_id").fetchall()
        assert rows == [("a", Decimal("10.5"), "t/0/1#0"), ("b", Decimal("0.25"), "t/0/2#0"),
                        ("c", Decimal("7"), "t/0/4#0"), ("d", Decimal("1.000001"), "t/1/10#0")]
        assert conn.execute("SELECT sum(total), sum(order_count) FROM client_daily_volume").fetchone() == (
            Decimal("18.750001"), 4)


def test_failed_volume_write_rolls_the_batch_back(pg_dsn):
    def broken(_volumes):
        raise RuntimeError("DynamoDB refused the whole write")  # not an outage: no retry, the bundle fails

    writer = OrdersWriter(pg_dsn, broken, max_batches=1)
    try:
        try:
            writer.write([_priced("z1", "zoe", "3", "t/2/1#0")])
        except RuntimeError:
            writer.rollback()  # what the sink does when a batch fails
        else:
            raise AssertionError("the failure must propagate")
    finally:
        writer.close()
    # Nothing committed: the replay of the batch will count it, once.
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE order_id = 'z1'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM client_daily_volume WHERE client_token = 'zoe'").fetchone() == (0,)
    written = []
    writer = OrdersWriter(pg_dsn, written.append, max_batches=1)
    try:
        owned, counts, _ = writer.write([_priced("z1", "zoe", "3", "t/2/1#0")])
    finally:
        writer.close()
    assert [o["order_id"] for o in owned] == ["z1"] and counts["inserted"] == 1
    assert written == [[("zoe", DAY, Decimal("3"), 1)]]


def test_pipeline_emits_owned_batches(pg_dsn):
    day = DAY + datetime.timedelta(days=1)
    batches = [[_priced("p1", "caio", "2", "x/0/1#0", day), _priced("p2", "caio", "3", "x/0/2#0", day)],
               [_priced("p1", "caio", "2", "x/0/7#0", day)]]
    with TestPipeline() as p:
        owned = (p | beam.Create(batches) | WriteOrdersToPostgres(pg_dsn)).owned
        assert_that(owned | beam.FlatMap(lambda b: [o["order_id"] for o in b]), equal_to(["p1", "p2"]))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT total, order_count FROM client_daily_volume WHERE client_token = 'caio'"
                            ).fetchone() == (Decimal("5"), 2)


def test_writer_spans_batches_and_writes_each_volume_once_per_commit(pg_dsn):
    day = DAY + datetime.timedelta(days=2)
    flushed = []
    writer = OrdersWriter(pg_dsn, flushed.append, max_batches=3)
    try:
        writer.write([_priced("m1", "mia", "1", "m/0/1#0", day)])
        writer.write([_priced("m2", "mia", "2", "m/0/2#0", day), _priced("m3", "noa", "4", "m/0/3#0", day)])
        assert flushed == []  # nothing committed, nothing written to DynamoDB yet
        writer.rollback()     # a failed bundle: all of it goes
        owned, counts, _ = writer.write([_priced("m1", "mia", "1", "m/0/1#0", day)])
        assert counts["inserted"] == 1
        writer.write([_priced("m2", "mia", "2", "m/0/2#0", day)])
        writer.write([_priced("m3", "noa", "4", "m/0/3#0", day)])  # third batch: commits
        assert [sorted(v) for v in flushed] == [[("mia", day, Decimal("3"), 2), ("noa", day, Decimal("4"), 1)]]
        writer.commit()  # nothing pending: no second write
        assert len(flushed) == 1
    finally:
        writer.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE order_id LIKE 'm_'").fetchone() == (3,)


def test_orders_postgres_refuses_are_bisected_out_and_every_other_order_is_written(pg_dsn):
    """A NUL in text (22P05) and an index row over 2,704 bytes (54000): refused alone, the rest written."""
    from orderflow.io.postgres_orders import POSTGRES_REJECTED, OrdersWriter

    day = DAY + datetime.timedelta(days=3)
    good = [_priced(f"g{i:02d}", f"c{i % 3}", "1.5", f"g/0/{i}#0", day) for i in range(40)]
    nul = _priced("bad-nul", "nu\x00l", "2", "g/0/90#0", day)
    incompressible = "".join(random.Random(5).choices(string.ascii_letters, k=3000))  # 'h' * 3000 fits compressed
    huge = _priced("bad-huge", incompressible, "2", "g/0/91#0", day)
    flushed = []
    writer = OrdersWriter(pg_dsn, flushed.append, max_batches=2)
    try:
        first = writer.write(good[:20])  # an earlier batch of the same transaction must survive the refusals
        assert first.counts["inserted"] == 20 and not first.rejected
        owned, counts, rejected = writer.write(good[20:30] + [nul] + good[30:] + [huge])  # second batch: commits
    finally:
        writer.close()
    assert sorted(o["order_id"] for o in owned) == [f"g{i:02d}" for i in range(20, 40)]
    assert counts == {"inserted": 20, "replayed": 0, "duplicates": 0, "rejected": 2}
    by_id = {r.order["order_id"]: r for r in rejected}
    assert set(by_id) == {"bad-nul", "bad-huge"} and {r.reason for r in rejected} == {POSTGRES_REJECTED}
    assert "22P05" in by_id["bad-nul"].message and "UntranslatableCharacter" in by_id["bad-nul"].message
    assert "54000" in by_id["bad-huge"].message and "orders_client_day" in by_id["bad-huge"].message
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE trade_day = %s", (day,)).fetchone() == (40,)
        volumes = dict(conn.execute("SELECT client_token, order_count FROM client_daily_volume WHERE day = %s",
                                    (day,)).fetchall())
    assert volumes == {"c0": 14, "c1": 13, "c2": 13}  # nothing of the refused orders counted
    assert sorted((t, n) for t, _, _, n in flushed[0]) == sorted(volumes.items())


def test_write_orders_to_postgres_emits_a_dead_letter_per_refused_order(pg_dsn):
    from apache_beam.metrics.metric import MetricsFilter

    from orderflow.model.avro import AvroCodec

    day = DAY + datetime.timedelta(days=4)
    batch = [_priced(f"w{i}", "wes", "1", f"w/3/{i}#0", day) for i in range(7)]
    batch[3] = _priced("w-bad", "we\x00s", "1", "w/3/3#0", day)
    codec = AvroCodec("order")
    p = TestPipeline()
    written = p | beam.Create([batch]) | WriteOrdersToPostgres(pg_dsn)
    assert_that(written.owned | beam.FlatMap(lambda b: [o["order_id"] for o in b]),
                equal_to(["w0", "w1", "w2", "w4", "w5", "w6"]), label="owned")
    # The dead letter's payload is the order as canonical Avro: valid ordem-ativo input once fixed.
    assert_that(written.dead_letter | beam.Map(lambda d: (d.reason, d.stage, d.source, "22P05" in d.detail,
                                                           codec.decode(d.payload)["client_token"])),
                equal_to([("postgres_rejected", "postgres_orders", "w/3/3", True, "we\x00s")]), label="dead")
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    assert counters["dead_letter_postgres_rejected"] == 1 == counters["dead_letters_sink"]
    assert counters["postgres_inserted"] == 6
