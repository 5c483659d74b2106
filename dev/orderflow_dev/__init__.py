"""orderflow's developer tools: the local stack (``orderflow_dev.local``), the generators and feed
(``orderflow_dev.generate``) and ``make demo`` (``orderflow_dev.demo``).

A distribution of its own (``dev/setup.py``, installed editable by ``make setup``), so that the package every
Flink worker installs (``orderflow``, the repository's ``setup.py``) carries none of it. It may import orderflow;
orderflow never imports it (tests/test_layering.py).
"""
from __future__ import annotations

import os
import pathlib

from orderflow.config import PRISM_LOCATION_VARIABLE

# The checkout this package is installed from (editable): where `make` puts what the tools run.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where `make prism` builds Beam's Prism runner. The runtime package has no default of its own
# (orderflow.config.PRISM_LOCATION_VARIABLE); the developer's tools and the tests pass this one.
PRISM_BINARY = REPO_ROOT / ".local" / "bin" / "prism"



def developer_environment() -> dict[str, str]:
    """This process' environment, with the repository's Prism as the pipelines' default runner binary unless
    ``ORDERFLOW_PRISM_LOCATION`` is set: what the tools start pipelines with."""
    environ = dict(os.environ)
    if not environ.get(PRISM_LOCATION_VARIABLE):  # unset or empty: the runtime package's "no default"
        environ[PRISM_LOCATION_VARIABLE] = str(PRISM_BINARY)
    return environ


__all__ = ["PRISM_BINARY", "REPO_ROOT", "developer_environment"]
