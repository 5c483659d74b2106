"""schemathesis hooks of tests/api/test_schemathesis.py (``SCHEMATHESIS_HOOKS``).

application/avro bodies are not generated (no serializer): random bytes are not Avro, and the Avro input
is covered by tests/api/test_ingest.py."""
import schemathesis


@schemathesis.serializer("text/csv")
def _csv(ctx, value):
    return str(value).encode()


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    # An order's event time must lie within [now - 3,660 days, now + 1 day] (normalize_orders.OrderLimits),
    # and a keep-alive's sent_at within ORDERFLOW_KEEPALIVE_MAX_SKEW_SECONDS of the server's clock: windows
    # that move with the clock, which JSON Schema cannot state; nor can it state that a page's `after` is a cursor
    # the endpoint gave (its `next`). Only those refusals are let through.
    return not (failure.code == "ST202" and ("event_time_out_of_range" in response.text
                                             or "behind the server's clock" in response.text
                                             or "ahead of the server's clock" in response.text
                                             or "after: not a cursor of this list" in response.text))
