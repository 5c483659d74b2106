-- Phones that receive alarm SMS; client_token NULL = alarms of every scope.
CREATE TABLE IF NOT EXISTS alarm_phones (
    phone        text    PRIMARY KEY,
    client_token text    NULL,
    active       boolean NOT NULL DEFAULT true
);

-- One row per rule and window whose total crossed the rule's threshold (the key makes it fire once).
CREATE TABLE IF NOT EXISTS alarms (
    rule_id      text        NOT NULL,
    scope        text        NOT NULL,  -- '*' (all clients) or a client token
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    total        numeric     NOT NULL,
    threshold    numeric     NOT NULL,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, scope, window_start)
);

-- Transactional outbox: written in the same statement as the alarm, one row per phone; a relay sends
-- the SMS through SNS and marks the row sent.
CREATE TABLE IF NOT EXISTS sms_outbox (
    rule_id        text        NOT NULL,
    scope          text        NOT NULL,
    window_start   timestamptz NOT NULL,
    phone          text        NOT NULL,
    message        text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz NULL,
    sns_message_id text        NULL,
    PRIMARY KEY (rule_id, scope, window_start, phone),
    FOREIGN KEY (rule_id, scope, window_start) REFERENCES alarms (rule_id, scope, window_start)
);
CREATE INDEX IF NOT EXISTS sms_outbox_pending ON sms_outbox (created_at) WHERE sent_at IS NULL;
