"""The API served for real: uvicorn on a free loopback port, in a thread, configured as ``python -m orderflow.api
serve`` configures it (``tests/api/conftest.py`` serves one per module with it; tests that need other settings
serve their own)."""
from __future__ import annotations

import threading
import time

import httpx
import port_for
import uvicorn

from orderflow.api.app import create_app
from orderflow.api.auth import create_key
from orderflow.api.server import uvicorn_config
from orderflow.config import ApiConfig

API_REDIS_DB = 7  # the session's Redis is shared by all modules: the API tests use a database of their own


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


def restaurant_status(client, restaurant_id: str) -> dict:
    """One restaurant's entry of ``GET /restaurants/status`` (asserting the answer is 200)."""
    answer = client.get("/restaurants/status", params={"ids": restaurant_id})
    assert answer.status_code == 200, answer.text
    return answer.json()["restaurants"][restaurant_id]
