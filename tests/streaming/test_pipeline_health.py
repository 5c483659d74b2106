"""Pipeline health seen from the API while the orders pipeline streams on Prism: it reports itself
(``pipeline_progress``), ``/metrics`` shows its records, freshness and consumer lag, ``/healthz`` counts it.
Killed (SIGKILL to its process group, Prism with it) while orders keep arriving: within the configured stall
time ``/healthz`` answers 503 naming it and the lag metric grows. Restarted: both recover."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orderflow.config import ApiConfig
from tests.support.served_api import ServedApi
from tests.support.waiting import START_TIMEOUT, wait_for

STALL_SECONDS = 8.0  # ORDERFLOW_API_PIPELINE_STALL_SECONDS of this test's API
PIPELINE_ARGS = ("--progress_interval_seconds=1", "--summary_interval_seconds=0", "--orders_batch_size=500")
SUFFIX = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def api(live_settings):
    served = ServedApi(live_settings, ApiConfig(key_cache_seconds=0.0, pipeline_stall_seconds=STALL_SECONDS)).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(api):
    with api.client(api.key("read", "ingest")) as http:
        yield http


def _post_orders(client, n: int, tag: str) -> None:
    orders = [{"ativo": "WEGE3", "quantidade": 1, "token": f"health-{SUFFIX}", "order_id": f"{tag}-{i}"}
              for i in range(n)]
    answer = client.post("/orders", json=orders)
    assert answer.status_code == 202, answer.text


def _metrics(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(metrics, name: str, **labels) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def _health(client) -> tuple[int, dict]:
    answer = client.get("/healthz")
    return answer.status_code, answer.json()


def test_a_killed_pipeline_fails_healthz_and_its_lag_grows_then_both_recover(run_pipeline, client, live_settings):
    started = time.monotonic()
    pipeline = run_pipeline("orders", *PIPELINE_ARGS)
    _post_orders(client, 20, "warm")
    poison = _produce_poison(live_settings)

    def reported_and_caught_up():
        # Every record read so far is accounted for in the report, priced or dead-lettered, and the 20 orders
        # and the poison record were read: the poison's outcome is in the counters, whatever the machine's speed.
        metrics = _metrics(client)
        records_in = _value(metrics, "orderflow_pipeline_records_in_total", pipeline="orders") or 0
        priced = _value(metrics, "orderflow_pipeline_records_out_total", pipeline="orders",
                        stage="orders/orders_priced") or 0
        dead = sum(value for (name, labels), value in metrics.items()
                   if name == "orderflow_pipeline_dead_letters_total" and ("pipeline", "orders") in labels)
        done = records_in >= 21 and priced + dead == records_in
        lag = _value(metrics, "orderflow_pipeline_consumer_lag_total", pipeline="orders", group="orderflow-orders")
        return done and lag is not None and lag <= live_settings.topic_partitions and metrics
    metrics, _ = wait_for(reported_and_caught_up, START_TIMEOUT, "the pipeline's report and its lag caught up",
                          pipeline, interval=0.5)
    print(f"\norders pipeline reporting and caught up {time.monotonic() - started:.1f} s after start")
    assert _value(metrics, "orderflow_pipeline_healthy", pipeline="orders") == 1
    assert _value(metrics, "orderflow_pipeline_records_out_total", pipeline="orders", stage="orders/orders_priced") >= 20
    freshness = _value(metrics, "orderflow_pipeline_newest_event_age_seconds", pipeline="orders")
    assert freshness is not None and 0 <= freshness < START_TIMEOUT
    for partition in range(live_settings.topic_partitions):
        assert _value(metrics, "orderflow_pipeline_end_offset", pipeline="orders", group="orderflow-orders",
                      topic=live_settings.topics.orders, partition=str(partition)) is not None
    status, body = _health(client)
    assert status == 200 and body["checks"]["pipeline:orders"] == "ok", body
    # The poison record: counted by reason on /metrics, and logged as a JSON line with its coordinates.
    assert _value(metrics, "orderflow_pipeline_dead_letters_total", pipeline="orders", reason="unparseable") == 1
    logged, _ = wait_for(lambda: _dead_letter_logged(pipeline.log_path, poison), 30, "the dead letter's log line")
    assert {"time", "level", "logger", "message", "process_name", "stage"} <= logged.keys()
    assert logged["process_name"] == "orders" and logged["level"] == "WARNING"
    lag_before = _value(metrics, "orderflow_pipeline_consumer_lag_total", pipeline="orders", group="orderflow-orders")

    pipeline.kill()  # SIGKILL to the process group: the pipeline and its Prism are gone at once
    killed = time.monotonic()
    lags = []

    def failing():
        _post_orders(client, 5, f"while-dead-{len(lags)}")  # orders keep arriving
        lags.append(_value(_metrics(client), "orderflow_pipeline_consumer_lag_total", pipeline="orders",
                           group="orderflow-orders"))
        status, body = _health(client)
        return status == 503 and "pipeline:orders" in body["failing"] and body
    body, took = wait_for(failing, STALL_SECONDS + 20, "/healthz naming the killed pipeline", interval=0.5)
    print(f"killed -> /healthz 503 naming it after {took:.1f} s (stall {STALL_SECONDS:g} s): "
          f"{body['checks']['pipeline:orders']}")
    reason = body["checks"]["pipeline:orders"]
    assert reason.startswith("no report for") and f"over {STALL_SECONDS:g}s" in reason, reason
    assert lags[-1] >= lag_before + 5 * (len(lags) - 1), lags  # every order posted since the kill is lag
    assert lags == sorted(lags) and lags[-1] > lags[0]
    metrics = _metrics(client)
    assert _value(metrics, "orderflow_pipeline_healthy", pipeline="orders") == 0
    assert _value(metrics, "orderflow_pipeline_heartbeat_age_seconds", pipeline="orders") > STALL_SECONDS

    restarted = time.monotonic()
    pipeline = run_pipeline("orders", *PIPELINE_ARGS)

    def recovered():
        status, body = _health(client)
        lag = _value(_metrics(client), "orderflow_pipeline_consumer_lag_total", pipeline="orders",
                     group="orderflow-orders")
        return status == 200 and lag is not None and lag <= live_settings.topic_partitions and (status, lag)
    (status, lag), took = wait_for(recovered, START_TIMEOUT, "/healthz 200 and the lag back down", pipeline,
                                   interval=0.5)
    print(f"restarted -> /healthz 200 and lag {lag:g} after {took:.1f} s (it was {lags[-1]:g}); "
          f"dead for {restarted - killed:.1f} s")
    assert lag < lags[-1]

    # Alive but not progressing: its Prism (the runner, a child process) is frozen, the pipeline process still
    # reports. The lag grows with no committed offset moving: failing after the stall time; thawed, recovered.
    prism = _prism_of(pipeline.pid)
    os.kill(prism, signal.SIGSTOP)
    try:
        frozen_lags = []

        def lag_failing():
            _post_orders(client, 5, f"while-frozen-{len(frozen_lags)}")
            frozen_lags.append(_value(_metrics(client), "orderflow_pipeline_consumer_lag_total", pipeline="orders",
                                      group="orderflow-orders"))
            status, body = _health(client)
            return status == 503 and "pipeline:orders" in body["failing"] and body
        body, took = wait_for(lag_failing, STALL_SECONDS + 30, "/healthz naming the frozen pipeline", pipeline,
                              interval=0.5)
        reason = body["checks"]["pipeline:orders"]
        print(f"Prism frozen -> /healthz 503 after {took:.1f} s: {reason}")
        assert reason.startswith("consumer lag grew from"), reason
        assert frozen_lags[-1] > frozen_lags[0]
    finally:
        os.kill(prism, signal.SIGCONT)
    (status, lag), took = wait_for(recovered, START_TIMEOUT, "/healthz 200 after thawing", pipeline, interval=0.5)
    print(f"thawed -> /healthz 200 and lag {lag:g} after {took:.1f} s")


def _produce_poison(settings) -> tuple[str, int, int]:
    """One record that is not an order, produced straight to the orders topic; returns its coordinates."""
    from confluent_kafka import Producer

    delivered = []
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topics.orders, b"this is not an order", key=b"poison",
                     on_delivery=lambda err, msg: delivered.append((err, msg.topic(), msg.partition(), msg.offset())))
    producer.flush(30)
    (error, topic, partition, offset), = delivered
    assert error is None
    return topic, partition, offset


def _dead_letter_logged(log_path, coordinates) -> dict | None:
    """The pipeline log's JSON line about the dead letter at ``coordinates``, if written yet."""
    topic, partition, offset = coordinates
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if (record.get("reason"), record.get("pipeline"), record.get("topic"), record.get("partition"),
                    record.get("offset")) == ("unparseable", "orders", topic, partition, offset):
                return record
    return None


def _prism_of(pid: int) -> int:
    """The pid of the Prism process the pipeline process ``pid`` started."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"prism" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no Prism child of {pid}")
