-- What each streaming pipeline's worker process reports about itself every --progress_interval_seconds
-- (orderflow/pipelines/progress.py); the API reads it for /metrics, /healthz and the dashboard.
CREATE TABLE IF NOT EXISTS pipeline_progress (
    pipeline        text        NOT NULL,  -- orders | presence
    worker          text        NOT NULL,  -- host:pid of the worker process
    group_id        text        NOT NULL,  -- the Kafka consumer group whose committed offsets it advances
    topics          text[]      NOT NULL,  -- the topics it reads
    started_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz NOT NULL,  -- the last report: old means the process is gone or hung
    progress_at     timestamptz,           -- the last time it read a record
    newest_event_at timestamptz,           -- the newest Kafka record timestamp it has read
    counters        jsonb       NOT NULL,  -- running totals of this process: {"<tally>": n, ...}
    PRIMARY KEY (pipeline, worker)
);
