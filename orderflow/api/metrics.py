"""Prometheus metrics of the API (recorded by ``middleware.ApiMiddleware``, the ingest endpoints and
the key verifier)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["INGESTED_RECORDS", "KAFKA_PRODUCER_STARTS", "KAFKA_TRANSACTIONS", "KAFKA_TRANSACTION_REQUESTS",
           "KAFKA_TRANSACTIONS_PRODUCING", "KAFKA_UNTRANSACTED_RECORDS", "KEEPALIVE_CLOCK_SKEW", "KEY_LOOKUPS", "LATENCY", "REQUESTS"]

REQUESTS = Counter("orderflow_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("orderflow_api_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INGESTED_RECORDS = Counter("orderflow_api_ingested_records_total", "records acknowledged by Kafka", ["topic"])
KEEPALIVE_CLOCK_SKEW = Counter("orderflow_api_keepalive_restamped_total",
                                "keep-alives whose sent_at was too far from the server's clock and were recorded at "
                                "the server's time, by direction: ahead, behind", ["direction"])
KAFKA_TRANSACTIONS = Counter("orderflow_api_kafka_transactions_total",
                             "ingest transactions by outcome: committed, aborted, unconfirmed", ["outcome"])
KAFKA_TRANSACTION_REQUESTS = Histogram("orderflow_api_kafka_transaction_requests",
                                       "ingest requests grouped into one Kafka transaction (group commit)",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
# Transactions of this process begun whose records are not all acknowledged yet, by whether they hold one request or
# several (one series each, so a reader never sees half an update): while the broker is stalled, a transaction counted
# here cannot reach its commit, so it will be aborted.
KAFKA_TRANSACTIONS_PRODUCING = Gauge("orderflow_api_kafka_transactions_producing",
                                     "ingest transactions begun whose records are not all acknowledged yet, by "
                                     "requests in them: one, several", ["requests"])
# Keep-alives go without a transaction (kafka_sink.KafkaSink.produce_record): one record is all-or-nothing by itself.
KAFKA_UNTRANSACTED_RECORDS = Counter("orderflow_api_kafka_untransacted_records_total",
                                     "records produced without a transaction (keep-alives) by outcome: acknowledged, "
                                     "refused (not written), unconfirmed (may have been written)", ["outcome"])
KAFKA_PRODUCER_STARTS = Counter("orderflow_api_kafka_producer_starts_total",
                                "transactional producers initialised (first use, and each rebuild after a failure)")
# result: found | unknown (a database lookup), cached (answered from memory), throttled (429, not looked up)
KEY_LOOKUPS = Counter("orderflow_api_key_lookups_total", "API key verifications by how they were answered",
                      ["result"])
