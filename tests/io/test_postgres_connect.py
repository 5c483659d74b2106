"""The pipelines' Postgres connections time out instead of hanging: a statement past its timeout, a server that
accepts the TCP connection and never answers."""
from __future__ import annotations

import socket
import time

import psycopg
import pytest

from orderflow.io.postgres import connect, is_data_error


def test_every_pipeline_connection_has_the_statement_timeout(pg_dsn):
    from orderflow.io.postgres_orders import OrdersWriter

    with connect(pg_dsn) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1min",)
    writer = OrdersWriter(pg_dsn)
    try:
        writer.write([])  # opens the writer's own connection
        assert writer._conn.execute("SHOW statement_timeout").fetchone() == ("1min",)  # noqa: SLF001
    finally:
        writer.close()


def test_a_statement_past_its_timeout_fails_instead_of_hanging(pg_dsn):
    with connect(pg_dsn, statement_timeout_ms=300) as conn:
        # Cancelled by the server for the statement timeout (its own message says so), not slept to the end:
        # no clock needed, however slow the machine.
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(60)")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_server_that_never_answers_fails_the_connect_within_its_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts TCP, never speaks the protocol
    try:
        # The server never answers: only the connect timeout ends the attempt (libpq says so), and not before it.
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout expired"):
            connect(f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/x", connect_timeout=3)
        assert time.monotonic() - started >= 3
    finally:
        silent.close()


def test_data_errors_are_told_from_outages(pg_dsn):
    with connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as nul:
            conn.execute("SELECT convert_from('\\x00'::bytea, 'UTF8')")
        assert is_data_error(nul.value)
        with pytest.raises(psycopg.Error) as cancelled:
            conn.execute("SET statement_timeout = 100; SELECT pg_sleep(5)")
        assert not is_data_error(cancelled.value)
    assert not is_data_error(ConnectionError("refused"))
