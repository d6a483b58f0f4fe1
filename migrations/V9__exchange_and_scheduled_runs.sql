-- Currency exchange and the transactions of scheduled runs (DESIGN.md section 9, issue 13).
--
-- An exchange is one transaction of type `exchange` with five entries: the payer's sold currency
-- to that currency's `system` liquidity balance and the spread to the `fees` account, and
-- `system`'s bought currency to the payee (the payer again, or `to_user_id`). The row's
-- `amount`/`currency` is what `from_user_id` gives; `to_amount`/`to_currency` what `to_user_id`
-- gets; `fee` the spread in the sold currency; `rate` (target major units per source major unit),
-- `spread_bps`, `rate_source` and `quote_id` how it was priced. A reversal of an exchange carries
-- the same columns, every leg moved back at the recorded rate.

-- The house account that keeps the spread (tally::domain::FEES_USER_ID); like `system`, it has
-- no password and cannot log in.
INSERT INTO users (id, username, email, password_hash, role)
VALUES ('00000000-0000-0000-0000-000000000001', 'fees', 'fees@tally.invalid', NULL, 'system');

ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('credit', 'debit', 'transfer', 'reversal', 'exchange'));

ALTER TABLE transactions
    ADD COLUMN to_amount    bigint,
    ADD COLUMN to_currency  text,
    ADD COLUMN fee          bigint,
    ADD COLUMN rate         numeric,
    ADD COLUMN spread_bps   integer,
    ADD COLUMN rate_source  text,
    ADD COLUMN quote_id     uuid,
    -- The schedule whose run wrote the transaction, and which occurrence (1-based).
    ADD COLUMN schedule_id  uuid,
    ADD COLUMN occurrence   bigint;

-- One's own exchange has the same user on both sides; nothing else may.
ALTER TABLE transactions DROP CONSTRAINT transactions_check;
ALTER TABLE transactions
    ADD CONSTRAINT transactions_parties CHECK (from_user_id <> to_user_id OR to_currency IS NOT NULL),
    ADD CONSTRAINT transactions_exchange CHECK (
        (to_currency IS NULL) = (rate IS NULL)
        AND (to_currency IS NULL) = (to_amount IS NULL)
        AND (to_currency IS NULL) = (fee IS NULL)
        AND (to_currency IS NULL OR (type IN ('exchange', 'reversal')
                                     AND to_currency ~ '^[A-Z]{3}$' AND to_currency <> currency
                                     AND to_amount > 0 AND fee >= 0 AND rate > 0
                                     AND spread_bps >= 0 AND rate_source IS NOT NULL))
        AND (type <> 'exchange' OR to_currency IS NOT NULL)),
    ADD CONSTRAINT transactions_scheduled CHECK ((schedule_id IS NULL) = (occurrence IS NULL)
                                                 AND (occurrence IS NULL OR occurrence >= 1));

-- A schedule's occurrence completes at most once, on any number of instances (its runs are
-- keyed `schedule:<id>:<n>` already; this is the database's word on it).
CREATE UNIQUE INDEX transactions_schedule_occurrence_key ON transactions (schedule_id, occurrence)
    WHERE status = 'completed' AND schedule_id IS NOT NULL;

-- Exchange rates: admin data, one row per ordered pair (an inverse is never implied).
CREATE TABLE rates (
    from_currency text        NOT NULL CHECK (from_currency ~ '^[A-Z]{3}$'),
    to_currency   text        NOT NULL CHECK (to_currency ~ '^[A-Z]{3}$'),
    rate          numeric     NOT NULL CHECK (rate > 0),
    source        text        NOT NULL,
    valid_until   timestamptz,
    updated_by    uuid        REFERENCES users (id),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_currency, to_currency),
    CHECK (from_currency <> to_currency)
);

-- Quotes: a rate fixed for `fx.quote_ttl_s` for one user and amount, used at most once (the
-- exchange claims it in its own commit: `transaction_id` is set by a conditional update).
CREATE TABLE fx_quotes (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id),
    from_currency  text        NOT NULL,
    to_currency    text        NOT NULL,
    source_amount  bigint      NOT NULL CHECK (source_amount > 0),
    fee            bigint      NOT NULL CHECK (fee >= 0),
    target_amount  bigint      NOT NULL CHECK (target_amount > 0),
    rate           numeric     NOT NULL CHECK (rate > 0),
    spread_bps     integer     NOT NULL CHECK (spread_bps >= 0),
    rate_source    text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    transaction_id uuid,
    used_at        timestamptz,
    CHECK ((transaction_id IS NULL) = (used_at IS NULL))
);
-- The sweeper forgets quotes a while after they expire.
CREATE INDEX fx_quotes_expires_idx ON fx_quotes (expires_at);
