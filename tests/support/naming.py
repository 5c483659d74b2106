"""Names of the resources a test creates (topics, tables, keys) that no other test or run can share."""
from __future__ import annotations

import uuid


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
