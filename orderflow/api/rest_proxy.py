"""Confluent REST Proxy v2 produce compatibility for the orders topic: ``POST /topics/<orders topic>``.

Producers written for the REST Proxy work unchanged, e.g.::

    curl -X POST "$API/topics/ordem-ativo" -H "X-API-Key: $KEY" \\
      -H 'Accept: application/vnd.kafka.v2+json' -H 'Content-Type: application/vnd.kafka.json.v2+json' \\
      -d '{"records":[{"value":{"ativo":"WEGE3","quantidade":100,"token":"vitor"}}]}'

- Request: ``Content-Type: application/vnd.kafka.json.v2+json`` (the JSON embedded format),
  ``{"records": [{"value": <order>, "key": ...}]}``, or ``application/vnd.kafka.avro.v2+json`` (the Avro
  embedded format), ``{"value_schema": "<Avro schema JSON>" | "value_schema_id": <id>, "records": [{"value":
  <record in Avro's JSON encoding>}]}``: the schema is registered (or looked up) under ``<topic>-value`` in
  the schema registry, each value is written in the Confluent wire format with its id, and the answer carries
  ``value_schema_id``. The binary, JSON Schema and Protobuf formats get 415. The orders are validated as
  ``POST /orders`` validates them (an Avro value as the orders pipeline reads it: resolved to
  ``schemas/order.avsc``), all or nothing; a record's ``key`` is ignored (orders are keyed by client token)
  and ``partition`` is refused, as is any unknown field of the JSON format.
- Response: ``200`` with ``Content-Type: application/vnd.kafka.v2+json`` and REST Proxy's body,
  ``{"offsets": [{"partition", "offset", "error_code", "error"}], "key_schema_id", "value_schema_id"}``,
  once the broker acknowledged every record. ``Accept`` may be ``application/vnd.kafka.v2+json``,
  ``application/vnd.kafka+json``, ``application/json`` or ``*/*`` (406 otherwise).
- Errors: REST Proxy's ``{"error_code", "message"}`` (``errors.py``): 40101 without a valid key, 40301
  without the ``ingest`` scope, 40401 for any other topic, 422 for invalid orders; for the Avro format as
  Confluent's proxy answers, 42202 without a value schema, 42205 for a schema that does not parse or that the
  subject's compatibility rule refuses, 40403 (HTTP 404) for a ``value_schema_id`` the registry does not
  know, 42203 for a value that does not fit its schema; 503 while the schema registry is needed and
  unavailable (a new schema), 50003 (HTTP 503) when
  the Kafka transaction is not committed (retriable: nothing was written), 50002 (HTTP 504) when its
  commit is not confirmed in time (retry with the same ``Idempotency-Key`` to count orders once).
- Authentication: the API's own keys (``X-API-Key`` or ``Authorization: Bearer``).
"""

import io
import json
from typing import Annotated

import fastavro
import orjson
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
    InvalidBody,
    component_schema,
    encode_orders,
    media_type,
    minted_id_prefix,
    produce,
)
from orderflow.api.resources import Resources
from orderflow.model.avro import IncompatibleSchema, SchemaNotFound, confluent_header, subject_for

__all__ = ["make_router"]

REST_PROXY_AVRO = "application/vnd.kafka.avro.v2+json"
# Confluent REST Proxy's error codes for the Avro embedded format (io.confluent.kafkarest.Errors).
VALUE_SCHEMA_MISSING, JSON_CONVERSION_FAILED, INVALID_SCHEMA, SCHEMA_NOT_FOUND = 42202, 42203, 42205, 40403

ACCEPTABLE = {"", "*/*", "application/*", REST_PROXY_MEDIA_TYPE, "application/vnd.kafka+json", "application/json"}


class PartitionOffset(BaseModel):
    partition: int | None
    offset: int | None
    error_code: int | None = Field(description="null on success")
    error: str | None = Field(description="null on success")


class ProduceResponse(BaseModel):
    offsets: list[PartitionOffset]
    key_schema_id: int | None = Field(description="always null: keys are not Avro (orders are keyed by client token)")
    value_schema_id: int | None = Field(description="the registry id the values were written with (Avro embedded "
                                                    "format); null for the JSON embedded format")


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
        if kind not in (REST_PROXY_JSON, REST_PROXY_AVRO):
            raise ApiError(415, f"HTTP 415 Unsupported Media Type: {kind or '(none)'!r}; this proxy takes the "
                                f"JSON embedded format, {REST_PROXY_JSON}, and the Avro one, {REST_PROXY_AVRO}")
        payload = await request.body()
        schema_id = None
        if kind == REST_PROXY_AVRO:
            schema_id, records = await run_in_threadpool(encode_avro_records, res, topic, payload,
                                                         minted_id_prefix(who, idempotency_key))
        else:
            _, records = await run_in_threadpool(encode_orders, res, kind, payload,
                                                 minted_id_prefix(who, idempotency_key))
        delivered = await produce(res, topic, records)
        body = ProduceResponse(offsets=[PartitionOffset(partition=d.partition, offset=d.offset, error_code=None,
                                                        error=None) for d in delivered],
                               key_schema_id=None, value_schema_id=schema_id)
        return Response(body.model_dump_json(), media_type=REST_PROXY_MEDIA_TYPE)

    return router


def _unprocessable(code: int, message: str) -> ApiError:
    return ApiError(422, message, error_code=code)


def _value_schema(res: Resources, topic: str, body: dict) -> tuple[int, str]:
    """``(id, schema JSON)`` of the request's value schema: ``value_schema`` registered under ``<topic>-value``
    (the registry's compatibility rule applies), or ``value_schema_id`` looked up."""
    registry = res.schema_registry
    schema, schema_id = body.get("value_schema"), body.get("value_schema_id")
    if schema is None and schema_id is None:
        raise _unprocessable(VALUE_SCHEMA_MISSING, "Request includes values but does not include value schema")
    if schema is not None:
        try:
            fastavro.parse_schema(json.loads(schema) if isinstance(schema, str) else schema)
        except Exception as exc:  # noqa: BLE001 - json and fastavro raise many types on a bad schema
            raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: {type(exc).__name__}: {exc}"[:500]) from None
        text = schema if isinstance(schema, str) else json.dumps(schema)
        try:
            return registry.register(subject_for(topic), text), text
        except IncompatibleSchema as exc:
            raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: {exc}"[:1000]) from None
    if not isinstance(schema_id, int) or isinstance(schema_id, bool):
        raise _unprocessable(INVALID_SCHEMA, f"Invalid schema: value_schema_id must be an integer, got {schema_id!r}")
    try:
        return schema_id, registry.schema(schema_id)
    except SchemaNotFound:
        raise ApiError(404, f"Schema {schema_id} not found", error_code=SCHEMA_NOT_FOUND) from None


def encode_avro_records(res: Resources, topic: str, payload: bytes,
                        minted: str) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The Avro embedded format: each record's value (Avro's JSON encoding) written in the Confluent wire format
    with the request's schema, then read back as the orders pipeline reads it and validated as an order, all or
    nothing. Returns ``(schema id, [(key, value)])``."""
    from orderflow.model.orders import InvalidOrder, parse_orders

    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"Invalid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("records"), list) or not body["records"]:
        raise InvalidBody("the body is {\"value_schema\" or \"value_schema_id\", \"records\": [{\"value\": ...}, ...]} "
                          "with at least one record")
    if len(body["records"]) > res.config.max_orders_per_request:
        raise ApiError(413, f"{len(body['records'])} records in one request, at most "
                            f"{res.config.max_orders_per_request}: split the batch")
    schema_id, text = _value_schema(res, topic, body)
    writer = fastavro.parse_schema(json.loads(text))
    header, reader, records = confluent_header(schema_id), res.codec("orders").decode, []
    for index, record in enumerate(body["records"]):
        if not isinstance(record, dict) or "value" not in record or "partition" in record:
            raise InvalidBody(f"record {index}: a record is {{\"value\": ...}} (a partition is not taken)")
        try:
            (datum,) = list(fastavro.json_reader(io.StringIO(json.dumps(record["value"])), writer))
            out = io.BytesIO(header)
            out.seek(len(header))
            fastavro.schemaless_writer(out, writer, datum)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on a value that does not fit
            raise _unprocessable(JSON_CONVERSION_FAILED, f"Conversion of JSON to Object failed: record {index}: "
                                                         f"{type(exc).__name__}: {exc}"[:500]) from None
        value = out.getvalue()
        try:
            (order,) = parse_orders(value, minted_id_prefix=f"{minted}-{index}", decode_avro=reader)
        except InvalidOrder as exc:
            raise InvalidBody(f"record {index}: invalid order ({exc.reason}): {exc.detail}; nothing was accepted") \
                from None
        records.append((str(order["client_token"]).encode(), value))
    return schema_id, records
