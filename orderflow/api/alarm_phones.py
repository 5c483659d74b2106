"""The phones that receive alarm SMS (table ``alarm_phones``): the operations, their endpoints (scope
``admin``) and what ``python -m orderflow.api phones ...`` calls.

A phone is an E.164 number (``+5511987654321``). With a client token it gets the alarms about that
client's volume only; without one, every alarm. An inactive phone is kept but sent nothing (the SMS relay
of the orders pipeline joins on ``active``).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from orderflow.api.contract import TOKEN
from orderflow.api.deps import Caller, Res, forbidden
from orderflow.api.errors import AUTHENTICATED, responses

__all__ = ["PHONE", "delete_phone", "list_phones", "put_phone"]

PHONE = r"^\+[1-9][0-9]{7,14}$"
PhonePath = Path(pattern=PHONE, description="E.164 number, e.g. +5511987654321", examples=["+5511987654321"])


class PhoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_token: str | None = Field(None, pattern=f"^{TOKEN}$",
                                     description="only this client's alarms; every alarm when absent")
    active: StrictBool = Field(True, description="an inactive phone is kept but sent nothing")


class PhoneOut(BaseModel):
    phone: str
    client_token: str | None
    active: bool


class PhonesOut(BaseModel):
    phones: list[PhoneOut]


def list_phones(conn) -> list[PhoneOut]:
    rows = conn.execute("SELECT phone, client_token, active FROM alarm_phones ORDER BY phone").fetchall()
    return [PhoneOut(phone=r[0], client_token=r[1], active=r[2]) for r in rows]


def put_phone(conn, phone: str, client_token: str | None, active: bool) -> tuple[PhoneOut, bool]:
    """Registers or updates a phone; returns it and whether it is new."""
    inserted = conn.execute(
        "INSERT INTO alarm_phones (phone, client_token, active) VALUES (%s, %s, %s)"
        " ON CONFLICT (phone) DO UPDATE SET client_token = EXCLUDED.client_token, active = EXCLUDED.active"
        " RETURNING (xmax = 0)", (phone, client_token, active)).fetchone()[0]
    return PhoneOut(phone=phone, client_token=client_token, active=active), inserted


def delete_phone(conn, phone: str) -> bool:
    return conn.execute("DELETE FROM alarm_phones WHERE phone = %s", (phone,)).rowcount == 1


router = APIRouter(tags=["alarm phones"], responses=responses(*AUTHENTICATED, 422))


def _require_admin(who) -> None:
    if not who.can_admin():
        raise forbidden("this key has no 'admin' scope")


@router.get("/alarm-phones", response_model=PhonesOut, summary="Phones that receive alarm SMS")
def get_phones(who: Caller, res: Res):
    _require_admin(who)
    with res.pg.connection() as conn:
        return PhonesOut(phones=list_phones(conn))


@router.put("/alarm-phones/{phone}", response_model=PhoneOut, status_code=200,
            responses={201: {"model": PhoneOut, "description": "registered"}, **responses(408, 413)},
            summary="Register a phone (201) or update it (200)")
async def put_alarm_phone(phone: Annotated[str, PhonePath], body: PhoneIn, who: Caller, res: Res):
    _require_admin(who)

    def put():
        with res.pg.connection() as conn:
            return put_phone(conn, phone, body.client_token, body.active)

    stored, created = await run_in_threadpool(put)
    return JSONResponse(stored.model_dump(), status_code=201 if created else 200)


@router.delete("/alarm-phones/{phone}", status_code=204, responses=responses(404),
               summary="Stop sending alarms to a phone (removes it)")
def delete_alarm_phone(phone: Annotated[str, PhonePath], who: Caller, res: Res):
    _require_admin(who)
    with res.pg.connection() as conn:
        if not delete_phone(conn, phone):
            raise HTTPException(404, f"phone {phone} is not registered")
