"""Confluent REST Proxy v2 produce compatibility for the orders topic: ``POST /topics/<orders topic>``.

Producers written for the REST Proxy work unchanged, e.g.::

    curl -X POST "$API/topics/ordem-ativo" -H "X-API-Key: $KEY" \\
      -H 'Accept: application/vnd.kafka.v2+json' -H 'Content-Type: application/vnd.kafka.json.v2+json' \\
      -d '{"records":[{"value":{"ativo":"WEGE3","quantidade":100,"token":"vitor"}}]}'

- Request: ``Content-Type: application/vnd.kafka.json.v2+json`` (the JSON embedded format; the binary,
  Avro, JSON Schema and Protobuf formats get 415), ``{"records": [{"value": <order>, "key": ...}]}``.
  The orders are validated as ``POST /orders`` validates them, all or nothing; a record's ``key`` is
  ignored (orders are keyed by client token) and ``partition`` is refused, as is any unknown field.
- Response: ``200`` with ``Content-Type: application/vnd.kafka.v2+json`` and REST Proxy's body,
  ``{"offsets": [{"partition", "offset", "error_code", "error"}], "key_schema_id", "value_schema_id"}``,
  once the broker acknowledged every record. ``Accept`` may be ``application/vnd.kafka.v2+json``,
  ``application/vnd.kafka+json``, ``application/json`` or ``*/*`` (406 otherwise).
- Errors: REST Proxy's ``{"error_code", "message"}`` (``errors.py``): 40101 without a valid key, 40301
  without the ``ingest`` scope, 40401 for any other topic, 422 for invalid orders, 50003 (HTTP 503) when
  the Kafka transaction is not committed (retriable: nothing was written), 50002 (HTTP 504) when its
  commit is not confirmed in time (retry with the same ``Idempotency-Key`` to count orders once).
- Authentication: the API's own keys (``X-API-Key`` or ``Authorization: Bearer``).
"""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from orderflow.api.deps import Caller, Res
from orderflow.api.errors import REST_PROXY_MEDIA_TYPE, ApiError, rest_proxy_responses
from orderflow.api.ingest import (
    ENVELOPE,
    REF_TEMPLATE,
    REST_PROXY_JSON,
    IdempotencyKey,
    component_schema,
    encode_orders,
    media_type,
    minted_id_prefix,
    produce,
)

ACCEPTABLE = {"", "*/*", "application/*", REST_PROXY_MEDIA_TYPE, "application/vnd.kafka+json", "application/json"}


class PartitionOffset(BaseModel):
    partition: int | None
    offset: int | None
    error_code: int | None = Field(description="null on success")
    error: str | None = Field(description="null on success")


class ProduceResponse(BaseModel):
    offsets: list[PartitionOffset]
    key_schema_id: int | None = Field(description="always null: the JSON embedded format has no schema")
    value_schema_id: int | None = Field(description="always null: the JSON embedded format has no schema")


def _acceptable(accept: str) -> bool:
    return any(part.split(";", 1)[0].strip().lower() in ACCEPTABLE for part in accept.split(","))


def make_router(orders_topic: str) -> APIRouter:
    """The REST Proxy produce route, documented for the one topic it serves."""
    router = APIRouter(tags=["REST Proxy v2"])

    @router.post(
        "/topics/{topic}", response_model=None, response_class=Response,
        summary="Produce orders as Confluent REST Proxy v2 does (JSON embedded format), all or nothing",
        description=__doc__.split("\n\n", 1)[1],
        openapi_extra={"requestBody": {"required": True, "content": {REST_PROXY_JSON: {
            "schema": component_schema(ENVELOPE.json_schema(ref_template=REF_TEMPLATE)),
            "example": {"records": [{"value": {"ativo": "WEGE3", "quantidade": 100, "token": "vitor"}}]},
        }}}},
        responses={200: {"description": "every record acknowledged by the broker", "content": {REST_PROXY_MEDIA_TYPE: {
                       "schema": component_schema(ProduceResponse.model_json_schema(ref_template=REF_TEMPLATE))}}},
                   **rest_proxy_responses(400, 401, 403, 404, 406, 408, 413, 415, 422, 429, 503, 504)},
    )
    async def produce_to_topic(
        request: Request, who: Caller, res: Res,
        topic: Annotated[str, Path(description="the orders topic", json_schema_extra={"enum": [orders_topic]})],
        idempotency_key: Annotated[str | None, IdempotencyKey] = None,
    ):
        if topic != res.settings.topics.orders:
            raise ApiError(404, "Topic not found.", error_code=40401)
        if not who.can_ingest():
            raise ApiError(403, "this key has no 'ingest' scope")
        if not _acceptable(request.headers.get("accept", "")):
            raise ApiError(406, f"HTTP 406 Not Acceptable: answers are {REST_PROXY_MEDIA_TYPE}")
        kind = media_type(request)
        if kind != REST_PROXY_JSON:
            raise ApiError(415, f"HTTP 415 Unsupported Media Type: {kind or '(none)'!r}; this proxy takes the "
                                f"JSON embedded format, {REST_PROXY_JSON}")
        payload = await request.body()
        _, records = await run_in_threadpool(encode_orders, res, kind, payload,
                                             minted_id_prefix(who, idempotency_key))
        delivered = await produce(res, topic, records)
        body = ProduceResponse(offsets=[PartitionOffset(partition=d.partition, offset=d.offset, error_code=None,
                                                        error=None) for d in delivered],
                               key_schema_id=None, value_schema_id=None)
        return Response(body.model_dump_json(), media_type=REST_PROXY_MEDIA_TYPE)

    return router
