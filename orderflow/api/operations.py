"""Operations endpoints: ``/healthz`` (every dependency and every reporting pipeline checked, 503 naming the
failing ones) and ``/metrics`` (Prometheus text format: the API's own metrics, the dependencies' state and the
pipelines' health from ``pipelines.py``). Names and rules: docs/observability.md."""
from __future__ import annotations

import concurrent.futures

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from orderflow.api.deps import Res
from orderflow.api.pipelines import PipelineHealth, watch_of
from orderflow.api.resources import Resources

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_SECONDS = 3.0


def _check_postgres(res: Resources) -> None:
    with res.pg.connection(timeout=CHECK_TIMEOUT_SECONDS) as conn:
        conn.execute("SELECT 1 FROM api_keys LIMIT 1")


def _check_redis(res: Resources) -> None:
    res.redis.ping()


def _check_kafka(res: Resources) -> None:
    res.kafka.check(timeout=CHECK_TIMEOUT_SECONDS)


def _check_dynamodb(res: Resources) -> None:
    res.dynamodb.describe_table(TableName=res.settings.client_volume_table)


CHECKS = {"postgres": _check_postgres, "redis": _check_redis, "kafka": _check_kafka, "dynamodb": _check_dynamodb}
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="healthz")


def run_checks(res: Resources) -> dict[str, str]:
    """``{dependency: "ok" | "<error>"}``, the checks run concurrently, each bounded in time."""
    futures = {name: _executor.submit(check, res) for name, check in CHECKS.items()}
    results = {}
    for name, future in futures.items():
        try:
            future.result(timeout=CHECK_TIMEOUT_SECONDS + 1)
            results[name] = "ok"
        except concurrent.futures.TimeoutError:
            results[name] = f"no answer within {CHECK_TIMEOUT_SECONDS:.0f}s"
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency is reported, by name
            results[name] = f"{type(exc).__name__}: {exc}"[:300]
    return results


def pipeline_checks(request: Request, res: Resources) -> tuple[dict[str, str], list[PipelineHealth]]:
    """``{"pipeline:<name>": "ok" | "<why failing>"}`` of every pipeline that reported, and their health."""
    try:
        states = watch_of(request.app.state, res).health(res)
    except Exception as exc:  # noqa: BLE001 - the reports are unreadable (Postgres): its own check names it
        return {"pipelines": f"reports unreadable: {type(exc).__name__}: {exc}"[:300]}, []
    return {f"pipeline:{s.pipeline}": s.failing or "ok" for s in states}, states


@router.get("/healthz", summary="Health of the API, each dependency and each pipeline (503 naming the failing ones)",
            responses={503: {"description": "a dependency or a pipeline is failing"}})
async def healthz(request: Request, res: Res):
    checks = await run_in_threadpool(run_checks, res)
    pipelines, _ = await run_in_threadpool(pipeline_checks, request, res)
    checks.update(pipelines)
    failing = sorted(name for name, result in checks.items() if result != "ok")
    if "postgres" in failing and "pipelines" in failing:
        failing.remove("pipelines")  # their reports are in Postgres: its failure is the one to name
    body = {"status": "ok" if not failing else "failing", "failing": failing, "checks": checks}
    return JSONResponse(body, status_code=503 if failing else 200)


class _LiveCollector:
    """The dependencies' state and the pipelines' health, collected once per scrape."""

    def __init__(self, checks: dict[str, str], pipelines: dict[str, str], states: list[PipelineHealth]):
        self.checks, self.pipelines, self.states = checks, pipelines, states

    def collect(self):
        up = GaugeMetricFamily("orderflow_dependency_up", "1 when the API reaches the dependency, else 0",
                               labels=["dependency"])
        for name, result in sorted(self.checks.items()):
            up.add_metric([name], 1.0 if result == "ok" else 0.0)
        yield up
        healthy = GaugeMetricFamily("orderflow_pipeline_healthy", "1 when /healthz counts the pipeline as ok",
                                    labels=["pipeline"])
        heartbeat = GaugeMetricFamily("orderflow_pipeline_heartbeat_age_seconds",
                                      "seconds since the pipeline's newest report", labels=["pipeline"])
        workers = GaugeMetricFamily("orderflow_pipeline_workers", "worker processes reporting", labels=["pipeline"])
        freshness = GaugeMetricFamily("orderflow_pipeline_newest_event_age_seconds",
                                      "age of the newest Kafka record (its timestamp) the pipeline has read",
                                      labels=["pipeline"])
        progress = GaugeMetricFamily("orderflow_pipeline_progress_age_seconds",
                                     "seconds since the pipeline last read a record", labels=["pipeline"])
        records_in = CounterMetricFamily("orderflow_pipeline_records_in", "Kafka records read", labels=["pipeline"])
        records_out = CounterMetricFamily("orderflow_pipeline_records_out", "records out of a stage",
                                          labels=["pipeline", "stage"])
        dead = CounterMetricFamily("orderflow_pipeline_dead_letters", "dead letters by reason",
                                   labels=["pipeline", "reason"])
        lag = GaugeMetricFamily("orderflow_pipeline_consumer_lag",
                                "records of a partition not yet committed by the pipeline's consumer group",
                                labels=["pipeline", "group", "topic", "partition"])
        lag_total = GaugeMetricFamily("orderflow_pipeline_consumer_lag_total", "consumer lag over all partitions",
                                      labels=["pipeline", "group"])
        committed = GaugeMetricFamily("orderflow_pipeline_committed_offset", "the group's committed offset",
                                      labels=["pipeline", "group", "topic", "partition"])
        end = GaugeMetricFamily("orderflow_pipeline_end_offset", "the partition's end (last stable offset)",
                                labels=["pipeline", "group", "topic", "partition"])
        for s in self.states:
            healthy.add_metric([s.pipeline], 0.0 if s.failing else 1.0)
            heartbeat.add_metric([s.pipeline], s.heartbeat_age_seconds)
            workers.add_metric([s.pipeline], s.workers)
            if s.newest_event_age_seconds is not None:
                freshness.add_metric([s.pipeline], s.newest_event_age_seconds)
            if s.progress_age_seconds is not None:
                progress.add_metric([s.pipeline], s.progress_age_seconds)
            records_in.add_metric([s.pipeline], s.records_in)
            for stage, n in sorted(s.records_out.items()):
                records_out.add_metric([s.pipeline, stage], n)
            for reason, n in sorted(s.dead_letters.items()):
                dead.add_metric([s.pipeline, reason], n)
            if s.lag is not None:
                lag_total.add_metric([s.pipeline, s.group_id], s.lag)
            for p in s.partitions:
                labels = [s.pipeline, s.group_id, p.topic, str(p.partition)]
                lag.add_metric(labels, p.lag)
                end.add_metric(labels, p.end)
                if p.committed is not None:
                    committed.add_metric(labels, p.committed)
        if "pipelines" in self.pipelines:  # the reports could not be read
            up.add_metric(["pipeline_reports"], 0.0)
        yield from (healthy, heartbeat, workers, freshness, progress, records_in, records_out, dead, lag, lag_total,
                    committed, end)


def live_metrics(request: Request, res: Resources) -> bytes:
    checks = run_checks(res)
    pipelines, states = pipeline_checks(request, res)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LiveCollector(checks, pipelines, states))
    return generate_latest(registry)


@router.get("/metrics", summary="Prometheus metrics: the API's, its dependencies' and the pipelines'",
            response_class=Response)
async def metrics(request: Request, res: Res):
    live = await run_in_threadpool(live_metrics, request, res)
    return Response(generate_latest() + live, media_type=CONTENT_TYPE_LATEST)
