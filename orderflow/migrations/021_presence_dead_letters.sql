-- Presence input that could not be decoded or is invalid, kept with the reason (never dropped).
CREATE TABLE IF NOT EXISTS presence_dead_letters (
    id         bigserial   PRIMARY KEY,
    source     text        NOT NULL,  -- Kafka coordinates topic/partition/offset ('' when unknown)
    stage      text        NOT NULL,
    reason     text        NOT NULL,
    detail     text        NOT NULL,
    payload    bytea       NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
-- A replayed record does not become a second dead letter.
CREATE UNIQUE INDEX IF NOT EXISTS presence_dead_letters_source ON presence_dead_letters (source, stage) WHERE source <> '';
