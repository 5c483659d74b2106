"""``NormalizeOrders``: Kafka records of any accepted order input model -> batches of canonical ``Order`` dicts.

The parsing and validation rules, their limits and dead-letter reasons are ``orderflow.model.orders``
(``parse_orders``), shared with the HTTP API. Each reason is counted by the Beam counter
``orders/dead_letter_<reason>``.
"""
from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from orderflow.model.avro import SchemaRegistryUnavailable
from orderflow.model.dead_letter import DEAD_LETTER_TAG, DeadLetter, ReasonCounters, Stage
from orderflow.model.kafka_record import KafkaRecord
from orderflow.model.orders import (
    DEFAULT_LIMITS,
    NORMALIZE_FAILED,
    InvalidOrder,
    OrderBatch,
    OrderLimits,
    parse_orders,
)
from orderflow.transforms import order_batch  # noqa: F401 - registers OrderBatch's coder

__all__ = ["NormalizeOrders", "RECORDS_IN"]

# The names of this module's Beam counters, (namespace, name): the pipelines' summaries read them.
RECORDS_IN = ("orders", "records_in")

_LOG = logging.getLogger(__name__)
STAGE = Stage.NORMALIZE_ORDERS
_UTC = datetime.timezone.utc


class _NormalizeBatchFn(beam.DoFn):
    """One call per batch of Kafka records: a list of Order dicts out, dead letters on their tag.

    Each order dict also carries ``source`` (Kafka coordinates + index), the identity of the record that
    delivered it, which the Postgres sink uses to recognise a replay of the same record.
    """

    def __init__(self, limits: OrderLimits, decode_avro: Callable[[bytes], dict] | None):
        self.limits = limits
        self.decode_avro = decode_avro
        self.records_in = Metrics.counter(*RECORDS_IN)
        self.orders_out = Metrics.counter("orders", "orders_normalized")
        self.dead_letters = Metrics.counter("orders", "dead_letters_normalize")
        self.by_reason = ReasonCounters(functools.partial(Metrics.counter, "orders"))

    def process(self, batch):
        records = batch if isinstance(batch, list) else [batch]
        orders = OrderBatch()
        now = datetime.datetime.now(_UTC)  # one "now" per batch for the event-time range
        for record in records:
            if isinstance(record, KafkaRecord):
                payload, source, timestamp_ms = record.value, record.coordinates, record.timestamp_ms
            else:
                payload, source, timestamp_ms = record, "", None
            try:
                parsed = parse_orders(payload or b"", source=source, timestamp_ms=timestamp_ms, limits=self.limits,
                                      now=now, decode_avro=self.decode_avro)
            except InvalidOrder as invalid:
                self.by_reason.inc(invalid.reason)
                self.dead_letters.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    invalid.reason, invalid.detail, payload or b"", source, STAGE))
                continue
            except SchemaRegistryUnavailable:
                raise  # an outage outlasting the retry budget, not bad data: the bundle fails, nothing is lost
            except Exception as exc:  # noqa: BLE001 - a record the rules did not foresee must not stop the pipeline
                _LOG.warning("normalize_orders: %s failed the parser itself; dead-lettered as %s", source,
                             NORMALIZE_FAILED, exc_info=True)
                self.by_reason.inc(NORMALIZE_FAILED)
                self.dead_letters.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    NORMALIZE_FAILED, f"{type(exc).__name__}: {str(exc)[:500]}", payload or b"", source, STAGE))
                continue
            for index, order in enumerate(parsed):
                # Without coordinates there is no record identity to recognise a replay by.
                order["source"] = f"{source}#{index}" if source else ""
            orders.extend(parsed)
        self.records_in.inc(len(records))
        self.orders_out.inc(len(orders))
        if orders:
            yield orders


class NormalizeOrders(beam.PTransform):
    """KafkaRecord, bytes, or lists of them (batches) -> ``OrderBatch`` (list of Order dicts) per element.

    Returns a DoOutputsTuple: the main output (batches of orders) and ``"dead_letter"`` (DeadLetter).

    Args:
        limits: what an order may hold (``OrderLimits``; default: the documented limits).
        decode_avro: bytes -> ``Order`` dict for Avro payloads (``parse_orders``' ``decode_avro``): the
            registry-backed ``orderflow.io.avro.RetryingDecoder`` in the pipeline.
    """

    def __init__(self, limits: OrderLimits = DEFAULT_LIMITS, decode_avro: Callable[[bytes], dict] | None = None):
        super().__init__()
        self.limits = limits
        self.decode_avro = decode_avro

    def expand(self, records):
        return records | "ParseOrders" >> beam.ParDo(_NormalizeBatchFn(self.limits, self.decode_avro)).with_output_types(
            OrderBatch).with_outputs(DEAD_LETTER_TAG, main="orders")
