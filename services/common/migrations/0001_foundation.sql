-- Foundation: alerts and per-group processed events (idempotent consumers).
CREATE TABLE IF NOT EXISTS alerts (
    event_id   uuid PRIMARY KEY,
    code       text        NOT NULL,
    level      text        NOT NULL CHECK (level IN ('INFO', 'WARNING', 'CRITICAL')),
    message    text        NOT NULL,
    source     text        NOT NULL,
    context    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ts         timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alerts_code_ts ON alerts (code, ts);

CREATE TABLE IF NOT EXISTS processed_events (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    stream         text        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

CREATE TABLE IF NOT EXISTS event_counts (
    consumer_group text   NOT NULL,
    stream         text   NOT NULL,
    count          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer_group, stream)
);
