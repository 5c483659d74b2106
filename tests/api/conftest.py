"""The API served for real (uvicorn on a free loopback port, in a thread, configured as ``python -m orderflow.api
serve`` configures it) over the module's isolated stack."""
from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import port_for
import pytest
import redis
import uvicorn

from orderflow.api.app import create_app
from orderflow.api.auth import create_key
from orderflow.api.server import uvicorn_config
from orderflow.config import ApiConfig


class ServedApi:
    def __init__(self, settings, config: ApiConfig, log_level: str = "warning"):
        self.settings = settings
        self.config = config
        self.port = port_for.select_random()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, config)
        self.server = uvicorn.Server(uvicorn_config(self.app, config, port=self.port, log_level=log_level,
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServedApi:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("API did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def key(self, *scopes: str) -> str:
        return create_key(self.settings.postgres_dsn, list(scopes), name="test")[1]

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def api_config() -> ApiConfig:
    # Small limits so the limit paths are cheap to exercise; no key cache so revocation is immediate; every
    # test of a module calls from 127.0.0.1, so the failed-authentication limit is out of the way (its own test
    # serves the API with a small one).
    return ApiConfig(max_body_bytes=64 * 1024, max_orders_per_request=500, max_ids=1000,
                     dashboard_refresh_seconds=0.3, key_cache_seconds=0.0, auth_failures_per_minute=100_000)


API_REDIS_DB = 7  # the session's Redis is shared by all modules: the API tests use a database of their own


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
