-- What the event log costs the posting path, cut (issue 14: V11 made bulk posting a third
-- slower; measured with pg_stat_statements and 100,000-event INSERTs of real payloads).

-- 1. Whose event it is: `user_a` and `user_b` stay (with V11's indexes and rule), but as plain
-- columns. As generated columns they were computed from the payload for every event, which
-- cost about as much as the rest of the event's INSERT; the writers on the posting path (the
-- group commit, hold resolutions, reversals, balance alerts) now name them from the columns
-- they already have, and every other writer leaves them out and gets them from this trigger,
-- which applies V11's rule. `tally verify` (check `event_owners`) proves every stored event
-- follows the rule, whoever wrote it.
ALTER TABLE events ALTER COLUMN user_a DROP EXPRESSION;
ALTER TABLE events ALTER COLUMN user_b DROP EXPRESSION;

-- V11's rule, in one place: the trigger below and `tally verify` both use it.
CREATE FUNCTION event_owners(payload jsonb, OUT user_a uuid, OUT user_b uuid)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (coalesce(payload->>'from_user_id', payload->>'user_id'))::uuid,
           (payload->>'to_user_id')::uuid
$$;

CREATE FUNCTION events_owners() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT o.user_a, o.user_b INTO NEW.user_a, NEW.user_b FROM event_owners(NEW.payload) o;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_owners BEFORE INSERT ON events
    FOR EACH ROW WHEN (NEW.user_a IS NULL AND NEW.user_b IS NULL)
    EXECUTE FUNCTION events_owners();

-- 2. The hash chain stored per seal instead of per event: one `event_chain` row and index
-- entry per event cost the sealer a row write for every event the ledger wrote.
--
-- A seal is what one sealer transaction covers: the events after the previous seal up to and
-- including the cursor (last_tx, last_seq), `events` of them, and their links in cursor order,
-- 32 bytes each, concatenated. The chain itself is unchanged (`store::chain`): link `n` is
-- sha256(link n-1 || canonical bytes of event n), from 32 zero bytes, so the links V11 stored
-- are carried over as they are, in seals of at most 5,000.
CREATE TABLE event_seals (
    last_tx  xid8    NOT NULL,
    last_seq bigint  NOT NULL,
    events   integer NOT NULL CHECK (events > 0),
    links    bytea   NOT NULL CHECK (length(links) = 32 * events),
    PRIMARY KEY (last_tx, last_seq)
);
-- Hashes do not compress: store them out of line without trying.
ALTER TABLE event_seals ALTER COLUMN links SET STORAGE EXTERNAL;

INSERT INTO event_seals (last_tx, last_seq, events, links)
SELECT (array_agg(tx ORDER BY tx DESC, seq DESC))[1],
       (array_agg(seq ORDER BY tx DESC, seq DESC))[1],
       count(*),
       string_agg(hash, ''::bytea ORDER BY tx, seq)
FROM (SELECT tx, seq, hash, (row_number() OVER (ORDER BY tx, seq) - 1) / 5000 AS seal
      FROM event_chain) AS links
GROUP BY seal;

DROP TABLE event_chain;
