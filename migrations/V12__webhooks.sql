-- Webhooks (DESIGN.md section 10, issue 14): subscriptions, their delivery log, and the
-- dispatcher's position in the event log.
--
-- Delivery is at-least-once from the log. A dispatcher (one at a time across instances: an
-- advisory lock, see `store::webhooks::dispatch`) reads committed events after its cursor and, in one
-- transaction, inserts a pending delivery per matching active subscription and advances the
-- cursor, so each event is fanned out to each subscription exactly once. Deliverers on every
-- instance claim due deliveries (FOR UPDATE SKIP LOCKED, then a lease), POST outside any
-- transaction, then record the outcome; a delivery whose lease ran out unrecorded (a crash
-- between POST and record) is due again.

CREATE TABLE webhooks (
    id                   uuid PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id),
    url                  text NOT NULL CHECK (length(url) <= 2048),
    -- NULL: every event type of the subscription's scope.
    types                text[],
    description          text CHECK (length(description) <= 500),
    -- The HMAC-SHA256 key (`whsec_` and 64 hex digits). Kept to sign; shown once, at creation.
    secret               text NOT NULL,
    active               boolean NOT NULL DEFAULT true,
    -- Failed attempts in a row across the subscription's deliveries (a success resets it);
    -- at `webhooks.disable_after_failures` the subscription is disabled.
    consecutive_failures integer NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    -- Events of transactions from this one on (the xmin horizon when the subscription was
    -- created) may be delivered: every event that commits after the subscription does, and
    -- never the history before it.
    from_tx              xid8 NOT NULL DEFAULT pg_snapshot_xmin(pg_current_snapshot()),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (active = (disabled_at IS NULL))
);
CREATE INDEX webhooks_user_idx ON webhooks (user_id, created_at);
CREATE INDEX webhooks_active_idx ON webhooks (id) WHERE active;

-- One row per (subscription, event): the primary key makes a second fan-out of the same event
-- a no-op. `status`: `pending` (due at `next_attempt_at`, or leased until then), `delivered`
-- (a 2xx), `failed` (gave up after `webhooks.max_attempts`).
CREATE TABLE webhook_deliveries (
    webhook_id       uuid   NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq        bigint NOT NULL REFERENCES events (seq),
    event_type       text   NOT NULL,
    status           text   NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when a deliverer claims the delivery; its outcome is recorded only under the same
    -- lease (a deliverer whose lease ran out and was taken over records nothing).
    lease            uuid,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, event_seq)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_seq);

-- The dispatcher's cursor in the event log: one row, moved by the dispatcher holding the lock.
CREATE TABLE webhook_dispatch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tx        bigint NOT NULL DEFAULT 0,
    seq       bigint NOT NULL DEFAULT 0
);
INSERT INTO webhook_dispatch DEFAULT VALUES;
