-- The event log as an API (DESIGN.md section 10, issue 14): whose accounts each event touches,
-- an index to page one user's events by cursor, and the SHA-256 hash chain.
--
-- Every event already commits in the same database transaction as the change it records, with
-- the gap-free cursor (tx, seq) of V6. Its stable id is `seq` (never reused, never changed).

-- The accounts an event touches, as a sorted JSON array of {user_id, currency} (currency null
-- for an event about a user rather than one of its accounts): every entry's account, the
-- sender's account in the currency sent, the recipient's in the currency received, and the
-- `user_id` the event is about. Derived from the payload by the database, so every writer of
-- events (the group commit, hold resolutions, reversals, alerts, limits, schedules, users,
-- webhooks) gets it right without repeating the rule.
CREATE FUNCTION event_accounts(payload jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object('user_id', touched.user_id,
                                                          'currency', touched.currency)),
                    '[]'::jsonb)
    FROM (
        SELECT entry->>'user_id', entry->>'currency'
        FROM jsonb_array_elements(CASE jsonb_typeof(payload->'entries')
                                      WHEN 'array' THEN payload->'entries'
                                      ELSE '[]'::jsonb END) AS entry
        UNION ALL SELECT payload->>'from_user_id', payload->>'currency'
        UNION ALL SELECT payload->>'to_user_id', coalesce(payload->>'to_currency', payload->>'currency')
        UNION ALL SELECT payload->>'user_id', payload->>'currency'
    ) AS touched (user_id, currency)
    WHERE touched.user_id IS NOT NULL
$$;

ALTER TABLE events ADD COLUMN accounts jsonb GENERATED ALWAYS AS (event_accounts(payload)) STORED;

-- One row per (user, event) the user's accounts are touched by: `GET /events` for a user pages
-- this index in cursor order instead of filtering the whole log. Written by a statement-level
-- trigger, once per INSERT statement (a group commit writes its events in one statement),
-- which also notifies the channel `tally_events`.
CREATE TABLE event_users (
    user_id uuid   NOT NULL,
    tx      xid8   NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (user_id, tx, seq)
);

CREATE FUNCTION index_event_users() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_users (user_id, tx, seq)
    SELECT DISTINCT (account->>'user_id')::uuid, added.tx, added.seq
    FROM added, jsonb_array_elements(added.accounts) AS account;
    -- Wakes every instance's feed tailer (LISTEN tally_events) when the transaction commits;
    -- within one transaction PostgreSQL folds repeated notifications into one. The tailer
    -- reads by cursor, so a notification lost or folded loses nothing.
    PERFORM pg_notify('tally_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_index_users AFTER INSERT ON events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION index_event_users();

INSERT INTO event_users (user_id, tx, seq)
SELECT DISTINCT (account->>'user_id')::uuid, events.tx, events.seq
FROM events, jsonb_array_elements(events.accounts) AS account;

-- The hash chain: link `n` is sha256(link n-1 || the event's canonical bytes), in cursor
-- order, from 32 zero bytes (`store::chain` defines the canonical bytes). Events are sealed
-- after they commit, by one sealer at a time across instances (an advisory lock), so the
-- posting path never waits for it; `tally verify` recomputes the chain and names the first
-- link that does not match.
CREATE TABLE event_chain (
    seq  bigint NOT NULL PRIMARY KEY REFERENCES events (seq),
    tx   xid8   NOT NULL,
    hash bytea  NOT NULL CHECK (length(hash) = 32)
);
CREATE UNIQUE INDEX event_chain_cursor_idx ON event_chain (tx, seq);
