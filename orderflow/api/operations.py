"""Operations endpoints: ``/healthz`` (every dependency checked, 503 naming the failing ones) and
``/metrics`` (Prometheus text format)."""
from __future__ import annotations

import concurrent.futures

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from orderflow.api.deps import Res
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


@router.get("/healthz", summary="Health of the API and each dependency (503 naming the failing ones)",
            responses={503: {"description": "a dependency is failing"}})
async def healthz(res: Res):
    checks = await run_in_threadpool(run_checks, res)
    failing = sorted(name for name, result in checks.items() if result != "ok")
    body = {"status": "ok" if not failing else "failing", "failing": failing, "checks": checks}
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
