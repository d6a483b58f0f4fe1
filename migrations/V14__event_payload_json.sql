-- The event payload is stored as the `json` text the writer built, not as `jsonb` (issue 14:
-- the event log must not cost the posting path more than a tenth of its throughput).
--
-- Nothing reads inside a payload on the posting path or the API's: readers parse the whole
-- document, and the few SQL readers (`tally verify`, V13's owners rule) use `->` and `->>`,
-- which `json` has too. What `jsonb` cost was on every write and every seal: the group commit
-- built each payload as a `jsonb` object (keys sorted and de-duplicated into the binary form),
-- and the sealer printed it back to text (`payload::text`, jsonb_out) to hash it. As `json`,
-- the writer's text is stored as it is and the sealer hashes exactly those bytes.
--
-- The chain is unchanged: its canonical bytes are `payload::text`, and a `jsonb` value cast to
-- `json` keeps the text `jsonb` printed, so every stored link still verifies.
ALTER TABLE events ALTER COLUMN payload TYPE json USING payload::json;

-- V13's owners rule, for a `json` payload (the same expressions).
DROP TRIGGER events_owners ON events;
DROP FUNCTION events_owners();
DROP FUNCTION event_owners(jsonb);

CREATE FUNCTION event_owners(payload json, OUT user_a uuid, OUT user_b uuid)
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
