"""Poison records through the bounded orders pipeline on the real stack (issue 13): each is refused at the edge
with its own reason and becomes a dead letter, the valid orders of the same batches are all written, and records
in = priced + dead letters. Before the edge validation each of these failed the run at the same record."""
from __future__ import annotations

import hashlib
import random

import psycopg
import pytest
from apache_beam.metrics.metric import MetricsFilter

from orderflow.model.dead_letter import DLQ_MAX_MESSAGE_BYTES
from orderflow.pipelines import orders as orders_pipeline
from tests.support.orders_scenario import DAY, dynamodb_volumes, pipeline_args, read_topic
from tests.support.poison_scenario import produce_mix

N = 300
MEGABYTE_GARBAGE = random.Random(13).randbytes(999_900)  # fits ordem-ativo (librdkafka: 1,000,000 B with framing); with DLQ headers it would not
POISON = {  # name -> (value on ordem-ativo, dead-letter reason)
    "nul_in_token_json": (b'{"ativo": "PETR4", "quantidade": 5, "token": "ana\\u0000"}', "invalid_token"),
    "nul_in_token_csv": (b"PETR4,5,an\x00a", "invalid_token"),
    "nul_in_order_id": (b'{"ativo": "PETR4", "quantidade": 5, "token": "ana", "order_id": "o-\\u0000-1"}',
                        "invalid_order_id"),
    "event_time_year_1": (b'{"ativo": "PETR4", "quantidade": 5, "token": "ana", "timestamp": "0001-01-01T00:00:00Z"}',
                          "event_time_out_of_range"),
    "event_time_year_9999": (b'{"ativo": "PETR4", "quantidade": 5, "token": "ana", "timestamp": "9999-12-31T00:00:00Z"}',
                             "event_time_out_of_range"),
    "token_of_2100_bytes": (b'{"ativo": "PETR4", "quantidade": 5, "token": "' + b"d" * 2100 + b'"}', "token_too_long"),
    "token_of_3000_bytes": (b"PETR4,5," + random.Random(3).randbytes(1500).hex().encode(), "token_too_long"),
    "one_megabyte_garbage": (MEGABYTE_GARBAGE, "unparseable"),
    "quantity_with_underscore": (b"PETR4,5_000,ana", "invalid_quantity"),
    "quantity_in_arabic_indic_digits": ('{"ativo": "PETR4", "quantidade": "١٢", "token": "ana"}'.encode(),
                                        "invalid_quantity"),
    "huge_quantity": (b'{"ativo": "PETR4", "quantidade": 9223372036854775807, "token": "ana"}', "quantity_out_of_range"),
    # Found by the fault suite: the refusal's repr of a 900-deep value raised RecursionError and failed the bundle.
    "quantity_nested_900_deep": (b'{"ativo": "PETR4", "quantidade": ' + b"[" * 900 + b"5" + b"]" * 900
                                 + b', "token": "ana"}', "invalid_quantity"),
    "json_nested_5000_deep": (b"[" * 5000 + b"]" * 5000, "unparseable"),
}


@pytest.fixture(scope="module")
def run(module_settings):
    mix = produce_mix(module_settings, N, seed=11, poison={name: value for name, (value, _) in POISON.items()})
    result = orders_pipeline.run(pipeline_args(mix.rules, "--orders_batch_size=50"), settings=module_settings)
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(MetricsFilter())["counters"]}
    return module_settings, mix, mix.dead_letters(module_settings), counters


@pytest.mark.parametrize("name", sorted(POISON))
def test_poison_record_becomes_a_dead_letter_with_its_reason(run, name):
    settings, mix, dead, _ = run
    value, headers = dead[mix.sources[name]]
    assert headers["dlq.reason"].decode() == POISON[name][1]
    assert headers["dlq.stage"] == b"normalize_orders" and headers["dlq.source"].decode() == mix.sources[name]
    if name != "one_megabyte_garbage":
        assert value == POISON[name][0]  # untouched, to be fixed and replayed


def test_a_dead_letter_over_the_dlq_message_size_is_stored_truncated_with_size_and_digest(run):
    _, mix, dead, counters = run
    value, headers = dead[mix.sources["one_megabyte_garbage"]]
    assert headers["dlq.truncated"] == b"true"
    assert int(headers["dlq.original_size"]) == len(MEGABYTE_GARBAGE)
    assert headers["dlq.sha256"].decode() == hashlib.sha256(MEGABYTE_GARBAGE).hexdigest()
    assert 900_000 < len(value) and MEGABYTE_GARBAGE.startswith(value)
    assert len(value) + sum(len(k) + len(v) for k, v in headers.items()) < DLQ_MAX_MESSAGE_BYTES
    assert counters["truncated"] == 1


def test_every_valid_order_of_the_poisoned_batches_is_written_exactly(run):
    settings, mix, _, counters = run
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == mix.expected["unique"]
        by_client = {c: (t, n) for c, t, n in conn.execute(
            "SELECT client_token, sum(total), count(*) FROM orders WHERE trade_day = %s GROUP BY 1", (DAY,))}
    assert by_client == mix.expected["volumes"]
    assert dynamodb_volumes(settings, DAY) == mix.expected["volumes"]
    assert counters["postgres_inserted"] == mix.expected["unique"]
    assert counters.get("dead_letters_sink", 0) == 0  # the edge refused them all: no sink had to


def test_records_in_equal_priced_plus_dead_letters_with_a_counter_per_reason(run):
    settings, mix, dead, counters = run
    records_in = N + len(POISON)
    priced = read_topic(settings, settings.topics.priced_orders)
    assert counters["records_in"] == records_in == len(priced) + len(dead)
    assert counters["orders_priced"] == len(priced)
    reasons = dict(mix.expected["reasons"])
    for _, reason in POISON.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert {name[len("dead_letter_"):]: count for name, count in counters.items()
            if name.startswith("dead_letter_")} == reasons
