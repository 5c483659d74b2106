"""The HTTP API of orderflow: ingest to Kafka and queries over the pipelines' stores (FastAPI)."""
