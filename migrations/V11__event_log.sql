-- The event log as an API (DESIGN.md section 10, issue 14): whose event each one is, indexes to
-- page one user's events by cursor, a wake-up for the live feed, and the SHA-256 hash chain.
--
-- Every event already commits in the same database transaction as the change it records, with
-- the gap-free cursor (tx, seq) of V6. Its stable id is `seq` (never reused, never changed).

-- Whose event it is: the (at most two) users whose accounts or settings it touches, derived
-- by the database from the payload, so every writer of events (the group commit, hold
-- resolutions, reversals, alerts, limits, schedules, users, webhooks) gets it right without
-- repeating the rule: `user_a` is the sender (`from_user_id`) or the user the event is about
-- (`user_id`), `user_b` the recipient (`to_user_id`). The house accounts (`system`, `fees`),
-- named only in entries, are nobody's scope but the admins'. Two cheap expressions and two
-- partial indexes, so that `GET /events` pages one user's events in cursor order: measured
-- with 1,000-event INSERTs, about 13 us per event (a jsonb aggregate per row plus a trigger
-- indexing each account cost ten times that, and halved the bulk throughput).
ALTER TABLE events
    ADD COLUMN user_a uuid GENERATED ALWAYS AS
        ((coalesce(payload->>'from_user_id', payload->>'user_id'))::uuid) STORED,
    ADD COLUMN user_b uuid GENERATED ALWAYS AS ((payload->>'to_user_id')::uuid) STORED;
CREATE INDEX events_user_a_idx ON events (user_a, tx, seq) WHERE user_a IS NOT NULL;
CREATE INDEX events_user_b_idx ON events (user_b, tx, seq) WHERE user_b IS NOT NULL;

-- Wakes every instance's feed tailer (LISTEN tally_events) when a transaction that wrote
-- events commits: once per INSERT statement (a group commit writes its events in one), and
-- PostgreSQL folds the repeats of one transaction into one notification. The tailer reads by
-- cursor, so a notification lost or folded loses nothing.
CREATE FUNCTION notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events();

-- The hash chain: link `n` is sha256(link n-1 || the event's canonical bytes), in cursor
-- order, from 32 zero bytes (`store::chain` defines the canonical bytes). Events are sealed
-- after they commit, by one sealer at a time across instances (an advisory lock), so the
-- posting path never waits for it; `tally verify` recomputes the chain and names the first
-- link that does not match.
-- One index, the cursor's, and no foreign key: the sealer writes as many rows as the ledger
-- writes events, and `tally verify` finds a link without its event (or an event without its
-- link) by walking the chain.
CREATE TABLE event_chain (
    tx   xid8   NOT NULL,
    seq  bigint NOT NULL,
    hash bytea  NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tx, seq)
);
