"""Issue 13's poison records posted to the API: each answered 422 with the same reason the pipeline's dead letter
would carry (the API shares the normaliser), and nothing of the request reaches Kafka."""
from __future__ import annotations

import random

import pytest

from tests.support.kafka_check import count_records

POISON = [  # (name, body, content type, reason)
    ("nul_in_token_json", b'{"ativo": "PETR4", "quantidade": 5, "token": "ana\\u0000"}', "application/json",
     "invalid_token"),
    ("nul_in_token_csv", b"PETR4,5,an\x00a", "text/csv", "invalid_token"),
    ("nul_in_order_id", b'{"ativo": "PETR4", "quantidade": 5, "token": "ana", "order_id": "o-\\u0000"}',
     "application/json", "invalid_order_id"),
    ("event_time_year_1", b'{"ativo": "PETR4", "quantidade": 5, "token": "ana", "timestamp": "0001-01-01T00:00:00Z"}',
     "application/json", "event_time_out_of_range"),
    ("token_of_2100_bytes", b'{"ativo": "PETR4", "quantidade": 5, "token": "' + b"d" * 2100 + b'"}',
     "application/json", "token_too_long"),
    ("token_of_3000_bytes", b"PETR4,5," + b"e" * 3000, "text/csv", "token_too_long"),
    ("quantity_with_underscore", b"PETR4,5_000,ana", "text/csv", "invalid_quantity"),
    ("quantity_in_arabic_indic_digits", '{"ativo": "PETR4", "quantidade": "١٢", "token": "ana"}'.encode(),
     "application/json", "invalid_quantity"),
    ("huge_quantity", b'{"ativo": "PETR4", "quantidade": 9223372036854775807, "token": "ana"}', "application/json",
     "quantity_out_of_range"),
    # Found by the fault suite: a repr of the 900-deep quantity in the refusal raised RecursionError.
    ("quantity_nested_900_deep", b'{"ativo": "PETR4", "quantidade": ' + b"[" * 900 + b"5" + b"]" * 900
     + b', "token": "ana"}', "application/json", "invalid_quantity"),
    ("json_nested_past_the_parser_limit", b"[" * 5000 + b"]" * 5000, "application/json", "unparseable"),
    ("one_poisoned_order_in_an_envelope", b'{"records": [{"value": {"ativo": "PETR4", "quantidade": 1, "token": "a"}},'
     b' {"value": {"ativo": "PETR4", "quantidade": 1, "token": "b\\u0000"}}]}', "application/vnd.kafka.json.v2+json",
     "invalid_token"),
]


@pytest.mark.parametrize("body, content_type, reason", [p[1:] for p in POISON], ids=[p[0] for p in POISON])
def test_poison_order_gets_422_with_its_reason_and_nothing_lands(api, ingester, body, content_type, reason):
    topic, partitions = api.settings.topics.orders, api.settings.topic_partitions
    before = count_records(api.settings.kafka_bootstrap, topic, partitions)
    resp = ingester.post("/orders", content=body, headers={"Content-Type": content_type})
    assert resp.status_code == 422, resp.text
    assert f"({reason})" in resp.json()["detail"] and "nothing was accepted" in resp.json()["detail"]
    assert count_records(api.settings.kafka_bootstrap, topic, partitions) == before


def test_a_one_megabyte_garbage_body_gets_413(ingester):
    resp = ingester.post("/orders", content=random.Random(13).randbytes(999_900),
                         headers={"Content-Type": "text/csv"})
    assert resp.status_code == 413 and "larger than" in resp.json()["detail"]
