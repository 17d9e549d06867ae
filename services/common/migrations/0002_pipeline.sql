-- The trading pipeline: signals, decisions, orders, fills, positions, trading state.
-- Money is numeric; times are timestamptz (UTC). `seq` keeps the order of recording.

CREATE TABLE IF NOT EXISTS signals (
    signal_id       uuid PRIMARY KEY,
    event_id        uuid        NOT NULL,
    symbol          text        NOT NULL,
    direction       text        NOT NULL CHECK (direction IN ('buy', 'sell')),
    size            numeric     NOT NULL,
    signal_strength double precision NOT NULL,
    reason          text        NOT NULL,
    ts              timestamptz NOT NULL,
    seq             bigserial
);

CREATE TABLE IF NOT EXISTS risk_decisions (
    decision_id    uuid PRIMARY KEY,
    signal_id      uuid,
    order_id       uuid,
    symbol         text        NOT NULL,
    side           text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('approved', 'trimmed', 'rejected')),
    check_name     text        NOT NULL,
    requested_size numeric     NOT NULL,
    approved_size  numeric     NOT NULL,
    compared       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ts             timestamptz NOT NULL,
    seq            bigserial
);
CREATE INDEX IF NOT EXISTS risk_decisions_seq ON risk_decisions (seq);

CREATE TABLE IF NOT EXISTS orders (
    order_id   uuid PRIMARY KEY,
    signal_id  uuid,
    symbol     text        NOT NULL,
    side       text        NOT NULL CHECK (side IN ('buy', 'sell')),
    size       numeric     NOT NULL,
    quantity   numeric,
    reason     text        NOT NULL,
    trimmed    boolean     NOT NULL,
    ts         timestamptz NOT NULL,
    payload    jsonb       NOT NULL,
    seq        bigserial
);

CREATE TABLE IF NOT EXISTS order_results (
    order_id   uuid PRIMARY KEY,
    status     text        NOT NULL,
    payload    jsonb       NOT NULL,
    ts         timestamptz NOT NULL,
    seq        bigserial
);

CREATE TABLE IF NOT EXISTS fills (
    order_id     uuid PRIMARY KEY,
    symbol       text        NOT NULL,
    side         text        NOT NULL,
    qty          numeric     NOT NULL,
    price        numeric     NOT NULL,
    notional     numeric     NOT NULL,
    fee          numeric     NOT NULL,
    slippage_pct double precision NOT NULL,
    realized_pnl numeric     NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigserial
);

CREATE TABLE IF NOT EXISTS positions (
    symbol     text PRIMARY KEY,
    qty        numeric     NOT NULL,
    avg_price  numeric     NOT NULL,
    entry_fees numeric     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS account (
    id           integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    cash         numeric     NOT NULL,
    realized_pnl numeric     NOT NULL,
    total_fees   numeric     NOT NULL,
    equity       numeric     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS equity_curve (
    ts     timestamptz PRIMARY KEY,
    equity numeric NOT NULL
);

CREATE TABLE IF NOT EXISTS trading_state (
    id             integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    state          text        NOT NULL CHECK (state IN ('ACTIVE', 'PAUSED', 'HALTED')),
    halt_reason    text,
    halted_since   timestamptz,
    manual_paused  boolean     NOT NULL DEFAULT false,
    pause_reasons  text[]      NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS halts (
    id        bigserial PRIMARY KEY,
    reason    text        NOT NULL,
    halted_by text        NOT NULL,
    ts        timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS releases (
    request_id  text PRIMARY KEY,
    released_by text        NOT NULL,
    reason      text        NOT NULL,
    result      text        NOT NULL,
    ts          timestamptz NOT NULL DEFAULT now()
);

-- Engine snapshots and stream watermarks, committed with each batch's effects.
CREATE TABLE IF NOT EXISTS service_state (
    service    text        NOT NULL,
    key        text        NOT NULL,
    value      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, key)
);

-- Transactional outbox: what a batch emits, recorded with its effects, deleted once published.
CREATE TABLE IF NOT EXISTS outbox (
    id       bigserial PRIMARY KEY,
    service  text NOT NULL,
    stream   text NOT NULL,
    payload  bytea NOT NULL
);
