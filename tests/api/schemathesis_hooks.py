"""schemathesis hooks of tests/api/test_schemathesis.py (``SCHEMATHESIS_HOOKS``): how to send a text/csv body.

application/avro bodies are not generated (no serializer): random bytes are not Avro, and the Avro input
is covered by tests/api/test_ingest.py."""
import schemathesis


@schemathesis.serializer("text/csv")
def _csv(ctx, value):
    return str(value).encode()
