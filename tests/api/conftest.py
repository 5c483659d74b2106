"""The API served for real (``tests.support.served_api``: uvicorn on a free loopback port, in a thread, configured
as ``python -m orderflow.api serve`` configures it) over the module's isolated stack."""
from __future__ import annotations

import dataclasses

import httpx
import pytest
import redis

from orderflow.config import ApiConfig
from tests.support.served_api import API_REDIS_DB, ServedApi


@pytest.fixture(scope="module")
def api_config() -> ApiConfig:
    # Small limits so the limit paths are cheap to exercise; no key cache so revocation is immediate; every
    # test of a module calls from 127.0.0.1, so the failed-authentication limit is out of the way (its own test
    # serves the API with a small one).
    return ApiConfig(max_body_bytes=64 * 1024, max_orders_per_request=500, max_ids=1000,
                     dashboard_refresh_seconds=0.3, key_cache_seconds=0.0, auth_failures_per_minute=100_000)


@pytest.fixture(scope="module")
def api_settings(module_settings):
    redis_url = module_settings.redis_url.rsplit("/", 1)[0] + f"/{API_REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    return dataclasses.replace(module_settings, redis_url=redis_url)


@pytest.fixture(scope="module")
def api(api_settings, api_config):
    served = ServedApi(api_settings, api_config).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def reader(api) -> httpx.Client:
    with api.client(api.key("read")) as client:
        yield client


@pytest.fixture(scope="module")
def ingester(api) -> httpx.Client:
    with api.client(api.key("ingest")) as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(api) -> httpx.Client:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def state_store(api_settings):
    """The presence pipeline's writer of the Redis hot state, to put restaurants in known states."""
    from orderflow.io.restaurant_state import RestaurantStateStore

    store = RestaurantStateStore(api_settings.redis_url)
    yield store
    store.close()
