-- Each alarm window's exact running total, added to in the transaction that inserts its orders (only the
-- orders actually inserted count): the total follows from the stored orders, not from a runner's state.
CREATE TABLE IF NOT EXISTS alarm_window_totals (
    rule_id      text        NOT NULL,
    scope        text        NOT NULL,  -- '*' (all clients) or a client token
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    total        numeric     NOT NULL,
    PRIMARY KEY (rule_id, scope, window_start)
);
CREATE INDEX IF NOT EXISTS alarm_window_totals_end ON alarm_window_totals (window_end);

-- The rules whose totals are kept, as the running orders pipeline configured them. A rule that is new, or
-- whose windows changed, has its totals computed again from the stored orders when a pipeline starts.
CREATE TABLE IF NOT EXISTS alarm_rules (
    rule_id            text        PRIMARY KEY,
    windows_definition text        NOT NULL,
    threshold          numeric     NOT NULL,
    synced_at          timestamptz NOT NULL DEFAULT now()
);
