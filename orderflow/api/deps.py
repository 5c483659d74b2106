"""FastAPI dependencies: the shared Resources and the calling Principal (401 without a valid key)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from orderflow.api.auth import Principal
from orderflow.api.resources import Resources

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An API key (`python -m orderflow.api keys create --scope ...`)")
bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


async def resources(request: Request) -> Resources:  # async: no thread hop for a lookup
    return request.app.state.resources


async def principal(
    request: Request,
    header_key: Annotated[str | None, Depends(api_key_header)],
    bearer_key: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    key = header_key or (bearer_key.credentials if bearer_key else None)
    if not key:
        raise HTTPException(401, "missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    keys = request.app.state.resources.keys
    found = keys.verify_cached(key)
    if found is False:  # not cached (or expired): ask the database, off the event loop
        found = await run_in_threadpool(keys.verify, key)
    if found is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return found


def forbidden(message: str) -> HTTPException:
    return HTTPException(403, message)


Caller = Annotated[Principal, Depends(principal)]
Res = Annotated[Resources, Depends(resources)]
