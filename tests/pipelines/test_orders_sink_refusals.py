"""The sinks' last line of defence through the bounded orders pipeline on the real stack: with the edge's key
limit raised past what the sinks hold (``--order_max_key_bytes=4000``), Postgres refuses a 3,000-byte token (its
index row is over 2,704 bytes) and DynamoDB a 2,100-byte one (partition key over 2,048 bytes); the run goes on,
the refused orders become dead letters with the sink's message, and every other order is written exactly."""
from __future__ import annotations

import random
import string

import psycopg
import pytest
from apache_beam.metrics.metric import MetricsFilter

from orderflow.model.avro import AvroCodec
from orderflow.pipelines import orders as orders_pipeline
from tests.support.orders_scenario import DAY, dynamodb_volumes, pipeline_args, read_topic
from tests.support.poison_scenario import produce_mix

N = 300
POSTGRES_REFUSES = "".join(random.Random(7).choices(string.ascii_letters, k=3000))  # incompressible
DYNAMODB_REFUSES = "d" * 2100


def _order(token: str, order_id: str) -> bytes:
    return f'{{"ativo": "PETR4", "quantidade": 3, "token": "{token}", "order_id": "{order_id}"}}'.encode()


POISON = {"postgres-1": _order(POSTGRES_REFUSES, "sink-pg-1"), "dynamodb-1": _order(DYNAMODB_REFUSES, "sink-dy-1"),
          "dynamodb-2": _order(DYNAMODB_REFUSES, "sink-dy-2")}


@pytest.fixture(scope="module")
def run(module_settings):
    mix = produce_mix(module_settings, N, seed=21, poison=POISON)
    result = orders_pipeline.run(pipeline_args(mix.rules, "--orders_batch_size=50", "--order_max_key_bytes=4000"),
                                 settings=module_settings)
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    return module_settings, mix, mix.dead_letters(module_settings), counters


def test_orders_a_sink_refuses_become_dead_letters_with_the_sinks_message(run):
    _, mix, dead, counters = run
    codec = AvroCodec("order")
    letters = {name: dead[source] for name, source in mix.sources.items()}
    _, headers = letters["postgres-1"]
    assert (headers["dlq.reason"], headers["dlq.stage"]) == (b"postgres_rejected", b"postgres_orders")
    assert b"54000 ProgramLimitExceeded" in headers["dlq.detail"] and b"orders_client_day" in headers["dlq.detail"]
    for name in ("dynamodb-1", "dynamodb-2"):
        value, headers = letters[name]
        assert (headers["dlq.reason"], headers["dlq.stage"]) == (b"dynamodb_rejected", b"dynamodb_volume")
        assert b"ValidationException" in headers["dlq.detail"] and b"2048" in headers["dlq.detail"]
        assert codec.decode(value)["client_token"] == DYNAMODB_REFUSES  # the order, replayable once fixed
    assert counters["dead_letter_postgres_rejected"] == 1 and counters["dead_letter_dynamodb_rejected"] == 2
    assert counters["dead_letters_sink"] == 3


def test_every_other_order_is_written_exactly(run):
    settings, mix, _, counters = run
    with psycopg.connect(settings.postgres_dsn) as conn:
        ids = {row[0] for row in conn.execute("SELECT order_id FROM orders")}
        by_client = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE trade_day = %s AND client_token <> %s "
            "GROUP BY 1", (DAY, DYNAMODB_REFUSES))}
    # Postgres refused one order and holds all others; what DynamoDB could not take stays in Postgres.
    assert len(ids) == mix.expected["unique"] + 2 and "sink-pg-1" not in ids and {"sink-dy-1", "sink-dy-2"} <= ids
    assert by_client == mix.expected["volumes"]
    assert dynamodb_volumes(settings, DAY) == mix.expected["volumes"]
    assert counters["postgres_inserted"] == mix.expected["unique"] + 2


def test_records_in_equal_priced_plus_edge_dead_letters_and_sink_dead_letters_are_counted_apart(run):
    settings, mix, dead, counters = run
    priced = read_topic(settings, settings.topics.priced_orders)
    # The refused orders were priced and published before a store refused them.
    edge = [h for _, h in dead.values() if h["dlq.stage"] in (b"normalize_orders", b"price_orders")]
    assert counters["records_in"] == N + len(POISON) == len(priced) + len(edge)
    assert len(dead) == len(edge) + counters["dead_letters_sink"]
