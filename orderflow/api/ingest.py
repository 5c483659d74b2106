"""Ingest endpoints: orders and restaurant events go to Kafka, answered 202 once committed.

Everything in a request is validated and encoded before the first record is produced, so invalid input
never leaves a half-written batch behind: the request is rejected whole with a 4xx naming the problem.
A valid request's records are then written in one Kafka transaction (``orderflow.api.kafka_sink``): 202
when it is committed, 503 when it is not (nothing of the batch is visible to the pipelines, which read
``read_committed``), 504 when the commit's outcome did not come back in time.

Orders without an id get ``api-<32 hex>-<index in the batch>``: random hex, or, with an
``Idempotency-Key``, a digest of the caller's key id and that key, so a retried batch carries the same
ids and the orders pipeline (idempotent on the order id) counts it once.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Path, Request
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from orderflow.api.auth import Principal
from orderflow.api.deps import Caller, Res, forbidden
from orderflow.api.kafka_sink import CommitUnconfirmed, DeliveryFailed
from orderflow.api.metrics import INGESTED_RECORDS
from orderflow.api.resources import Resources

router = APIRouter(tags=["ingest"])

RestaurantId = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$",
                    description="Restaurant id", examples=["rest-00042"])
ScheduleId = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
Reason = Literal["LACK_OF_DELIVERY_STAFF", "CONNECTION_ISSUES", "OVERLOADED_OFFLINE_ORDERS", "HOLIDAYS"]

class OrderIn(BaseModel):
    """Documentation of the JSON order model; the body itself is parsed by the orders pipeline's parser."""

    ativo: str = Field(description="asset, e.g. PETR4")
    quantidade: int
    token: str = Field(description="client token")
    order_id: str | None = None


class RestProxyEnvelope(BaseModel):
    records: list[dict] = Field(description='[{"value": {...order...}}, ...]')


ORDER_CONTENT_TYPES = {
    "application/json": {"schema": {"oneOf": [
        OrderIn.model_json_schema(),
        {"type": "array", "items": OrderIn.model_json_schema()},
    ]}, "example": {"ativo": "PETR4", "quantidade": 100, "token": "client-1"}},
    "application/vnd.kafka.json.v2+json": {"schema": RestProxyEnvelope.model_json_schema()},
    "text/csv": {"schema": {"type": "string"}, "example": "PETR4,100,client-1\nVALE3,5,client-2\n"},
    "application/avro": {"schema": {"type": "string", "format": "binary"}},
}


class Accepted(BaseModel):
    topic: str
    partition: int
    offset: int


class OrderAccepted(Accepted):
    order_id: str


class OrdersAccepted(BaseModel):
    accepted: int
    records: list[OrderAccepted]


class KeepaliveIn(BaseModel):
    sent_at: AwareDatetime | None = Field(None, description="when the restaurant sent it; default: now")


class AvailabilityIn(BaseModel):
    status: Literal["AVAILABLE", "UNAVAILABLE"]
    reason: Reason | None = None

    @model_validator(mode="after")
    def _reason_only_when_unavailable(self):
        if self.status == "AVAILABLE" and self.reason is not None:
            raise ValueError("a reason is given only with status UNAVAILABLE")
        return self


class UnavailabilityIn(BaseModel):
    reason: Reason
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = Field(None, description="open-ended when absent")
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
    503: {"description": "Kafka did not take the request: nothing of it was written (it is safe to retry)"},
    504: {"description": "Kafka did not confirm the commit in time: the request may or may not have been "
                         "written (retry with the same Idempotency-Key to count orders once)"},
}

IdempotencyKey = Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="Makes a retry safe. Orders without an id get ids derived from this key (with the calling "
                "API key) and their position in the batch: `api-<32 hex>-<index>`. A retry of a 503 or 504 "
                "with the same key and body carries the same ids, and the orders pipeline counts each order "
                "once. Without it the ids are random. Use a new key (a UUID, say) for every new batch.",
    examples=["0b6f3c1e-8d2a-4c55-9a57-3f1d2e4b7c90"],
)


async def _produce(res: Resources, topic: str, records: list[tuple[bytes | None, bytes]]):
    try:
        delivered = await res.kafka.produce(topic, records)
    except DeliveryFailed as exc:
        raise HTTPException(503, f"Kafka did not take the records, nothing of them was written: {exc}") from exc
    except CommitUnconfirmed as exc:
        raise HTTPException(504, f"Kafka did not confirm the commit in time, the records may have been written "
                                 f"(retry with the same Idempotency-Key): {exc}") from exc
    INGESTED_RECORDS.labels(topic=topic).inc(len(records))
    return delivered


def minted_id_prefix(who: Principal, idempotency_key: str | None) -> str:
    """``api-<32 hex>``, the prefix of the ids of a request's orders that come without one."""
    if idempotency_key is None:
        return f"api-{uuid.uuid4().hex}"
    return "api-" + hashlib.sha256(f"{who.key_id}\n{idempotency_key}".encode()).hexdigest()[:32]


def _encode_orders(res: Resources, payload: bytes, id_prefix: str) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
    from orderflow.transforms.normalize_orders import InvalidOrder, parse_orders

    try:
        orders = parse_orders(payload, minted_id_prefix=id_prefix, timestamp_ms=int(time.time() * 1000))
    except InvalidOrder as exc:
        reason = getattr(exc, "reason", "invalid_order")
        detail = getattr(exc, "detail", str(exc))
        raise HTTPException(422, f"invalid order ({reason}): {detail}; nothing was accepted") from exc
    if not orders:
        raise HTTPException(422, "the body holds no order")
    if len(orders) > res.config.max_orders_per_request:
        raise HTTPException(413, f"{len(orders)} orders in one request, at most "
                                 f"{res.config.max_orders_per_request}: split the batch")
    codec = res.codec("order")
    return orders, [(str(o["client_token"]).encode(), codec.encode(o)) for o in orders]


@router.post(
    "/orders", status_code=202, response_model=OrdersAccepted,
    summary="Ingest orders (JSON, REST-proxy envelope, CSV lines or Avro), all or nothing",
    openapi_extra={"requestBody": {"required": True, "content": ORDER_CONTENT_TYPES}},
    responses={413: {"description": "body or batch too large"}, 422: {"description": "an order is invalid"},
               **KAFKA_RESPONSES},
)
async def post_orders(request: Request, who: Caller, res: Res,
                      idempotency_key: Annotated[str | None, IdempotencyKey] = None):
    if not who.can_ingest():
        raise forbidden("this key has no 'ingest' scope")
    payload = await request.body()
    if not payload.strip():
        raise HTTPException(422, "empty body: send one or more orders")
    orders, records = await run_in_threadpool(_encode_orders, res, payload, minted_id_prefix(who, idempotency_key))
    delivered = await _produce(res, res.settings.topics.orders, records)
    return OrdersAccepted(accepted=len(orders), records=[
        OrderAccepted(order_id=o["order_id"], topic=d.topic, partition=d.partition, offset=d.offset)
        for o, d in zip(orders, delivered, strict=True)
    ])


def _require_restaurant(who: Principal, restaurant_id: str) -> None:
    if not who.can_act_for_restaurant(restaurant_id):
        raise forbidden(f"this key may not act for restaurant {restaurant_id!r} "
                        "(needs 'ingest' or 'restaurant:<id>')")


@router.post("/restaurants/{restaurant_id}/keepalive", status_code=202, response_model=Accepted,
             summary="A restaurant's keep-alive ping", responses=KAFKA_RESPONSES)
async def post_keepalive(restaurant_id: Annotated[str, RestaurantId], who: Caller, res: Res,
                         body: KeepaliveIn | None = None):
    _require_restaurant(who, restaurant_id)
    value = res.codec("restaurant_keepalive").encode(
        {"restaurant_id": restaurant_id, "sent_at": _millis(body.sent_at if body else None)})
    (d,) = await _produce(res, res.settings.topics.keepalive, [(restaurant_id.encode(), value)])
    return Accepted(topic=d.topic, partition=d.partition, offset=d.offset)


def _availability_event(restaurant_id: str, kind: str, **fields) -> dict:
    event = {"event_id": uuid.uuid4().hex, "restaurant_id": restaurant_id, "kind": kind, "status": None,
             "schedule_id": None, "reason": None, "starts_at": None, "ends_at": None,
             "occurred_at": _millis(None)}
    event.update(fields)
    return event


async def _send_availability(res: Resources, event: dict):
    value = res.codec("restaurant_availability").encode(event)
    (d,) = await _produce(res, res.settings.topics.availability, [(event["restaurant_id"].encode(), value)])
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
