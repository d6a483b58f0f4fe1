//! The ledger contract (DESIGN.md section 2), checked by SQL against a live database: what
//! `tally verify` runs, and what the API tests assert after every workload.
//!
//! All checks read one snapshot (a `REPEATABLE READ READ ONLY` transaction), so they hold
//! exactly on a database that is being written to: every batch commits atomically, and each
//! invariant holds at every commit.

use std::fmt;
use std::time::Duration;

/// How many offending rows a check lists (its count is always complete).
const EXAMPLES_MAX: i64 = 10;

/// How many events the chain check reads per query.
const CHAIN_PAGE: i64 = 10_000;

/// One invariant: its description, and the rows that break it.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short machine-friendly name, e.g. `conservation`.
    pub name: &'static str,
    /// What must hold, in words.
    pub invariant: &'static str,
    /// How many rows break it (0 when it holds).
    pub violations: i64,
    /// Up to 10 of them, described.
    pub examples: Vec<String>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Completed transactions in the snapshot.
    pub completed_transactions: i64,
}

impl Report {
    /// No check found a violation.
    pub fn is_clean(&self) -> bool {
        self.checks.iter().all(|check| check.violations == 0)
    }

    /// The checks that found violations.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| check.violations > 0)
    }
}

impl fmt::Display for Report {
    /// One line per check (`ok` or `FAIL` with the count), the examples indented under it,
    /// then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            if check.violations == 0 {
                writeln!(f, "ok    {:<20} {}", check.name, check.invariant)?;
            } else {
                writeln!(
                    f,
                    "FAIL  {:<20} {} ({} violations)",
                    check.name, check.invariant, check.violations
                )?;
                for example in &check.examples {
                    writeln!(f, "        {example}")?;
                }
            }
        }
        let failed = self.failures().count();
        if failed == 0 {
            writeln!(
                f,
                "ledger verified: {} checks hold over {} completed transactions",
                self.checks.len(),
                self.completed_transactions
            )
        } else {
            writeln!(
                f,
                "ledger INVALID: {failed} of {} checks failed",
                self.checks.len()
            )
        }
    }
}

/// `(name, invariant, query)`: each query returns one text column describing each offending
/// row, with the total in a second column (`count(*) OVER ()`). `{retention}` in a query stands
/// for the idempotency retention, an `interval`.
const CHECKS: &[(&str, &str, &str)] = &[
    (
        "conservation",
        "the balances of each currency, system included, sum to zero (invariant 1)",
        "SELECT format('%s: balances sum to %s', currency, sum(amount))
         FROM balances GROUP BY currency HAVING sum(amount) <> 0",
    ),
    (
        "double_entry",
        "every completed transaction but an exchange has exactly two entries, -amount from its \
         source and +amount to its destination; other transactions have none (invariant 1)",
        "SELECT format('transaction %s (%s, %s %s): %s entries summing to %s',
                       t.id, t.status, t.amount, t.currency, count(e.id), coalesce(sum(e.delta), 0))
         FROM transactions t LEFT JOIN entries e ON e.transaction_id = t.id
         GROUP BY t.id
         HAVING CASE WHEN t.status = 'completed' AND t.to_currency IS NOT NULL THEN false
                    WHEN t.status = 'completed' THEN
                    count(e.id) <> 2
                    OR count(e.id) FILTER (WHERE e.user_id = t.from_user_id
                                             AND e.currency = t.currency AND e.delta = -t.amount) <> 1
                    OR count(e.id) FILTER (WHERE e.user_id = t.to_user_id
                                             AND e.currency = t.currency AND e.delta = t.amount) <> 1
                ELSE count(e.id) <> 0 END",
    ),
    (
        "references",
        "every entry belongs to an existing transaction and balance row, and every party of a \
         transaction is a user (the group commit writes them together; see migration V4)",
        "SELECT format('entry %s names transaction %s, which does not exist', e.id, e.transaction_id)
         FROM entries e LEFT JOIN transactions t ON t.id = e.transaction_id
         WHERE t.id IS NULL
         UNION ALL
         SELECT format('entry %s is on %s %s, which has no balance row', e.id, e.user_id, e.currency)
         FROM entries e LEFT JOIN balances b USING (user_id, currency)
         WHERE b.user_id IS NULL
         UNION ALL
         SELECT format('transaction %s names user %s, who does not exist', t.id, p.user_id)
         FROM transactions t
         CROSS JOIN LATERAL (VALUES (t.from_user_id), (t.to_user_id), (t.initiated_by)) AS p(user_id)
         LEFT JOIN users u ON u.id = p.user_id
         WHERE u.id IS NULL",
    ),
    (
        "holds_pending",
        "every balance's pending amount is the sum of its open holds (DESIGN.md section 7)",
        "SELECT format('%s %s: pending %s, open holds %s', b.user_id, b.currency, b.pending,
                       coalesce(h.held, 0))
         FROM balances b
         LEFT JOIN (SELECT from_user_id, currency, sum(amount) AS held FROM transactions
                    WHERE status = 'pending' GROUP BY 1, 2) h
           ON h.from_user_id = b.user_id AND h.currency = b.currency
         WHERE b.pending <> coalesce(h.held, 0)",
    ),
    (
        "holds_resolved_once",
        "a resolved hold has exactly one resolution event; a posted one exactly one completed \
         posting of its posted amount, within the held amount (invariant 9)",
        "SELECT format('hold %s (%s): %s resolution events', t.id, t.status, count(e.seq))
         FROM transactions t
         LEFT JOIN events e ON e.stream = 'transaction:' || t.id
                           AND e.type IN ('hold.posted', 'hold.voided', 'hold.expired')
         WHERE t.expires_at IS NOT NULL AND t.status <> 'failed'
         GROUP BY t.id
         HAVING count(e.seq) <> CASE WHEN t.status = 'pending' THEN 0 ELSE 1 END
         UNION ALL
         SELECT format('hold %s posted %s of %s; postings: %s', h.id, h.posted_amount, h.amount,
                       count(p.id))
         FROM transactions h
         LEFT JOIN transactions p ON p.pending_id = h.id AND p.status = 'completed'
         WHERE h.status = 'posted'
         GROUP BY h.id
         HAVING count(p.id) <> 1 OR min(p.amount) <> h.posted_amount OR h.posted_amount > h.amount
                OR min(p.id::text) <> h.posting_id::text",
    ),
    (
        "reversals",
        "each transaction's completed reversals move it back (parties swapped, same currency), \
         sum to its reversed_amount and never exceed its amount (an exchange's reversal moves \
         back what it bought, and counts what it sold); only completed transfers, debits, \
         credits, postings and exchanges are reversed (invariant 10)",
        "SELECT format('transaction %s (%s %s, %s): reversed_amount %s, completed reversals sum \
                        to %s', o.id, o.amount, o.currency, o.status, o.reversed_amount,
                       coalesce(sum(coalesce(r.to_amount, r.amount)), 0))
         FROM transactions o
         LEFT JOIN transactions r ON r.reversal_of = o.id AND r.status = 'completed'
         GROUP BY o.id
         HAVING coalesce(sum(coalesce(r.to_amount, r.amount)), 0) <> o.reversed_amount
                OR o.reversed_amount > o.amount
                OR (o.reversed_amount > 0 AND (o.status <> 'completed' OR o.reversal_of IS NOT NULL))
         UNION ALL
         SELECT format('reversal %s of %s: %s -> %s %s, original %s -> %s %s', r.id, o.id,
                       r.from_user_id, r.to_user_id, r.currency, o.from_user_id, o.to_user_id,
                       o.currency)
         FROM transactions r JOIN transactions o ON o.id = r.reversal_of
         WHERE r.from_user_id <> o.to_user_id OR r.to_user_id <> o.from_user_id
               OR r.currency <> coalesce(o.to_currency, o.currency)",
    ),
    (
        "exchanges",
        "every completed exchange has exactly its legs (payer -amount, system +(amount - fee) and \
         fees +fee in the sold currency; system -to_amount and payee +to_amount in the bought \
         one), its reversal exactly their opposites; its fee is the spread rounded up and its \
         to_amount the exact conversion at its rate rounded down, in the currencies' minor \
         units (DESIGN.md section 9)",
        "SELECT format('%s %s (%s %s -> %s %s): entries %s, legs %s', t.type, t.id, t.amount,
                       t.currency, t.to_amount, t.to_currency, coalesce(a.entries, '{}'), x.legs)
         FROM transactions t
         CROSS JOIN LATERAL (
             SELECT array_agg(format('%s %s %s', user_id, currency, delta)
                              ORDER BY format('%s %s %s', user_id, currency, delta)) AS legs
             FROM (VALUES
                 (t.from_user_id, t.currency, -t.amount),
                 ('00000000-0000-0000-0000-000000000000'::uuid, t.currency,
                  CASE WHEN t.type = 'exchange' THEN t.amount - t.fee ELSE t.amount END),
                 ('00000000-0000-0000-0000-000000000001'::uuid,
                  CASE WHEN t.type = 'exchange' THEN t.currency ELSE t.to_currency END,
                  CASE WHEN t.type = 'exchange' THEN t.fee ELSE -t.fee END),
                 ('00000000-0000-0000-0000-000000000000'::uuid, t.to_currency,
                  CASE WHEN t.type = 'exchange' THEN -t.to_amount ELSE t.fee - t.to_amount END),
                 (t.to_user_id, t.to_currency, t.to_amount)) AS l(user_id, currency, delta)
             WHERE delta <> 0) x
         LEFT JOIN LATERAL (
             SELECT array_agg(format('%s %s %s', user_id, currency, delta)
                              ORDER BY format('%s %s %s', user_id, currency, delta)) AS entries
             FROM entries WHERE transaction_id = t.id) a ON true
         WHERE t.to_currency IS NOT NULL AND t.status = 'completed'
           AND a.entries IS DISTINCT FROM x.legs
         UNION ALL
         SELECT format('exchange %s: %s %s at %s with %s bps: fee %s, to_amount %s %s; exact: fee %s, to_amount %s',
                       t.id, t.amount, t.currency, t.rate, t.spread_bps, t.fee, t.to_amount,
                       t.to_currency, f.fee, floor((t.amount - f.fee) * t.rate
                                                   * power(10::numeric, et.e - ef.e)))
         FROM transactions t
         JOIN {exponents} AS ef(code, e) ON ef.code = t.currency
         JOIN {exponents} AS et(code, e) ON et.code = t.to_currency
         CROSS JOIN LATERAL (SELECT ceil(t.amount * t.spread_bps / 10000::numeric) AS fee) f
         WHERE t.type = 'exchange'
           AND (t.fee <> f.fee
                OR t.to_amount <> floor((t.amount - f.fee) * t.rate * power(10::numeric, et.e - ef.e)))",
    ),
    (
        "no_overdraft",
        "no balance is below its overdraft limit (invariant 2)",
        "SELECT format('%s %s: amount %s, pending %s, overdraft limit %s',
                       user_id, currency, amount, pending, overdraft_limit)
         FROM balances WHERE amount - pending < -overdraft_limit",
    ),
    (
        "entry_limit",
        "no entry's balance_after went below its account's overdraft limit (invariant 2)",
        "SELECT format('entry %s of %s %s: balance_after %s, overdraft limit %s',
                       e.id, e.user_id, e.currency, e.balance_after, b.overdraft_limit)
         FROM entries e JOIN balances b USING (user_id, currency)
         WHERE e.balance_after < -b.overdraft_limit",
    ),
    (
        "entries_sum",
        "every balance equals the sum of its entries (invariant 5)",
        "SELECT format('%s %s: balance %s, entries sum to %s',
                       user_id, currency, b.amount, coalesce(e.total, 0))
         FROM balances b
         LEFT JOIN (SELECT user_id, currency, sum(delta) AS total FROM entries GROUP BY 1, 2) e
           USING (user_id, currency)
         WHERE b.amount <> coalesce(e.total, 0)",
    ),
    (
        "running_sums",
        "each entry's balance_after is the running sum of its account's deltas in commit \
         order (invariant 5)",
        "SELECT format('entry %s of %s %s: balance_after %s, running sum %s',
                       id, user_id, currency, balance_after, running)
         FROM (SELECT id, user_id, currency, balance_after,
                      sum(delta) OVER (PARTITION BY user_id, currency ORDER BY id) AS running
               FROM entries) r
         WHERE balance_after <> running",
    ),
    (
        "event_replay",
        "replaying the completed-transaction events rebuilds every balance (invariant 5)",
        "SELECT format('%s %s: balance %s, events replay to %s',
                       user_id, currency, coalesce(b.amount, 0), coalesce(r.total, 0))
         FROM balances b
         FULL JOIN (
             SELECT (entry->>'user_id')::uuid AS user_id, entry->>'currency' AS currency,
                    sum((entry->>'delta')::bigint) AS total
             FROM events, json_array_elements(payload->'entries') AS entry
             WHERE type = 'transaction.completed'
             GROUP BY 1, 2) r USING (user_id, currency)
         WHERE coalesce(b.amount, 0) <> coalesce(r.total, 0)",
    ),
    (
        "event_replay_states",
        "replaying the hold and reversal events rebuilds every balance's pending amount, every \
         transaction's status and reversed amount (invariant 5, DESIGN.md section 7)",
        "SELECT format('%s %s: pending %s, hold events replay to %s',
                       user_id, currency, coalesce(b.pending, 0), coalesce(r.total, 0))
         FROM balances b
         FULL JOIN (
             SELECT (payload->>'from_user_id')::uuid AS user_id, payload->>'currency' AS currency,
                    sum(CASE WHEN type = 'hold.created' THEN (payload->>'amount')::bigint
                             ELSE -(payload->>'released')::bigint END) AS total
             FROM events
             WHERE type IN ('hold.created', 'hold.posted', 'hold.voided', 'hold.expired')
             GROUP BY 1, 2) r USING (user_id, currency)
         WHERE coalesce(b.pending, 0) <> coalesce(r.total, 0)
         UNION ALL
         SELECT format('transaction %s: status %s, events replay to %s', t.id, t.status,
                       coalesce(e.status, 'no event'))
         FROM transactions t
         LEFT JOIN (
             SELECT DISTINCT ON (stream) stream,
                    CASE type WHEN 'hold.created' THEN 'pending'
                              ELSE split_part(type, '.', 2) END AS status
             FROM events
             WHERE stream LIKE 'transaction:%' AND type <> 'transaction.reversed'
             ORDER BY stream, seq DESC) e ON e.stream = 'transaction:' || t.id
         WHERE e.status IS DISTINCT FROM t.status
         UNION ALL
         SELECT format('transaction %s: reversed_amount %s, events replay to %s', t.id,
                       t.reversed_amount, coalesce(r.total, 0))
         FROM transactions t
         LEFT JOIN (
             SELECT (payload->>'id')::uuid AS id, sum((payload->>'amount')::bigint) AS total
             FROM events WHERE type = 'transaction.reversed' GROUP BY 1) r ON r.id = t.id
         WHERE t.reversed_amount <> coalesce(r.total, 0)",
    ),
    (
        "limit_usage",
        "what the limits count matches the ledger: each counted row is a completed debit, \
         transfer or reversal of its user (its amount), a hold of its user (its amount while \
         pending, the posted amount once posted; none once voided or expired), or a credit the \
         user gave themself; never a posting, which its hold counted (invariant 11)",
        "SELECT format('limit_usage of transaction %s (%s %s %s of user %s): %s', u.transaction_id,
                       u.direction, u.amount, u.currency, u.user_id,
                       CASE WHEN t.id IS NULL THEN 'no such transaction'
                            ELSE format('the transaction is %s %s %s of %s', t.status, t.type, t.amount,
                                        t.from_user_id) END)
         FROM limit_usage u LEFT JOIN transactions t ON t.id = u.transaction_id
         WHERE t.id IS NULL
            OR t.currency <> u.currency
            OR t.pending_id IS NOT NULL
            OR u.user_id <> CASE u.direction WHEN 'debit' THEN t.from_user_id ELSE t.to_user_id END
            OR (u.direction = 'credit' AND (t.type <> 'credit' OR t.initiated_by <> t.to_user_id))
            OR u.amount IS DISTINCT FROM CASE t.status WHEN 'completed' THEN t.amount
                                                       WHEN 'pending' THEN t.amount
                                                       WHEN 'posted' THEN t.posted_amount END",
    ),
    (
        "idempotency",
        "every idempotency key names a transaction of the same user and key (a void's names the \
         hold it voided), and each key made \
         one transaction while it was kept: two transactions of one user with one key are at \
         least idempotency.retention_hours apart (invariant 4)",
        // A key is forgotten only when it is older than the retention (`store::idempotency::
        // expire`), after which the same key is a new request. The transaction that claims it
        // again is stamped with its batch's start (`now()`), which can precede the sweep that
        // freed the key by the length of a batch: hence the minute of slack.
        "SELECT format('key %s of user %s: %s', k.key, k.user_id,
                       CASE WHEN t.id IS NULL THEN 'no transaction'
                            ELSE 'names transaction ' || t.id || ' of another user or key' END)
         FROM idempotency_keys k LEFT JOIN transactions t ON t.id = k.transaction_id
         WHERE t.id IS NULL
            OR ((t.initiated_by <> k.user_id OR t.idempotency_key IS DISTINCT FROM k.key)
                -- A void writes no transaction: its key names the hold it voided.
                AND t.status <> 'voided')
         UNION ALL
         SELECT format('key %s of user %s made transaction %s at %s and %s at %s, within the retention of %s',
                       idempotency_key, initiated_by, previous_id, previous_at, id, created_at,
                       {retention})
         FROM (SELECT id, initiated_by, idempotency_key, created_at,
                      lag(id) OVER claims AS previous_id, lag(created_at) OVER claims AS previous_at
               FROM transactions WHERE idempotency_key IS NOT NULL
               WINDOW claims AS (PARTITION BY initiated_by, idempotency_key ORDER BY created_at, id)) c
         WHERE previous_id IS NOT NULL
           AND created_at < previous_at + {retention} - interval '1 minute'",
    ),
    (
        "event_owners",
        "every event names as its owners the users its payload is about: user_a the sender \
         (from_user_id) or else user_id, user_b the recipient (to_user_id); the scope of \
         GET /events, the live feed and webhooks (the rule is V13's `event_owners`)",
        "SELECT format('event %s (%s) names owners %s and %s, its payload %s and %s',
                       e.seq, e.type, e.user_a, e.user_b, o.user_a, o.user_b)
         FROM events e, event_owners(e.payload) o
         WHERE e.user_a IS DISTINCT FROM o.user_a OR e.user_b IS DISTINCT FROM o.user_b",
    ),
];

/// Runs every check on one snapshot of the database `client` is connected to.
/// `idempotency_retention` is `idempotency.retention_hours`: a key may make a second transaction
/// only after it was forgotten (give the longest retention in force since the oldest key was
/// claimed, or a shortened retention reads as keys that were forgotten early).
///
/// Errors: a query failed (the database is unreachable, or its schema is not Tally's).
pub async fn verify(
    client: &tokio_postgres::Client,
    idempotency_retention: Duration,
) -> Result<Report, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let report = run_checks(client, idempotency_retention).await;
    // Read-only: ending it either way changes nothing.
    let end = client
        .batch_execute(if report.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    let report = report?;
    end?;
    Ok(report)
}

async fn run_checks(
    client: &tokio_postgres::Client,
    idempotency_retention: Duration,
) -> Result<Report, tokio_postgres::Error> {
    // An integer literal: nothing from outside reaches the SQL text.
    let retention = format!(
        "({}::bigint * interval '1 millisecond')",
        i64::try_from(idempotency_retention.as_millis()).unwrap_or(i64::MAX)
    );
    // The minor-unit exponents of every currency Tally accepts, as a VALUES list: codes from
    // the ISO 4217 table of `domain::Currency`, never from outside.
    let exponents = format!(
        "(VALUES {})",
        crate::domain::Currency::all()
            .into_iter()
            .map(|currency| format!("('{}', {})", currency.code(), currency.exponent()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut checks = Vec::with_capacity(CHECKS.len());
    for &(name, invariant, query) in CHECKS {
        let query = query
            .replace("{retention}", &retention)
            .replace("{exponents}", &exponents);
        let rows = client
            .query(
                &format!(
                    "SELECT detail, count(*) OVER () FROM ({query}) AS violations(detail) \
                     LIMIT {EXAMPLES_MAX}"
                ),
                &[],
            )
            .await?;
        checks.push(Check {
            name,
            invariant,
            violations: rows.first().map_or(0, |row| row.get(1)),
            examples: rows.iter().map(|row| row.get(0)).collect(),
        });
    }
    let chain = crate::store::chain::verify(client, CHAIN_PAGE).await?;
    checks.push(Check {
        name: "event_chain",
        invariant: "every sealed event's SHA-256 link recomputes from the one before it, in \
                    cursor order, and sealed events form a prefix of the log (invariant 12)",
        violations: i64::from(chain.broken.is_some()),
        examples: chain
            .broken
            .iter()
            .map(|broken| {
                format!(
                    "first broken link: event {} (cursor {}): {}",
                    broken.seq, broken.cursor, broken.detail
                )
            })
            .collect(),
    });
    let completed_transactions = client
        .query_one(
            "SELECT count(*) FROM transactions WHERE status = 'completed'",
            &[],
        )
        .await?
        .get(0);
    Ok(Report {
        checks,
        completed_transactions,
    })
}
