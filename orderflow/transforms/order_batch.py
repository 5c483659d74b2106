"""``OrderBatchCoder``: the Beam coder of ``OrderBatch`` (``orderflow.model.orders``), registered on import.

A batch of order dicts (with datetimes, dates and Decimals) would otherwise be encoded by Beam's
FastPrimitivesCoder value by value, pickling each datetime and Decimal on its own wherever the runner
materialises a PCollection (e.g. before the ParDo that reads the reference-data side input): about 3x
slower than pickling the whole batch in one call, which is what ``OrderBatchCoder`` does.

The orders transforms import this module, so the coder is registered wherever an orders pipeline is built.
Batches pickled before ``OrderBatch`` moved to ``orderflow.model.orders`` name
``orderflow.transforms.order_batch.OrderBatch``, which this module's import keeps resolvable.
"""
from __future__ import annotations

import pickle

from apache_beam import coders

from orderflow.model.orders import OrderBatch

__all__ = ["OrderBatch", "OrderBatchCoder"]


class OrderBatchCoder(coders.Coder):
    """Pickles a whole batch at once (C pickler, highest protocol). Not deterministic: never a key."""

    def encode(self, value):
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded):
        return pickle.loads(encoded)

    def estimate_size(self, value):
        # Runners sample element sizes; the default would pickle the whole batch just to measure it.
        return 64 + 320 * len(value)

    def is_deterministic(self):
        return False

    def to_type_hint(self):
        return OrderBatch


coders.registry.register_coder(OrderBatch, OrderBatchCoder)
