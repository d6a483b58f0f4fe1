-- Scheduled and recurring transactions (DESIGN.md section 9, issue 13).
--
-- A schedule is a transaction template (the body of a credit, debit, transfer or exchange
-- request plus its `type`, as the owner sent it) and a calendar: `start_at` and, for a recurring schedule,
-- every `repeat_interval` days, weeks or months in `time_zone`, ending after `repeat_count`
-- occurrences or at `repeat_until` (or never). Occurrences are numbered from 1; the executor of
-- every instance claims due rows with FOR UPDATE SKIP LOCKED, submits occurrence `n` through
-- the pipeline with the idempotency key `schedule:<id>:<n>` (`:<attempt>` appended from the
-- second attempt on), and records it here in the same database transaction that advances the
-- schedule: each occurrence gets exactly one run row (the primary key).
CREATE TABLE schedules (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    template        jsonb NOT NULL,
    start_at        timestamptz NOT NULL,
    every           text CHECK (every IN ('day', 'week', 'month')),
    repeat_interval integer CHECK (repeat_interval >= 1),
    repeat_count    integer CHECK (repeat_count >= 1),
    repeat_until    timestamptz,
    -- An IANA zone name; the calendar (wall time, month ends) is computed in it.
    time_zone       text NOT NULL,
    misfire_policy  text NOT NULL CHECK (misfire_policy IN ('run_once', 'catch_up', 'skip')),
    on_failure      text NOT NULL CHECK (on_failure IN ('fail', 'retry')),
    status          text NOT NULL CHECK (status IN ('active', 'paused', 'cancelled', 'completed')),
    -- The next occurrence to run, when it is due, and when the executor takes it (its due
    -- time, or a retry's time).
    next_occurrence bigint NOT NULL DEFAULT 1 CHECK (next_occurrence >= 1),
    next_due_at     timestamptz,
    next_run_at     timestamptz,
    -- The attempt the next run will be (from 1; above 1 while an occurrence is retried), and
    -- the problem of the last failed attempt.
    attempt         integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    last_problem    jsonb,
    -- The Idempotency-Key its creation carried, and the SHA-256 of that request's body: a
    -- repeated creation returns this schedule (the same body) or is refused (another body).
    idempotency_key text,
    request_hash    bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_key CHECK ((idempotency_key IS NULL) = (request_hash IS NULL)),
    CONSTRAINT schedules_recurrence CHECK ((every IS NULL) = (repeat_interval IS NULL)
        AND (every IS NOT NULL OR (repeat_count IS NULL AND repeat_until IS NULL))),
    CONSTRAINT schedules_one_end CHECK (repeat_count IS NULL OR repeat_until IS NULL),
    -- Only a schedule that may still run has a next occurrence.
    CONSTRAINT schedules_next CHECK ((status IN ('active', 'paused'))
        = (next_due_at IS NOT NULL AND next_run_at IS NOT NULL))
);
-- The executor's scan: active schedules by the time they are due.
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE status = 'active';
-- One schedule per creation key of a user.
CREATE UNIQUE INDEX schedules_key_idx ON schedules (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A user's schedules, newest first (keyset pagination on (created_at, id)).
CREATE INDEX schedules_user_idx ON schedules (user_id, created_at DESC, id DESC);

-- One row per occurrence that was decided: run (completed or failed) or skipped.
CREATE TABLE schedule_runs (
    schedule_id    uuid NOT NULL REFERENCES schedules (id),
    occurrence     bigint NOT NULL CHECK (occurrence >= 1),
    -- The attempt that decided it (1 unless retried).
    attempt        integer NOT NULL CHECK (attempt >= 1),
    due_at         timestamptz NOT NULL,
    ran_at         timestamptz NOT NULL,
    outcome        text NOT NULL CHECK (outcome IN ('completed', 'failed', 'skipped')),
    -- The transaction written: completed, or failed (a refusal the ledger recorded).
    transaction_id uuid REFERENCES transactions (id),
    problem        jsonb,
    PRIMARY KEY (schedule_id, occurrence),
    CHECK (outcome <> 'completed' OR transaction_id IS NOT NULL),
    CHECK (outcome <> 'skipped' OR transaction_id IS NULL)
);
