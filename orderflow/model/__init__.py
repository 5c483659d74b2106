"""orderflow's domain: types and rules as plain Python, without Beam and without I/O.

- ``orders``: ``Order``, ``PricedOrder``, ``OrderBatch``; parsing and validation (``parse_orders``,
  ``InvalidOrder``, ``OrderLimits``), the order's canonical Avro encoding and its dead letters.
- ``pricing``: the trading day (``today``), the reference-data snapshot, ``price_order``.
- ``presence``: the presence rules (keep-alive gap, opening hours, status intervals, ``AvailabilityChange``).
- ``dead_letter``: ``DeadLetter``, the dead-letter output tag and the ``Stage`` vocabulary.
- ``kafka_record``: ``KafkaRecord``, the element the Kafka connector reads.
- ``avro``: the single-object Avro codec (``AvroCodec``) of every Kafka payload.
- ``money``: the one text format of amounts.
- ``sample_assets``: the sample reference data set.

Imported by ``transforms``, ``io``, the API and the generators; it imports nothing of orderflow but
``orderflow.config`` (``tests/test_layering.py`` checks it).
"""
