"""Logs of orderflow's processes (the API, the pipelines): one JSON object per line on stderr, secrets redacted.

Every line has ``time``, ``level``, ``logger``, ``message`` and ``process_name`` (``api``, ``orders``,
``presence``); lines about records add what an operator filters on: ``pipeline``, ``stage``, ``reason``,
``topic``, ``partition``, ``offset`` (passed as ``extra=``); the API's access lines add ``method``, ``path``
(secret query parameters redacted) and ``status``. Fields: docs/observability.md.

``ORDERFLOW_LOG_FORMAT=text`` gives the former plain lines instead. Whatever the format, ``RedactSecrets``
replaces API keys and dashboard tokens (``of_<id>_<secret>``, ``odt_<id>_<expiry>_<mac>``: the id is kept),
secret-looking query parameters and passwords in connection URLs before a line is written.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

from orderflow.config import LOG_FORMAT_VARIABLE

_FIELDS = "{asctime}{levelname}{name}{message}"
_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (text every match contains, pattern, replacement): the pattern runs only on text that contains the
# former, a substring test far cheaper than a regex scan (every access line's path goes through here).
_SECRETS = [
    ("of_", re.compile(r"\b(of_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), r"\1[redacted]"),                 # API keys
    ("odt_", re.compile(r"\b(odt_[0-9a-f]{12}_[0-9]{1,12}_)[A-Za-z0-9_-]+"), r"\1[redacted]"),  # dashboard tokens
    ("=", re.compile(r"(?i)([?&#](?:key|api_key|apikey|token|access_token)=)[^&\s\"']*"), r"\1[redacted]"),
    ("://", re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@"), r"\1[redacted]@"),  # user:password@host
]


def redact(text: str) -> str:
    """``text`` with API keys, dashboard tokens, secret query parameters and URL passwords replaced."""
    for marker, pattern, replacement in _SECRETS:
        if marker in text:
            text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Redacts secrets in a record's message and arguments (``redact``) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        for field in ("path", "detail"):
            value = getattr(record, field, None)
            if isinstance(value, str):
                setattr(record, field, redact(value))
        return True


class AccessFields(logging.Filter):
    """uvicorn's access lines (``client, method, path, http version, status`` as arguments) as fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            _, record.method, record.path, _, record.status = record.args
        return True


def json_enabled(environ=None) -> bool:
    return (environ or os.environ).get(LOG_FORMAT_VARIABLE, "json").strip().lower() != "text"


def formatter(process_name: str) -> logging.Formatter:
    """The JSON formatter (or the plain one when ``ORDERFLOW_LOG_FORMAT=text``) of ``process_name``."""
    if not json_enabled():
        return logging.Formatter(_TEXT)
    from pythonjsonlogger.json import JsonFormatter

    json_formatter = JsonFormatter(_FIELDS, style="{", rename_fields=_RENAMED,
                                   static_fields={"process_name": process_name}, json_ensure_ascii=False)
    json_formatter.converter = time.gmtime  # ISO 8601 UTC with milliseconds: 2026-12-01T14:55:47.890Z
    json_formatter.default_time_format, json_formatter.default_msec_format = "%Y-%m-%dT%H:%M:%S", "%s.%03dZ"
    return json_formatter


def configure(process_name: str, level: int = logging.INFO) -> None:
    """Root logging of a process: one stderr handler, JSON lines, secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(process_name))
    handler.addFilter(RedactSecrets())
    handler.addFilter(AccessFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def uvicorn_log_config(process_name: str = "api") -> dict:
    """``uvicorn.run(log_config=...)``: uvicorn's and the app's loggers through ``configure``'s handler."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}, "access": {"()": AccessFields}},
        "formatters": {"default": {"()": formatter, "process_name": process_name}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "filters": ["redact", "access"], "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
                    "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False}},
        "root": {"handlers": ["default"], "level": "INFO"},
    }
