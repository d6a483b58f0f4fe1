-- Limits and balance alerts (DESIGN.md section 8, invariant 11, issue 12).
--
-- A limit is data: a row per (account, currency, kind), or a default (user_id NULL) that applies
-- to every account of role `user`. `currency` is an ISO 4217 code or '*' (every currency; a row
-- naming the currency wins over '*', and an account's own row wins over a default). `value` is in
-- minor units of the account's currency (a count for `velocity`). Rolling kinds carry `window_s`.
CREATE TABLE limits (
    id         uuid PRIMARY KEY,
    user_id    uuid REFERENCES users (id),
    currency   text NOT NULL,
    kind       text NOT NULL,
    value      bigint NOT NULL,
    window_s   integer,
    created_by uuid REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT limits_currency CHECK (currency = '*' OR currency ~ '^[A-Z]{3}$'),
    CONSTRAINT limits_kind CHECK (kind IN ('max_per_transaction', 'daily_debit', 'rolling_debit',
                                           'daily_credit', 'velocity')),
    CONSTRAINT limits_value CHECK (value BETWEEN 1 AND 2305843009213693952),
    CONSTRAINT limits_window CHECK ((kind IN ('rolling_debit', 'velocity')) = (window_s IS NOT NULL)
                                    AND (window_s IS NULL OR window_s BETWEEN 1 AND 31622400))
);
CREATE UNIQUE INDEX limits_account_key ON limits (user_id, currency, kind) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX limits_default_key ON limits (currency, kind) WHERE user_id IS NULL;

-- Set once, the first time a database is started: the configured `limits.defaults` are
-- written then, and from then on `PUT /limits/defaults` rules.
CREATE TABLE limit_defaults_seeded (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seeded_at timestamptz NOT NULL DEFAULT now()
);

-- What the windowed limits count: one row per counted movement (a debit or hold of a user
-- account, or a credit a user gave themself), written in the commit that applies it, under the
-- balance row's lock, only for accounts that have a windowed limit in that direction. `at` is
-- the ledger clock's time of the commit. A hold counts from its creation; its posting lowers
-- the row to the posted amount, a void or expiry deletes it (the headroom comes back).
CREATE TABLE limit_usage (
    transaction_id uuid PRIMARY KEY,
    user_id        uuid NOT NULL,
    currency       text NOT NULL,
    direction      text NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount         bigint NOT NULL CHECK (amount BETWEEN 0 AND 2305843009213693952),
    at             timestamptz NOT NULL
);
CREATE INDEX limit_usage_window_idx ON limit_usage (user_id, currency, direction, at) INCLUDE (amount);
-- The sweeper's scan for rows older than any window (rows arrive in time order: BRIN is enough).
CREATE INDEX limit_usage_at_idx ON limit_usage USING brin (at);

-- Balance alerts: edge-triggered. `armed` is true while the condition does not hold; the
-- commit that makes it hold writes one `balance.alert` event and disarms it, and the one that
-- makes it stop holding re-arms it, both under the balance row's lock.
CREATE TABLE alerts (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    condition   text NOT NULL CHECK (condition IN ('below', 'above')),
    threshold   bigint NOT NULL CHECK (threshold BETWEEN -2305843009213693952 AND 2305843009213693952),
    armed       boolean NOT NULL,
    fired_count bigint NOT NULL DEFAULT 0,
    last_fired_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_account_idx ON alerts (user_id, currency);
