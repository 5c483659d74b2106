"""orderflow's pipelines, and the one registry of them (``PIPELINES``).

Every tool that runs a pipeline by name looks it up here: ``run_flink.sh`` (``orderflow.flink_submit``),
``python -m orderflow.portability``, ``python -m orderflow.replay run`` and the detached processes of the
local stack (``orderflow_dev.local.processes``). A pipeline module defines ``build(pipeline, options[, settings])``,
``run(argv)`` and its ``PipelineOptions`` subclass; an entry names them as strings, so reading the registry
imports neither Beam nor the pipeline.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

__all__ = ["PIPELINES", "PipelineEntry"]


@dataclasses.dataclass(frozen=True)
class PipelineEntry:
    """One runnable pipeline.

    Args:
        module: the module defining ``build``, ``run`` and ``options_class``; ``python -m <module>`` runs it.
        options_class: the name of the module's own ``PipelineOptions`` subclass.
        run_mode: whether the pipeline honours ``orderflow.pipelines.runner.RunModeOptions`` (``--bounded``).
        start_option: the option that sets where its Kafka read starts (``orderflow.replay run --from``).
        group_option: the option that sets its consumer group (``orderflow.replay run --group``).
    """

    module: str
    options_class: str
    run_mode: bool = True
    start_option: str | None = None
    group_option: str | None = None

    def load(self) -> ModuleType:
        """Imports the pipeline module (and with it registers its options with Beam's parser)."""
        return importlib.import_module(self.module)

    @property
    def build(self):
        """``build(pipeline, options[, settings])``: wires the pipeline's transforms onto ``pipeline``."""
        return self.load().build

    @property
    def run(self):
        """``run(argv)``: parses ``argv``, builds and runs the pipeline (what ``python -m <module>`` does)."""
        return self.load().run

    def options(self) -> type:
        """The pipeline's ``PipelineOptions`` subclass."""
        return getattr(self.load(), self.options_class)


PIPELINES: dict[str, PipelineEntry] = {
    "orders": PipelineEntry("orderflow.pipelines.orders", "OrdersOptions",
                            start_option="--orders_start", group_option="--orders_group_id"),
    "presence": PipelineEntry("orderflow.pipelines.presence", "PresenceOptions",
                              start_option="--presence_start", group_option="--presence_group_id"),
}
