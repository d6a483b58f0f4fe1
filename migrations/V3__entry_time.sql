-- Point-in-time balances read the last entry at or before an instant, ordered by created_at.
-- `now()` is the batch's transaction start, which can precede a concurrent batch that commits
-- first (another Tally process); `clock_timestamp()` is taken at insert, while the batch holds
-- the account's row lock, so created_at order equals commit order for each account.
ALTER TABLE entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();
