-- Invariant 12: the event log's cursor is gap-free in commit order (issue 10).
--
-- `seq` is drawn from a sequence when the row is inserted, long before its batch commits: a
-- batch that draws 101 can commit after one that drew 102, so a reader paging by `seq` could
-- read past 101 before it is visible and never see it. Each event now also records the id of
-- the PostgreSQL transaction that wrote it (xid8, never wraps), and readers page by
-- (tx, seq) while reading only below the snapshot's xmin horizon: every transaction with a
-- smaller id has finished (committed or rolled back), so nothing can ever appear behind the
-- cursor. The price is that a reader trails the oldest transaction still running.
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_cursor_idx ON events (tx, seq);
