"""The pipelines' Postgres connections, and which Postgres errors are about the data rather than the database.

Every connection a pipeline opens has a connect timeout, a statement timeout and TCP keepalives: a
database that hangs or becomes unreachable fails the bundle (which the runner retries) within about a
minute instead of holding the pipeline forever.
"""
from __future__ import annotations

from typing import Any

__all__ = ["POSTGRES_REJECTED", "connect", "error_message", "is_data_error"]

CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 60_000
# An unanswered connection is declared dead after KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL s.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}

# SQLSTATE classes that mean "this data cannot be stored", whatever the state of the database: 22 data
# exception (NUL in text, a value out of range), 23 integrity constraint violation (CHECK, NOT NULL),
# 54 program limit exceeded (e.g. an index row larger than a B-tree page allows).
_DATA_ERROR_CLASSES = ("22", "23", "54")
# The dead-letter reason of a record Postgres refused because of its data (orders and presence sinks).
POSTGRES_REJECTED = "postgres_rejected"


def connect(dsn: str, *, autocommit: bool = False, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
            connect_timeout: int = CONNECT_TIMEOUT_SECONDS):
    """A psycopg connection to ``dsn`` with the pipelines' timeouts (values the DSN gives win, except that
    its ``options`` are kept and the statement timeout is appended)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    options = " ".join(filter(None, [str(given.get("options") or ""),
                                     f"-c statement_timeout={int(statement_timeout_ms)}"]))
    settings: dict[str, Any] = {"connect_timeout": connect_timeout, **_KEEPALIVE}
    settings.update({k: v for k, v in given.items() if k in settings})
    return psycopg.connect(dsn, autocommit=autocommit, options=options, **settings)


def is_data_error(exc: BaseException) -> bool:
    """True when Postgres (or psycopg, before sending) refused the statement because of the values in it."""
    import psycopg

    if isinstance(exc, psycopg.DataError):  # also psycopg's own "text cannot contain NUL" check
        return True
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _DATA_ERROR_CLASSES


def error_message(exc: BaseException) -> str:
    """The database's own words for a refusal: SQLSTATE, error class, message (and detail, if any)."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        text = diag.message_primary or str(exc)
        if diag.message_detail:
            text += f" ({diag.message_detail})"
        return f"{exc.sqlstate or 'client'} {type(exc).__name__}: {text}"
    return f"{type(exc).__name__}: {exc}"
