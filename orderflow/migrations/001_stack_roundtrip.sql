-- A scratch table for the local stack's round-trip check (make demo, tests/local/test_stack.py).
CREATE TABLE IF NOT EXISTS stack_roundtrip (
    id         bigserial PRIMARY KEY,
    note       text        NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
