-- Failed logins per login name (username or email, lower-cased), whether or not a user has
-- that name, so a lockout reveals nothing about which accounts exist. Shared by every Tally
-- process through the database.
CREATE TABLE login_failures (
    login            text PRIMARY KEY,
    failures         integer     NOT NULL,
    window_started   timestamptz NOT NULL,
    locked_until     timestamptz
);

CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_id, created_at);
