-- Bounded money (DESIGN.md invariant 7, issue 10). Every balance, pending amount and overdraft
-- limit stays within ±2^61 minor units (tally::domain::MONEY_BOUND_MINOR), so no sum the
-- group commit computes can overflow 64 bits. The configured bounds (ledger.balance_max_minor,
-- ledger.supply_max_minor) are checked by the conditional update; these constraints are the
-- last line behind it.
--
-- The system account's floor is the configured supply bound, passed to every update; its
-- overdraft_limit column (i64::MAX until now) becomes the largest bound, which the CHECK below
-- admits.
UPDATE balances SET overdraft_limit = 2305843009213693952
WHERE user_id = '00000000-0000-0000-0000-000000000000' AND overdraft_limit > 2305843009213693952;

-- NOT VALID: enforced on every insert and update from now on; a ledger that overflowed before
-- this migration still starts (and `tally verify` reports the rows out of bounds).
ALTER TABLE balances ADD CONSTRAINT balances_bounded CHECK (
    amount BETWEEN -2305843009213693952 AND 2305843009213693952
    AND pending <= 2305843009213693952
    AND overdraft_limit <= 2305843009213693952
) NOT VALID;

-- What a refused movement was shown (e.g. the limit and the figures of `limit_exceeded`), so
-- that an idempotent replay answers exactly the same.
ALTER TABLE transactions ADD COLUMN failure_detail jsonb;
