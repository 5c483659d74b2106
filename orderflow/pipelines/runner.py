"""The one way orderflow's pipelines run: parse the options, stream unless ``--bounded``, build, run."""
from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from orderflow.config import Settings


def add_bounded_flag(parser) -> None:
    """Adds ``--bounded``, shared by every pipeline's options.

    All PipelineOptions subclasses share one argparse parser, so a flag that two pipelines' options both
    define must be added only once.
    """
    if "--bounded" not in parser._option_string_actions:  # noqa: SLF001 - argparse has no public lookup
        parser.add_argument("--bounded", action="store_true", default=False,
                            help="read every partition to its end, then finish (batch); default: stream")


def run_pipeline(build: Callable[[beam.Pipeline, PipelineOptions, Settings | None], None],
                 argv: list[str] | None, settings: Settings | None,
                 bounded_option_view: type[PipelineOptions]):
    """Builds and runs a pipeline; bounded runs wait until finished. Returns the PipelineResult.

    ``bounded_option_view`` is the pipeline's ``PipelineOptions`` subclass that defines ``--bounded``.
    """
    options = PipelineOptions(argv)
    bounded = options.view_as(bounded_option_view).bounded
    if not bounded:
        options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options, settings)
    result = pipeline.run()
    if bounded:
        result.wait_until_finish()
    return result
