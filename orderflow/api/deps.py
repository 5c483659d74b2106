"""FastAPI dependencies: the shared Resources and the calling Principal (401 without a valid key, 429 for
an address with too many failed authentications)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from orderflow.api.auth import Principal
from orderflow.api.errors import ApiError
from orderflow.api.resources import Resources

__all__ = ["Caller", "Res", "api_key_header", "authenticate", "forbidden"]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An API key (`python -m orderflow.api keys create --scope ...`)")
bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


async def resources(request: Request) -> Resources:  # async: no thread hop for a lookup
    return request.app.state.resources


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def authenticate(request: Request, key: str, verify, verify_cached=None) -> Principal:
    """Checks a presented credential with ``verify`` (run off the event loop unless ``verify_cached``
    answers from memory); failures are counted per client address, and an address over its limit gets
    429 instead of a database lookup."""
    state = request.app.state
    found = verify_cached(key) if verify_cached else False
    if found is False:  # not cached (or expired): ask the database, unless this address is throttled
        wait = state.auth_failures.retry_after(client_address(request))
        if wait:
            raise ApiError(429, f"too many failed authentications from this address: retry in {wait}s",
                           headers={"Retry-After": str(wait)})
        found = await run_in_threadpool(verify, key)
    if found is None:
        state.auth_failures.record_failure(client_address(request))
        raise ApiError(401, "invalid or revoked API key", headers=UNAUTHORIZED_HEADERS)
    return found


async def principal(
    request: Request,
    header_key: Annotated[str | None, Depends(api_key_header)],
    bearer_key: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    key = header_key or (bearer_key.credentials if bearer_key else None)
    if not key:
        raise ApiError(401, "missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'",
                       headers=UNAUTHORIZED_HEADERS)
    keys = request.app.state.resources.keys
    return await authenticate(request, key, keys.verify, keys.verify_cached)


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


Caller = Annotated[Principal, Depends(principal)]
Res = Annotated[Resources, Depends(resources)]
