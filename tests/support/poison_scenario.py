"""Valid generated orders with poison records mixed in, produced to the orders topic (plain helpers, not a test
module): shared by the poison-record and sink-refusal tests of the orders pipeline."""
from __future__ import annotations

import dataclasses
import datetime
import random
import zoneinfo

from orderflow import refdata
from orderflow.model import sample_assets
from orderflow_dev.generate.orders import generate
from tests.support.kafka_testing import produce
from tests.support.orders_scenario import DAY, alarm_rules, expected_outcome, read_topic

# 15:00 in the exchange time zone on DAY: the Kafka timestamp of every poison record.
POISON_TIMESTAMP_MS = int(datetime.datetime(DAY.year, DAY.month, DAY.day, 15,
                                            tzinfo=zoneinfo.ZoneInfo("America/Sao_Paulo")).timestamp() * 1000)


@dataclasses.dataclass(frozen=True)
class Mix:
    records: list            # the generated records (orders, duplicates, malformed)
    expected: dict           # expected_outcome of the generated records
    rules: list[dict]
    sources: dict[str, str]  # poison name -> Kafka coordinates "topic/partition/offset"

    def dead_letters(self, settings) -> dict[str, tuple]:
        """Dead-letter topic records by key (the source coordinates): (value, headers as a dict)."""
        return {key.decode(): (value, dict(headers)) for _, key, value, _, headers in
                read_topic(settings, settings.topics.orders_dead_letter)}


def produce_mix(settings, n: int, seed: int, poison: dict[str, bytes]) -> Mix:
    """Loads DAY's reference data, generates ``n`` records and produces them with each ``poison`` value at a
    random place among them (so that poison and valid records share batches)."""
    prices = sample_assets.sample_prices(DAY)
    refdata.load_reference_data(settings, DAY, prices)
    records = list(generate(n, seed=seed, day=DAY, timezone=settings.exchange_timezone))
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(n + len(poison)), len(poison)))
    mixed, names = [], {}
    good = iter(records)
    poisons = iter(poison.items())
    for index in range(n + len(poison)):
        if slots and index == slots[0]:
            slots.pop(0)
            name, value = next(poisons)
            names[index] = name
            mixed.append((None, value, POISON_TIMESTAMP_MS))
        else:
            record = next(good)
            mixed.append((record.key, record.value, record.timestamp_ms))
    coordinates = produce(settings.kafka_bootstrap, settings.topics.orders, mixed)
    sources = {names[i]: f"{settings.topics.orders}/{p}/{o}" for i, (p, o) in enumerate(coordinates) if i in names}
    expected = expected_outcome(records, prices)
    return Mix(records=records, expected=expected, rules=alarm_rules(expected), sources=sources)
