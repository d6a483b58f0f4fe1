-- Tally ledger schema. The invariants of DESIGN.md section 2 are enforced here as well as in the
-- actors: the database is the final arbiter.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    email         text NOT NULL,
    -- NULL for the reserved `system` user, which can never log in.
    password_hash text,
    role          text NOT NULL CHECK (role IN ('user', 'admin', 'system')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CHECK ((role = 'system') = (password_hash IS NULL))
);
-- Usernames and emails are unique without regard to case, deleted users included (their
-- history still names them).
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- The counterparty of every credit and debit (double entry). Its id is fixed:
-- tally::domain::SYSTEM_USER_ID.
INSERT INTO users (id, username, email, password_hash, role)
VALUES ('00000000-0000-0000-0000-000000000000', 'system', 'system@tally.invalid', NULL, 'system');

CREATE TABLE balances (
    user_id         uuid   NOT NULL REFERENCES users (id),
    currency        text   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Minor units (cents for USD).
    amount          bigint NOT NULL DEFAULT 0,
    -- Held amount (not yet settled), in minor units.
    pending         bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    overdraft_limit bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    -- Incremented by every update; lets caches order the amounts they observe.
    version         bigint NOT NULL DEFAULT 0,
    last_updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, currency),
    -- Invariant 2 (no overdraft), enforced by the database too.
    CONSTRAINT balances_no_overdraft CHECK (amount - pending >= -overdraft_limit)
);

CREATE TABLE transactions (
    id              uuid PRIMARY KEY,
    type            text   NOT NULL CHECK (type IN ('credit', 'debit', 'transfer', 'reversal')),
    status          text   NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'reversed')),
    -- The system user for a credit.
    from_user_id    uuid   NOT NULL REFERENCES users (id),
    -- The system user for a debit.
    to_user_id      uuid   NOT NULL REFERENCES users (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description     text,
    reference       text,
    failure_reason  text,
    initiated_by    uuid   NOT NULL REFERENCES users (id),
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CHECK (from_user_id <> to_user_id),
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL)),
    CHECK (status <> 'completed' OR completed_at IS NOT NULL)
);
-- History, newest first, for either party (keyset pagination on (created_at, id)).
CREATE INDEX transactions_from_idx ON transactions (from_user_id, created_at DESC, id DESC);
CREATE INDEX transactions_to_idx ON transactions (to_user_id, created_at DESC, id DESC);

CREATE TABLE entries (
    -- Increasing in commit order for each account: entries are inserted while the batch holds
    -- the account's row lock.
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid   NOT NULL REFERENCES transactions (id),
    user_id        uuid   NOT NULL,
    currency       text   NOT NULL,
    delta          bigint NOT NULL CHECK (delta <> 0),
    balance_after  bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, currency) REFERENCES balances (user_id, currency)
);
CREATE INDEX entries_account_idx ON entries (user_id, currency, id);
CREATE INDEX entries_account_time_idx ON entries (user_id, currency, created_at, id);
CREATE INDEX entries_transaction_idx ON entries (transaction_id);

-- Append-only log of every state change of users and transactions; balances and entries are
-- projections of it.
CREATE TABLE events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream     text  NOT NULL,
    type       text  NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_stream_idx ON events (stream, seq);

CREATE TABLE audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type text  NOT NULL,
    entity_id   text,
    action      text  NOT NULL,
    actor_id    uuid,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_entity_idx ON audit_logs (entity_type, entity_id, created_at);

CREATE TABLE idempotency_keys (
    user_id        uuid  NOT NULL REFERENCES users (id),
    key            text  NOT NULL,
    -- SHA-256 of the canonical request; a reused key with another body is refused.
    request_hash   bytea NOT NULL,
    -- The stored response: the transaction the first request produced. Deferred because the
    -- journal writer claims the key before it inserts the transaction, in the same commit.
    transaction_id uuid  NOT NULL REFERENCES transactions (id) DEFERRABLE INITIALLY DEFERRED,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid  NOT NULL REFERENCES users (id),
    -- All tokens rotated from one login share a family; reuse of a rotated token revokes it.
    family_id   uuid  NOT NULL,
    -- SHA-256 of the opaque token; the token itself is never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    replaced_by uuid
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
