"""``make demo`` presence step: generated restaurants through the bounded presence pipeline, the top of
the offline ranking beside the planned values, the Redis hot state."""
from __future__ import annotations

import datetime as dt
import time

import psycopg

from orderflow.clients import schema_registry
from orderflow.config import Settings, load_settings
from orderflow.io.presence_queries import offline_ranking
from orderflow.io.restaurant_state import RestaurantStateStore
from orderflow.pipelines import presence
from orderflow_dev.generate.keepalive import default_end, make_plan, produce


def demo(settings: Settings | None = None, restaurants: int = 1000, minutes: int = 90,
         end: dt.datetime | None = None) -> bool:
    """``make demo`` step: generates ``restaurants`` pinging for ``minutes`` up to ``end`` (default: now, or the
    last 22:30 local outside opening hours), with planned outages, runs the bounded pipeline over them and
    prints the top of the offline ranking beside the planned values. True when that top is the planned one."""
    settings = settings or load_settings()
    end = end or default_end()
    plan = make_plan(restaurants, end - dt.timedelta(minutes=minutes), minutes)
    began = time.perf_counter()
    counts = produce(plan, settings.kafka_bootstrap, settings.topics.keepalive, settings.topics.availability,
                     progress=False, registry=schema_registry(settings))
    start_iso = dt.datetime.fromtimestamp(plan.start_ms / 1000, dt.timezone.utc).isoformat()
    end_iso = dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc).isoformat()
    print(f"generated {counts['keepalives']:,} keep-alives and {counts['changes']:,} availability changes of "
          f"{restaurants:,} restaurants, {start_iso} -> {end_iso}")
    # The demo's own consumer group: a second demo reads only what it generated itself.
    presence.run(["--bounded", f"--track_from={start_iso}", f"--as_of={end_iso}", "--presence_start=committed",
                  "--presence_group_id=orderflow-presence-demo"], settings=settings)
    print(f"bounded presence pipeline done in {time.perf_counter() - began:.1f}s (generation included)")
    expected = plan.expected()
    days = sorted({day for _, day in expected})
    first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    planned = {}
    for (rid, _), seconds in expected.items():
        planned[rid] = planned.get(rid, 0) + seconds
    with psycopg.connect(settings.postgres_dsn) as conn:
        ranking = offline_ranking(conn, first, last, limit=10)
    print(f"top of the offline ranking ({first} .. {last}, unexplained offline time inside opening hours):")
    print(f"  {'#':>2}  {'restaurant':<12} {'minutes':>8}  {'planned':>8}")
    for n, (rid, seconds) in enumerate(ranking, start=1):
        print(f"  {n:>2}  {rid:<12} {seconds / 60:8.1f}  {planned.get(rid, 0) / 60:8.1f}")
    # The planned top, ordered as the ranking query orders (most offline first, then by id); never true
    # on an empty ranking.
    ok = bool(ranking) and ranking == sorted(planned.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    store = RestaurantStateStore.from_settings(settings)  # the rules and key prefix the pipeline used
    now = store.statuses([r.restaurant_id for r in plan.restaurants],
                         now=dt.datetime.fromtimestamp(plan.end_ms / 1000, dt.timezone.utc))
    online = sum(v["status"] == "online" for v in now.values())
    print(f"at {end_iso}: {online} online, {len(now) - online} offline (Redis hot state, one round trip); "
          f"ranking matches the plan: {ok}")
    return ok
