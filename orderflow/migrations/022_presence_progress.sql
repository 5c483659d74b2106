-- How far each restaurant's status timeline is final, written in the transaction of the intervals that made it
-- so: a restarted presence pipeline goes on from here (orderflow/io/presence_restore.py), whatever its runner kept.
CREATE TABLE IF NOT EXISTS restaurant_presence_progress (
    restaurant_id text        PRIMARY KEY,
    final_until   timestamptz NOT NULL,  -- every interval before it is written
    first_event   timestamptz NOT NULL,  -- where the restaurant's timeline starts
    last_input    timestamptz NOT NULL,  -- the end of its latest input (a session's end, a change's time)
    written_at    timestamptz NOT NULL DEFAULT now()
);
