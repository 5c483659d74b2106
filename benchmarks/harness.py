"""What the side-by-side benchmarks share: each side runs in its own child process (fresh interpreter,
its own peak memory), gets its settings through the environment and prints one JSON line last; the orders
benchmarks start from the same filled orders topic (``fill_orders_topic``)."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator

from orderflow.config import Settings, load_settings, settings_environment


def fill_orders_topic(stack, records: int, day: datetime.date) -> tuple[Settings, dict[str, int], float]:
    """The settings of ``stack`` with an orders topic of their own, ``day``'s sample reference data loaded and
    ``records`` generated records (seed 2026) produced into the topic; returns (settings, counts by kind,
    seconds it took to produce)."""
    from orderflow import bootstrap, refdata
    from orderflow.clients import avro_codec
    from orderflow.model import sample_assets
    from orderflow_dev.generate.orders import generate, produce

    base = load_settings(stack.environment())
    base = dataclasses.replace(base, topics=dataclasses.replace(base.topics, orders=f"orders-{uuid.uuid4().hex[:6]}"))
    bootstrap.create_topics(base.kafka_bootstrap, [base.topics.orders], base.topic_partitions)
    bootstrap.create_dynamodb_tables(base)
    refdata.load_reference_data(base, day, sample_assets.sample_prices(day))
    started = time.perf_counter()
    counts = produce(base.kafka_bootstrap, base.topics.orders,
                     generate(records, seed=2026, day=day, timezone=base.exchange_timezone,
                              avro=avro_codec(base, "orders")),
                     total=records, progress=sys.stderr.isatty())
    return base, counts, time.perf_counter() - started


def run_side(script: str, role: str, settings: Settings, args: list[str], python: str | None = None) -> dict | None:
    """Runs ``script --role ROLE ARGS`` with ``settings`` (under ``python``, default this interpreter);
    returns its last stdout line as JSON, or None after printing the child's output when it failed."""
    proc = subprocess.run([python or sys.executable, script, "--role", role, *args],
                          env={**os.environ, **settings_environment(settings)}, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its waited-for children), from /proc (FileNotFoundError once gone)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def cpu_of(pids) -> dict[int, float]:
    """``cpu_seconds`` of each of ``pids`` still running (those gone are left out)."""
    usage = {}
    for pid in pids:
        try:
            usage[pid] = cpu_seconds(pid)
        except FileNotFoundError:
            pass
    return usage


def rss_mb(pid: int, peak: bool = False) -> float:
    """Resident memory of a process, from /proc (0 when the kernel reports none); ``peak``: its high-water mark
    (VmHWM) so far instead. VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over exec from the parent."""
    field = "VmHWM:" if peak else "VmRSS:"
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def priced_stack(prefix: str, root: pathlib.Path, days_back: Iterable[int] = (0,)
                 ) -> Iterator[tuple[Settings, str, pathlib.Path]]:
    """A throw-away local stack (free ports) under ``root / ".local"`` with the DynamoDB tables and the sample
    reference data of today less each of ``days_back`` loaded; yields (its settings, the Postgres admin DSN for
    databases of one's own, a scratch directory), prints the load average before and after."""
    from orderflow import bootstrap, refdata
    from orderflow.model import pricing, sample_assets
    from orderflow_dev.local import temporary_stack

    began = time.time()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)
    with temporary_stack(prefix, root / ".local", timeout=120) as stack, \
            tempfile.TemporaryDirectory(prefix=prefix, dir=root / ".local") as workdir:
        base = load_settings(stack.environment())
        bootstrap.create_dynamodb_tables(base)
        today = pricing.today(base)
        for back in days_back:
            day = today - datetime.timedelta(days=back)
            refdata.load_reference_data(base, day, sample_assets.sample_prices(day))
        yield base, base.postgres_dsn.rsplit("/", 1)[0] + "/postgres", pathlib.Path(workdir)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; total {time.time() - began:.0f} s")


def process_tree(root: int) -> dict[int, str]:
    """``{pid: command name}`` of ``root`` and its descendants."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split(" (", 1)[1].rsplit(")", 1)
        parents[int(stat.parent.name)] = int(rest.split()[1])
        names[int(stat.parent.name)] = name
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return {pid: names.get(pid, "?") for pid in tree}
