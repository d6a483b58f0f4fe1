-- Transaction lifecycle (DESIGN.md section 7): two-phase holds and reversals.
--
-- A hold is a transaction written `pending` with `expires_at`; it reserves its amount in the
-- payer's `balances.pending` and writes no entries. It ends once: `posted` (a new completed
-- transaction, whose `pending_id` is the hold, moves `posted_amount`), `voided` or `expired`;
-- `resolved_at` is when. The resolution is a conditional UPDATE (status = 'pending'), so two
-- resolutions of one hold cannot both happen, on any number of instances (invariant 9).
--
-- A reversal is a new transaction of type `reversal` with `reversal_of`; the original's
-- `reversed_amount` grows by a conditional UPDATE bounded by the CHECK below (invariant 10).

ALTER TABLE transactions
    ADD COLUMN expires_at      timestamptz,
    ADD COLUMN pending_id      uuid,
    ADD COLUMN posted_amount   bigint,
    ADD COLUMN posting_id      uuid,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN reversal_of     uuid,
    ADD COLUMN reversed_amount bigint NOT NULL DEFAULT 0,
    ADD COLUMN reason          text;

-- 'reversed' was allowed by V1 and never written: a reversed transaction stays `completed`
-- and shows its `reversed_amount`.
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('pending', 'posted', 'voided', 'expired', 'completed', 'failed'));

ALTER TABLE transactions
    ADD CONSTRAINT transactions_hold_deadline CHECK (status <> 'pending' OR expires_at IS NOT NULL),
    ADD CONSTRAINT transactions_hold_resolved
        CHECK ((status IN ('posted', 'voided', 'expired')) = (resolved_at IS NOT NULL)),
    ADD CONSTRAINT transactions_posted_within_hold
        CHECK (posted_amount IS NULL OR (status = 'posted' AND posted_amount BETWEEN 0 AND amount)),
    ADD CONSTRAINT transactions_reversed_within_amount
        CHECK (reversed_amount BETWEEN 0 AND amount);

-- The sweeper's scan: open holds by deadline.
CREATE INDEX transactions_open_holds_idx ON transactions (expires_at) WHERE status = 'pending';
-- One completed posting per hold (a refused one is recorded failed, with the link).
CREATE UNIQUE INDEX transactions_pending_id_key ON transactions (pending_id) WHERE status = 'completed' AND pending_id IS NOT NULL;
-- A transaction's reversals.
CREATE INDEX transactions_reversal_of_idx ON transactions (reversal_of) WHERE reversal_of IS NOT NULL;
