-- Presence pipeline: status intervals, unavailability history, daily unexplained offline time (ranking).
CREATE TABLE IF NOT EXISTS restaurant_status_intervals (
    restaurant_id text        NOT NULL,
    start_at      timestamptz NOT NULL,
    end_at        timestamptz NOT NULL,
    status        text        NOT NULL CHECK (status IN ('online', 'offline_scheduled', 'offline_unexplained')),
    reason        text        NULL,
    day           date        NOT NULL,  -- local calendar day (opening-hours time zone) of start_at
    written_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (restaurant_id, start_at),
    CHECK (end_at > start_at)
);
-- The daily aggregate is recomputed per (restaurant, day) from the intervals.
CREATE INDEX IF NOT EXISTS restaurant_status_intervals_day ON restaurant_status_intervals (restaurant_id, day);

CREATE TABLE IF NOT EXISTS restaurant_unavailability (
    restaurant_id text        NOT NULL,
    schedule_id   text        NOT NULL,  -- the schedule's id, or the SET_STATUS UNAVAILABLE event's id
    kind          text        NOT NULL CHECK (kind IN ('status', 'schedule')),
    reason        text        NULL,
    starts_at     timestamptz NULL,      -- NULL only while a cancellation waits for its creation
    ends_at       timestamptz NULL,      -- NULL: open-ended (status still UNAVAILABLE)
    created_at    timestamptz NULL,
    cancelled_at  timestamptz NULL,
    PRIMARY KEY (restaurant_id, schedule_id)
);

CREATE TABLE IF NOT EXISTS restaurant_offline_daily (
    restaurant_id               text   NOT NULL,
    day                         date   NOT NULL,
    unexplained_offline_seconds bigint NOT NULL,
    PRIMARY KEY (restaurant_id, day)
);
CREATE INDEX IF NOT EXISTS restaurant_offline_daily_ranking ON restaurant_offline_daily (day, unexplained_offline_seconds DESC);
