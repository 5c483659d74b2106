"""Reads of the presence pipeline's Postgres tables, without Beam: what the HTTP API and the demos ask.

``offline_ranking`` is the one ranking query: the HTTP API (``GET /reports/offline-ranking``, the dashboard)
and ``python -m orderflow_dev.demo presence`` both use it.
"""
from __future__ import annotations

import datetime as dt

__all__ = ["offline_ranking"]

RANKING_SQL = """
SELECT restaurant_id, sum(unexplained_offline_seconds)::bigint AS seconds
FROM restaurant_offline_daily
WHERE day >= %(day_from)s AND day <= %(day_to)s
GROUP BY restaurant_id
ORDER BY seconds DESC, restaurant_id
LIMIT %(limit)s
"""


def offline_ranking(conn, day_from: dt.date, day_to: dt.date, limit: int = 10) -> list[tuple[str, int]]:
    """``[(restaurant_id, unexplained offline seconds)]`` over ``[day_from, day_to]``, most offline first.

    The one ranking query (the HTTP API's too): every restaurant evaluated in the range is ranked,
    restaurants with no unexplained offline time included (last, with 0)."""
    return conn.execute(RANKING_SQL, {"day_from": day_from, "day_to": day_to, "limit": limit}).fetchall()
