//! The `login_failures` table: counts failed logins per login name to lock it after
//! `lockout_threshold` failures within `lockout_window_s`, for `lockout_duration_s`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

/// Lockout rules (from `[auth]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub threshold: u32,
    pub window_s: u64,
    pub duration_s: u64,
}

/// Until when `login` is locked, if it is now.
pub async fn locked_until(
    client: &impl GenericClient,
    login: &str,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT locked_until FROM login_failures WHERE login = lower($1) AND locked_until > now()",
            &[&login],
        )
        .await?;
    Ok(row.and_then(|row| row.get(0)))
}

/// Counts one failure (atomically, so concurrent attempts are all counted) and returns the lock
/// end when this failure reached the threshold.
pub async fn record_failure(
    client: &impl GenericClient,
    login: &str,
    policy: LockoutPolicy,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let window = i64::try_from(policy.window_s).unwrap_or(i64::MAX / 2);
    let duration = i64::try_from(policy.duration_s).unwrap_or(i64::MAX / 2);
    let threshold = i32::try_from(policy.threshold).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "INSERT INTO login_failures AS f (login, failures, window_started)
             VALUES (lower($1), 1, now())
             ON CONFLICT (login) DO UPDATE SET
                 failures = CASE WHEN f.window_started < now() - $2::bigint * interval '1 second'
                                 THEN 1 ELSE f.failures + 1 END,
                 window_started = CASE WHEN f.window_started < now() - $2::bigint * interval '1 second'
                                       THEN now() ELSE f.window_started END,
                 locked_until = NULL
             RETURNING failures",
            &[&login, &window],
        )
        .await?;
    let failures: i32 = row.get(0);
    if failures < threshold {
        return Ok(None);
    }
    let row = client
        .query_one(
            "UPDATE login_failures SET locked_until = now() + $2::bigint * interval '1 second', failures = 0,
                                       window_started = now()
             WHERE login = lower($1) RETURNING locked_until",
            &[&login, &duration],
        )
        .await?;
    Ok(row.get(0))
}

/// Forgets the failures of `login` after a successful login.
pub async fn clear(client: &impl GenericClient, login: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM login_failures WHERE login = lower($1)",
            &[&login],
        )
        .await?;
    Ok(())
}
