-- Priced orders, one row per order id: a duplicate or replayed order never becomes a second row.
CREATE TABLE IF NOT EXISTS orders (
    order_id      text        PRIMARY KEY,
    client_token  text        NOT NULL,
    asset         text        NOT NULL,
    quantity      bigint      NOT NULL CHECK (quantity > 0),
    pricing_code  text        NOT NULL,
    price         numeric     NOT NULL,
    total         numeric     NOT NULL,
    event_time    timestamptz NOT NULL,
    trade_day     date        NOT NULL,
    source_format text        NOT NULL,
    -- Kafka coordinates (topic/partition/offset#index) of the record that first delivered the order:
    -- a replay of that same record is recognised, a duplicate from another record is not counted.
    source        text        NOT NULL DEFAULT '',
    inserted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_client_day ON orders (client_token, trade_day);

-- Per-client daily volume, maintained in the same statement as the orders insert from the rows that
-- were actually inserted; the pipeline copies the absolute values to DynamoDB.
CREATE TABLE IF NOT EXISTS client_daily_volume (
    client_token text        NOT NULL,
    day          date        NOT NULL,
    total        numeric     NOT NULL,
    order_count  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_token, day)
);
