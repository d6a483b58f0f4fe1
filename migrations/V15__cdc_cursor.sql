-- Change data capture (DESIGN.md section 12, issue 16): where the publisher of the event log to
-- a RabbitMQ exchange has got to. One row per exchange: the cursor `(tx, seq)` of the last event
-- the broker confirmed. It is stored only after the confirms of everything up to it arrived, so a
-- publisher that dies re-publishes from here (at least once, never a gap). One publisher per
-- exchange at a time across instances: a session-level advisory lock held by the publisher's own
-- connection (`amqp::cdc`), released by PostgreSQL when that connection ends.
CREATE TABLE cdc_cursors (
    exchange   text PRIMARY KEY CHECK (length(exchange) BETWEEN 1 AND 255),
    tx         bigint NOT NULL DEFAULT 0 CHECK (tx >= 0),
    seq        bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
