"""Ingest endpoints: orders and restaurant events go to Kafka, answered 202 once committed.

Everything in a request is validated and encoded before the first record is produced, so invalid input
never leaves a half-written batch behind: the request is rejected whole with a 4xx naming the problem.
A valid request's records are then written in one Kafka transaction (``orderflow.api.kafka_sink``): 202
when it is committed, 503 when it is not (nothing of the batch is visible to the pipelines, which read
``read_committed``), 504 when the commit's outcome did not come back in time. A keep-alive, one record whose
repetition is harmless, goes without a transaction (``produce_keepalive``).

Orders without an id get ``api-<32 hex>-<index in the batch>``: random hex, or, with an
``Idempotency-Key``, a digest of the caller's key id and that key, so a retried batch carries the same
ids and the orders pipeline (idempotent on the order id) counts it once.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Request
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from orderflow.api.auth import Principal
from orderflow.api.contract import (
    PATH_ID,
    ClientToken,
    EventTime,
    OrderId,
    Quantity,
    Ticker,
    Timestamp,
)
from orderflow.api.deps import Caller, Res, forbidden
from orderflow.api.errors import AUTHENTICATED, WITH_BODY, ApiError, ErrorOut, error_body, responses
from orderflow.api.kafka_sink import CommitUnconfirmed, Delivered, DeliveryFailed
from orderflow.api.metrics import INGESTED_RECORDS, KEEPALIVE_CLOCK_SKEW
from orderflow.api.resources import Resources
from orderflow.model.orders import CSV_PATTERN, InvalidOrders, parse_orders
from orderflow.model.presence import AvailabilityChange, keepalive_kafka_record, stamp_keepalive

__all__ = ["COMPONENT_SCHEMAS", "ENVELOPE", "IdempotencyKey", "InvalidBody", "KeepaliveIn", "REF_TEMPLATE",
           "REST_PROXY_JSON", "RestaurantId", "component_schema", "encode_orders", "media_type", "minted_id_prefix",
           "produce", "router"]

_LOG = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"], responses=responses(*AUTHENTICATED, *WITH_BODY))

RestaurantId = Path(min_length=1, max_length=128, pattern=PATH_ID, description="Restaurant id",
                    examples=["rest-00042"])
ScheduleId = Path(min_length=1, max_length=128, pattern=PATH_ID)
Reason = Literal["LACK_OF_DELIVERY_STAFF", "CONNECTION_ISSUES", "OVERLOADED_OFFLINE_ORDERS", "HOLIDAYS"]

# The order contract of the API as OpenAPI states it. The body itself is checked by the model's one parser
# (``parse_orders(..., contract=...)``), which applies these rules and the pipeline's; these models only
# generate the schema, and must say what the parser does (tests/api/test_schemathesis.py checks it).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderIn(_Strict):
    """An order as the seed's producers send it."""

    ativo: Ticker
    quantidade: Quantity
    token: ClientToken
    order_id: OrderId | None = None
    event_time: EventTime | None = None


class EnglishOrderIn(_Strict):
    """The same order with English field names."""

    asset: Ticker
    quantity: Quantity
    client_token: ClientToken
    order_id: OrderId | None = None
    event_time: EventTime | None = None


def _naming(value: Any) -> str:
    english = isinstance(value, dict) and any(name in value for name in ("asset", "quantity", "client_token"))
    return "english" if english else "portuguese"


AnyOrder = Annotated[Annotated[OrderIn, Tag("portuguese")] | Annotated[EnglishOrderIn, Tag("english")],
                     Discriminator(_naming)]


class RestProxyRecord(_Strict):
    value: AnyOrder
    key: Any = Field(None, description="ignored: orderflow keys orders by client token, so one client's orders "
                                       "stay in order")


class RestProxyEnvelope(_Strict):
    """A Confluent REST Proxy v2 produce request with the JSON embedded format."""

    records: list[RestProxyRecord] = Field(min_length=1)


JSON_ORDERS = TypeAdapter(AnyOrder | Annotated[list[AnyOrder], Field(min_length=1)])
ENVELOPE = TypeAdapter(RestProxyEnvelope)

JSON = "application/json"
REST_PROXY_JSON = "application/vnd.kafka.json.v2+json"
CSV = "text/csv"
AVRO = "application/avro"
# Schemas documented outside FastAPI's own (request bodies read raw): added to the spec's components.
COMPONENT_SCHEMAS: dict[str, dict] = {}


def component_schema(schema: dict) -> dict:
    """``schema`` (generated with refs to ``#/components/schemas``) with its definitions moved there."""
    COMPONENT_SCHEMAS.update(schema.pop("$defs", {}))
    return schema


REF_TEMPLATE = "#/components/schemas/{model}"
ORDER_CONTENT_TYPES = {
    JSON: {"schema": component_schema(JSON_ORDERS.json_schema(ref_template=REF_TEMPLATE)),
           "example": {"ativo": "PETR4", "quantidade": 100, "token": "client-1"}},
    REST_PROXY_JSON: {"schema": component_schema(ENVELOPE.json_schema(ref_template=REF_TEMPLATE)),
                      "example": {"records": [{"value": {"ativo": "WEGE3", "quantidade": 100, "token": "vitor"}}]}},
    CSV: {"schema": {"type": "string", "pattern": f"^{CSV_PATTERN}$"},
          "example": "PETR4,100,client-1\nVALE3,5,client-2,my-order-7\n"},
    AVRO: {"schema": {"type": "string", "format": "binary",
                      "description": "one Order (schemas/order.avsc) in the Confluent wire format (00, "
                                     "the 4-byte schema id of the registry, the Avro body) or Avro single-object "
                                     "encoding (C3 01)"}},
}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Accepted(BaseModel):
    topic: str
    partition: int
    offset: int


class OrderAccepted(Accepted):
    order_id: str


class OrdersAccepted(BaseModel):
    accepted: int
    records: list[OrderAccepted]


class KeepaliveIn(_Strict):
    sent_at: Timestamp | None = Field(
        None, description="when the restaurant sent it (default: now); the record's Kafka timestamp. More than "
                          "ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS (300) from the server's clock, the keep-alive is "
                          "recorded at the server's time instead (the answer's clock_skew_seconds says so)")


class KeepaliveAccepted(Accepted):
    sent_at: datetime = Field(description="the time the keep-alive is recorded with (its Kafka timestamp)")
    clock_skew_seconds: float | None = Field(
        description="how far the request's sent_at was from the server's clock when it was too far to be used "
                    "and the server's time was recorded instead; null when sent_at was used (or absent)")


class AvailabilityIn(_Strict):
    # The schema states the cross-field rule too (JSON Schema if/then), so spec and answers agree.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"status": {"const": "AVAILABLE"}}, "required": ["status"]},
        "then": {"properties": {"reason": {"type": "null"}}},
    })

    status: Literal["AVAILABLE", "UNAVAILABLE"]
    reason: Reason | None = None

    @model_validator(mode="after")
    def _reason_only_when_unavailable(self):
        if self.status == "AVAILABLE" and self.reason is not None:
            raise ValueError("a reason is given only with status UNAVAILABLE")
        return self


class UnavailabilityIn(_Strict):
    reason: Reason
    starts_at: Timestamp
    ends_at: Timestamp | None = Field(None, description="open-ended when absent; after starts_at, else 422 (a "
                                                        "rule between two fields, which JSON Schema cannot state)")
    schedule_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$",
                                    description="default: a new UUID")

    @model_validator(mode="after")
    def _ends_after_start(self):
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class ScheduleAccepted(Accepted):
    schedule_id: str
    event_id: str


class EventAccepted(Accepted):
    event_id: str


def _millis(moment: datetime | None) -> int:
    return int(moment.timestamp() * 1000) if moment else int(time.time() * 1000)


KAFKA_RESPONSES = {
    503: {"model": ErrorOut, "description": "Kafka did not take the request: nothing of it was written (it is "
                                            "safe to retry); or another dependency is unavailable"},
    504: {"model": ErrorOut, "description": "Kafka did not confirm the commit in time: the request may or may not "
                                            "have been written (retry with the same Idempotency-Key to count "
                                            "orders once)"},
}

# A keep-alive is one record written without a transaction (produce_keepalive): its 504 is not a commit's.
KEEPALIVE_KAFKA_RESPONSES = {
    503: {"model": ErrorOut, "description": "Kafka did not take the keep-alive: it was not written (it is safe to "
                                            "retry); or another dependency is unavailable"},
    504: {"model": ErrorOut, "description": "Kafka did not acknowledge the keep-alive in time: it may have been "
                                            "written (retrying is harmless: a repeated keep-alive is one ping)"},
}

IdempotencyKey = Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="Makes a retry safe. Orders without an id get ids derived from this key (with the calling "
                "API key) and their position in the batch: `api-<32 hex>-<index>`. A retry of a 503 or 504 "
                "with the same key and body carries the same ids, and the orders pipeline counts each order "
                "once. Without it the ids are random. Use a new key (a UUID, say) for every new batch.",
    examples=["0b6f3c1e-8d2a-4c55-9a57-3f1d2e4b7c90"],
)


@contextlib.contextmanager
def _kafka_answers(not_written: str, maybe_written: str):
    """Kafka's failures as the API's answers, in the REST Proxy dialect's codes: ``DeliveryFailed`` -> 503 (50003:
    retriable, nothing written), ``CommitUnconfirmed`` -> 504 (50002: the outcome is unknown)."""
    try:
        yield
    except DeliveryFailed as exc:
        raise ApiError(503, f"{not_written}: {exc}", error_code=50003) from exc
    except CommitUnconfirmed as exc:
        raise ApiError(504, f"{maybe_written}: {exc}", error_code=50002) from exc


@functools.lru_cache(maxsize=16)
def _ingested(topic: str):
    """``INGESTED_RECORDS``' series of a topic, resolved once (counted on every keep-alive)."""
    return INGESTED_RECORDS.labels(topic=topic)


async def produce(res: Resources, topic: str, records: list[tuple[bytes | None, bytes]]):
    """Writes the records in one Kafka transaction: 503 when it is not committed, 504 when unconfirmed."""
    with _kafka_answers("Kafka did not take the records, nothing of them was written",
                        "Kafka did not confirm the commit in time, the records may have been written "
                        "(retry with the same Idempotency-Key)"):
        delivered = await res.kafka.produce(topic, records)
    _ingested(topic).inc(len(records))
    return delivered


async def produce_keepalive(res: Resources, record: tuple) -> Delivered:
    """Writes a keep-alive without a transaction (``KafkaSink.produce_record``: a keep-alive written twice is
    harmless, and a transaction per group of them cost the broker 4x their own CPU): 503 when it was not
    written, 504 when its acknowledgement did not come in time (it may have been; retrying is harmless)."""
    topic = res.settings.topics.keepalive
    with _kafka_answers("Kafka did not take the keep-alive, it was not written",
                        "Kafka did not acknowledge the keep-alive in time, it may have been written "
                        "(a repeated keep-alive is harmless: retry)"):
        delivered = await res.kafka.produce_record(topic, record)
    _ingested(topic).inc()
    return delivered


def minted_id_prefix(who: Principal, idempotency_key: str | None) -> str:
    """``api-<32 hex>``, the prefix of the ids of a request's orders that come without one."""
    if idempotency_key is None:
        return f"api-{uuid.uuid4().hex}"
    return "api-" + hashlib.sha256(f"{who.key_id}\n{idempotency_key}".encode()).hexdigest()[:32]


class InvalidBody(ApiError):
    def __init__(self, detail: str, errors: list[dict] | None = None):
        super().__init__(422, detail)
        self.errors = errors


# The body kinds of POST /orders, as the model's parser names them.
CONTRACTS = {JSON: "JSON", REST_PROXY_JSON: "REST_PROXY", CSV: "CSV", AVRO: "AVRO"}


def refused_orders(refused: InvalidOrders) -> InvalidBody:
    """The 422 of a body the parser refused: the pipeline's dead-letter reason first when it would refuse the
    body too, then what the API's contract refuses, field by field."""
    if refused.rule_errors:
        detail = f"invalid order ({refused.reason}): {refused.detail}; nothing was accepted"
        if refused.contract_detail:
            detail += f". {refused.contract_detail}"
    else:
        detail = f"{refused.contract_detail}; nothing was accepted"
    errors = [{"loc": ["body", *error.loc], "msg": error.msg} for error in refused.contract_errors[:20]]
    return InvalidBody(detail, errors or None)


def encode_orders(res: Resources, kind: str, payload: bytes,
                  minted: str) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
    """Validates a body of content type ``kind`` and encodes its orders, all or nothing (InvalidBody / 413);
    orders without an id are named ``<minted>-<index>``."""
    if not payload.strip():
        raise InvalidBody("empty body: send one or more orders")
    try:
        orders = parse_orders(payload, timestamp_ms=int(time.time() * 1000), minted_id_prefix=minted,
                              decode_avro=res.codec("orders").decode, contract=CONTRACTS[kind])
    except InvalidOrders as refused:
        raise refused_orders(refused) from None
    if len(orders) > res.config.max_orders_per_request:
        raise ApiError(413, f"{len(orders)} orders in one request, at most {res.config.max_orders_per_request}: "
                            "split the batch")
    codec = res.codec("orders")
    return orders, [(str(o["client_token"]).encode(), codec.encode(o)) for o in orders]


@router.post(
    "/orders", status_code=202, response_model=OrdersAccepted,
    summary="Ingest orders (JSON, REST-proxy envelope, CSV lines or Avro, by Content-Type), all or nothing",
    openapi_extra={"requestBody": {"required": True, "content": ORDER_CONTENT_TYPES}},
    responses={**responses(415), **KAFKA_RESPONSES},
)
async def post_orders(request: Request, who: Caller, res: Res,
                      idempotency_key: Annotated[str | None, IdempotencyKey] = None):
    if not who.can_ingest():
        raise forbidden("this key has no 'ingest' scope")
    kind = media_type(request)
    if kind not in ORDER_CONTENT_TYPES:
        raise ApiError(415, f"Content-Type {kind or '(none)'!r} is not accepted: send "
                            f"{', '.join(ORDER_CONTENT_TYPES)}")
    payload = await request.body()
    orders, records = await run_in_threadpool(encode_orders, res, kind, payload,
                                              minted_id_prefix(who, idempotency_key))
    delivered = await produce(res, res.settings.topics.orders, records)
    return OrdersAccepted(accepted=len(orders), records=[
        OrderAccepted(order_id=o["order_id"], topic=d.topic, partition=d.partition, offset=d.offset)
        for o, d in zip(orders, delivered, strict=True)
    ])


def _require_restaurant(who: Principal, restaurant_id: str) -> None:
    if not who.can_act_for_restaurant(restaurant_id):
        raise forbidden(f"this key may not act for restaurant {restaurant_id!r} "
                        "(needs 'ingest' or 'restaurant:<id>')")


@router.post("/restaurants/{restaurant_id}/keepalive", status_code=202, response_model=KeepaliveAccepted,
             summary="A restaurant's keep-alive ping", responses=KEEPALIVE_KAFKA_RESPONSES)
async def post_keepalive(restaurant_id: Annotated[str, RestaurantId], who: Caller, res: Res,
                         body: KeepaliveIn | None = None):
    _require_restaurant(who, restaurant_id)
    sent_at = body.sent_at if body else None
    stamp = stamp_keepalive(_millis(sent_at) if sent_at else None, _millis(None),
                            res.settings.keepalive_max_skew_seconds)
    if stamp.restamped:
        KEEPALIVE_CLOCK_SKEW.labels("ahead" if (stamp.skew_seconds or 0) > 0 else "behind").inc()
        _LOG.warning("keep-alive of %s restamped: %s", restaurant_id, stamp.describe(),
                     extra={"restaurant_id": restaurant_id, "clock_skew_seconds": stamp.skew_seconds})
    record = keepalive_kafka_record(res.codec("keepalive"), restaurant_id, stamp.sent_at_ms)
    d = await produce_keepalive(res, record)
    return KeepaliveAccepted(topic=d.topic, partition=d.partition, offset=d.offset,
                             sent_at=datetime.fromtimestamp(stamp.sent_at_ms / 1000, timezone.utc),
                             clock_skew_seconds=stamp.skew_seconds)


# -- the keep-alive's fast path ----------------------------------------------------------------------------
# A keep-alive is the API's most frequent request (100,000 restaurants every 30 s are 3,333/s) and almost always
# the same: a known key, an empty body or ``{}``. Through FastAPI, routing, dependency solving, body parsing,
# response validation and Starlette's middleware layers cost about half of the request's CPU (benchmarks/README.md,
# issue 26). ``keepalive_fast_path`` answers exactly that case from ``ApiMiddleware`` with the same record, the
# same produce and the same answer; anything else (a body with sent_at, a key not in the cache
# or not allowed, an id the route would refuse) goes on to the route above, which answers it as always.
KEEPALIVE_ROUTE = "/restaurants/{restaurant_id}/keepalive"
_KEEPALIVE_PATH = re.compile(rf"/restaurants/({PATH_ID.strip('^$')})/keepalive")  # the route's id rule
_EMPTY_BODIES = (b"", b"{}")


def _cached_principal(res: Resources, headers: Headers) -> Principal | None:
    """The caller when its key (X-API-Key or a bearer token, as ``deps.principal`` reads them) is answered from
    the key cache; None sends the request the usual way."""
    key = headers.get("x-api-key")
    if key is None:
        scheme, key = get_authorization_scheme_param(headers.get("authorization"))
        if scheme.lower() != "bearer" or not key:
            return None
    found = res.keys.verify_cached(key)
    return found if isinstance(found, Principal) else None


async def keepalive_fast_path(scope, body: bytes, send) -> bool:
    """Answers ``POST /restaurants/{id}/keepalive`` without FastAPI when it is the common case (see above);
    False when the request is left to the route."""
    if scope["method"] != "POST" or body.strip() not in _EMPTY_BODIES:
        return False
    match = _KEEPALIVE_PATH.fullmatch(scope["path"])
    if match is None:
        return False
    headers = Headers(scope=scope)
    content_type = headers.get("content-type")
    if body and content_type is not None and content_type.split(";", 1)[0].strip().lower() != "application/json":
        return False  # the route's body parsing decides what other media types mean
    res: Resources = scope["app"].state.resources
    who = _cached_principal(res, headers)
    restaurant_id = match.group(1)
    if who is None or not who.can_act_for_restaurant(restaurant_id):
        return False
    now_ms = _millis(None)
    record = keepalive_kafka_record(res.codec("keepalive"), restaurant_id, now_ms)
    try:
        d = await produce_keepalive(res, record)
    except ApiError as exc:
        payload, media_type = error_body(scope["path"], exc.status_code, str(exc.detail))
        status = exc.status_code
    else:
        payload = KeepaliveAccepted.model_construct(  # serialised as the route's response_model does
            topic=d.topic, partition=d.partition, offset=d.offset,
            sent_at=datetime.fromtimestamp(now_ms / 1000, timezone.utc), clock_skew_seconds=None,
        ).model_dump_json().encode()
        media_type, status = JSON, 202
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
    return True


def _availability_event(restaurant_id: str, kind: str, **fields) -> dict:
    return AvailabilityChange.event(uuid.uuid4().hex, restaurant_id, kind, _millis(None), **fields)._asdict()


async def _send_availability(res: Resources, event: dict):
    value = res.codec("availability").encode(event)
    (d,) = await produce(res, res.settings.topics.availability, [(event["restaurant_id"].encode(), value)])
    return d


@router.put("/restaurants/{restaurant_id}/availability", status_code=202, response_model=EventAccepted,
            summary="Set a restaurant available or unavailable (with a reason)", responses=KAFKA_RESPONSES)
async def put_availability(body: AvailabilityIn, restaurant_id: Annotated[str, RestaurantId],
                           who: Caller, res: Res):
    _require_restaurant(who, restaurant_id)
    event = _availability_event(restaurant_id, "SET_STATUS", status=body.status, reason=body.reason)
    d = await _send_availability(res, event)
    return EventAccepted(event_id=event["event_id"], topic=d.topic, partition=d.partition, offset=d.offset)


@router.post("/restaurants/{restaurant_id}/unavailability", status_code=202, response_model=ScheduleAccepted,
             summary="Schedule an unavailability period", responses=KAFKA_RESPONSES)
async def post_unavailability(body: UnavailabilityIn, restaurant_id: Annotated[str, RestaurantId],
                              who: Caller, res: Res):
    _require_restaurant(who, restaurant_id)
    schedule_id = body.schedule_id or uuid.uuid4().hex
    event = _availability_event(restaurant_id, "SCHEDULE_CREATED", schedule_id=schedule_id, reason=body.reason,
                                starts_at=_millis(body.starts_at),
                                ends_at=_millis(body.ends_at) if body.ends_at else None)
    d = await _send_availability(res, event)
    return ScheduleAccepted(schedule_id=schedule_id, event_id=event["event_id"], topic=d.topic,
                            partition=d.partition, offset=d.offset)


@router.delete("/restaurants/{restaurant_id}/unavailability/{schedule_id}", status_code=202,
               response_model=ScheduleAccepted, summary="Cancel a scheduled unavailability",
               responses=KAFKA_RESPONSES)
async def delete_unavailability(restaurant_id: Annotated[str, RestaurantId],
                                schedule_id: Annotated[str, ScheduleId], who: Caller, res: Res):
    _require_restaurant(who, restaurant_id)
    event = _availability_event(restaurant_id, "SCHEDULE_CANCELLED", schedule_id=schedule_id)
    d = await _send_availability(res, event)
    return ScheduleAccepted(schedule_id=schedule_id, event_id=event["event_id"], topic=d.topic,
                            partition=d.partition, offset=d.offset)
