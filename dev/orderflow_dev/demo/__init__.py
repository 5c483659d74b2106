"""``make demo`` (``python -m orderflow_dev.demo``): shows orderflow working end to end on the local stack.

``__main__`` runs the steps in order; each step is one module here, ``demo(settings, ...)`` printing what
it shows: ``orders`` (bounded orders pipeline on generated orders), ``presence`` (bounded presence pipeline
on generated restaurants, offline ranking), ``kafka`` (group offsets, a replay plan, a priced order read
back through Avro), ``flink`` (dry runs of both Flink submissions). The last step, the API serving
detached, is ``orderflow_dev.demo.api``.
"""
