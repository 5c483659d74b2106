-- API keys of the HTTP API (orderflow/api). Only a SHA-256 digest of each key is stored: keys are
-- 256-bit random secrets, so a fast hash is enough (no password stretching needed) and a leaked table
-- does not reveal usable keys. key_id is the public, non-secret prefix used to find the row.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text        PRIMARY KEY,
    key_sha256  bytea       NOT NULL,
    scopes      text[]      NOT NULL,
    name        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz NULL,
    CONSTRAINT api_keys_has_scopes CHECK (cardinality(scopes) > 0)
);
