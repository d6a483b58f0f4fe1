-- Fewer index entries and trigger checks per transfer (issue 6). Measured with
-- `tally-load run --workload bulk --duration-s 15` on a fresh database: 11,719 transfers/s
-- before, 16,586 with the foreign keys below and the redundant index dropped.
--
-- entries_account_idx (user_id, currency, id) duplicated entries_account_time_idx
-- (user_id, currency, created_at, id): entries are stamped under their account's row lock
-- (V3), so for one account time order is entry id order, and the balance history pages on
-- (created_at, id) with the same index that answers point-in-time reads.
DROP INDEX entries_account_idx;

-- These foreign keys repeated, row by row inside every group commit, what the commit itself
-- establishes in the same database transaction: entries are inserted next to the transaction
-- they belong to, on balance rows the batch has just updated (so they exist), and every party
-- of a transaction is share-locked and checked active by the batch before anything is written
-- (users are never deleted, only marked deleted). Each check was an index probe plus a row
-- lock: on the `system` user, named by every credit and debit, a lock every concurrent batch
-- had to share. `tally verify` (and the API tests after every workload) checks all three
-- references on the whole ledger instead.
ALTER TABLE entries
    DROP CONSTRAINT entries_transaction_id_fkey,
    DROP CONSTRAINT entries_user_id_currency_fkey;
ALTER TABLE transactions
    DROP CONSTRAINT transactions_from_user_id_fkey,
    DROP CONSTRAINT transactions_to_user_id_fkey,
    DROP CONSTRAINT transactions_initiated_by_fkey;
