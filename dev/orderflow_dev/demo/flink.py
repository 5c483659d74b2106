"""``make demo`` Flink submission step: the dry run of both pipelines' submissions, as a table."""
from __future__ import annotations

from orderflow import flink_submit
from orderflow.pipelines import PIPELINES


def demo(settings) -> None:
    """``make demo`` step: the dry run of each pipeline's Flink submission, as a table (no cluster needed)."""
    rows = [("pipeline", "submission", "checkpoints", "SDK workers", "graph", "Flink-readable")]
    for name in PIPELINES:
        argv = [name, "--flink_master", f"orderflow-{name}-rest:8081", "--parallelism", str(settings.topic_partitions)]
        described = flink_submit.describe(flink_submit.resolve(argv))
        flink, env, graph = described["flink"], described["environment"], described["graph"]
        rows.append((
            name,
            f"{described['runner']} streaming, Flink {flink['flink_version']}, parallelism {flink['parallelism']}"
            f" (max {flink['max_parallelism']})",
            f"{flink['checkpointing_mode']} every {flink['checkpointing_interval'] // 1000} s",
            f"{env['environment_type']} {env['environment_config']}",
            f"{graph['leaf_transforms']} leaf transforms, needs "
            + ", ".join(r.split(":")[-2] for r in graph["requirements"]),
            "yes" if not graph["problems"] else "NO: " + "; ".join(graph["problems"]),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("./run_flink.sh orders --flink_master HOST:PORT submits it; docs/deploy.md covers the Kubernetes deployment")
