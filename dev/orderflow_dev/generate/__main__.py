"""``python -m orderflow_dev.generate <kind> [options]``: kinds are modules of this package with a ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

KINDS = {"orders": "orderflow_dev.generate.orders", "keepalive": "orderflow_dev.generate.keepalive",
         "feed": "orderflow_dev.generate.feed", "mqtt": "orderflow_dev.generate.mqtt_fleet"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in KINDS:
        print(f"usage: python -m orderflow_dev.generate {{{'|'.join(KINDS)}}} [options]  (--help per kind)", file=sys.stderr)
        return 2
    return importlib.import_module(KINDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
