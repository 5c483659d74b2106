"""Failures are named for what they are: 503 only when a dependency is unreachable, 500 for a bug, 422 for a
value no order id can hold; and an error never costs the client its keep-alive connection."""
from __future__ import annotations

import dataclasses
import json
import socket

import port_for
import psycopg
import pytest

from tests.support.served_api import ServedApi


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict, bytes]:
    """Sends one request on an open connection and reads exactly one response (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a response"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _get(path: str, key: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\n\r\n".encode()


def test_a_nul_in_an_order_id_is_invalid_input_not_an_outage(reader):
    resp = reader.get("/orders/%00")
    assert resp.status_code == 422, resp.text
    assert "order_id" in resp.json()["detail"]


@pytest.fixture
def broken_orders_table(api_settings):
    """A programming error on the real database: the orders table is gone (this module's own database)."""
    with psycopg.connect(api_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders RENAME TO orders_moved")
    yield
    with psycopg.connect(api_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders_moved RENAME TO orders")


def test_a_bug_is_a_500_and_the_keep_alive_connection_survives_it(api, broken_orders_table):
    key = api.key("read")
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as sock:
        status, headers, body = _exchange(sock, _get("/orders/o-1", key))
        assert status == 500, body
        assert "postgres unavailable" not in body.decode()
        assert json.loads(body)["detail"].startswith("internal error (UndefinedTable)")
        assert headers.get("connection") != "close"
        # The same connection answers the next request.
        status, _, body = _exchange(sock, _get("/alarms", key))
        assert status == 200, body


def test_an_unreachable_database_is_a_503_naming_it(api_settings, api_config):
    dead = dataclasses.replace(api_settings, postgres_dsn=f"postgresql://orderflow@127.0.0.1:{port_for.select_random()}/x")
    served = ServedApi(dead, dataclasses.replace(api_config)).start()
    try:
        with served.client("of_000000000000_" + "A" * 43) as client:
            resp = client.get("/orders/o-1")
        assert resp.status_code == 503, resp.text
        assert resp.json()["detail"].startswith("postgres unavailable")
    finally:
        served.stop()
