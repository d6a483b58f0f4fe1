//! The `users` table.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::domain::{Email, Role, UserId, Username};

/// A user as stored, without the password hash.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when the user was (softly) deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("username taken")]
    UsernameTaken,
    #[error("email taken")]
    EmailTaken,
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

const COLUMNS: &str = "id, username, email, role, created_at, updated_at, deleted_at";

/// Wraps `change` (an INSERT or UPDATE of `users` ending in `RETURNING *`) so that the same
/// statement appends one `event_type` event per changed row on the stream `user:<id>`, with the
/// user as it is after the change (never its password hash) and `extra`, a SQL expression
/// yielding a JSON object merged into the payload. Invariant 12: the event commits exactly when
/// the change does.
fn logged(change: &str, event_type: &str, extra: &str) -> String {
    format!(
        "WITH changed AS ({change}), logged AS (
             INSERT INTO events (stream, type, payload)
             SELECT 'user:' || id, '{event_type}',
                    jsonb_build_object('user_id', id, 'username', username, 'email', email,
                                       'role', role, 'created_at', created_at,
                                       'updated_at', updated_at, 'deleted_at', deleted_at)
                    || {extra}
             FROM changed
         )
         SELECT {COLUMNS} FROM changed"
    )
}

fn record(row: &tokio_postgres::Row) -> UserRecord {
    UserRecord {
        id: UserId::from_uuid(row.get("id")),
        username: row.get("username"),
        email: row.get("email"),
        role: Role::parse(row.get("role")).expect("users.role is constrained to known roles"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        deleted_at: row.get("deleted_at"),
    }
}

fn unique_violation(error: tokio_postgres::Error) -> InsertUserError {
    if error.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return InsertUserError::Database(error);
    }
    let constraint = error
        .as_db_error()
        .and_then(|db| db.constraint())
        .unwrap_or_default();
    if constraint == "users_email_key" {
        InsertUserError::EmailTaken
    } else {
        InsertUserError::UsernameTaken
    }
}

/// Inserts a new user with role `role`. Errors: username or email already used (without regard
/// to case, deleted users included).
pub async fn insert(
    client: &impl GenericClient,
    id: UserId,
    username: &Username,
    email: &Email,
    password_hash: &str,
    role: Role,
) -> Result<UserRecord, InsertUserError> {
    let statement = logged(
        "INSERT INTO users (id, username, email, password_hash, role) VALUES ($1, $2, $3, $4, $5) RETURNING *",
        "user.created",
        "'{}'::jsonb",
    );
    match client
        .query_one(
            &statement,
            &[
                &id.as_uuid(),
                &username.as_str(),
                &email.as_str(),
                &password_hash,
                &role.as_str(),
            ],
        )
        .await
    {
        Ok(row) => Ok(record(&row)),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let constraint = error
                .as_db_error()
                .and_then(|db| db.constraint())
                .unwrap_or_default();
            if constraint == "users_email_key" {
                Err(InsertUserError::EmailTaken)
            } else {
                Err(InsertUserError::UsernameTaken)
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// The active (not deleted, not `system`) user whose username or email is `login`, with the
/// password hash.
pub async fn find_for_login(
    client: &impl GenericClient,
    login: &str,
) -> Result<Option<(UserRecord, String)>, tokio_postgres::Error> {
    let statement = format!(
        "SELECT {COLUMNS}, password_hash FROM users
         WHERE (lower(username) = lower($1) OR lower(email) = lower($1))
           AND deleted_at IS NULL AND role <> 'system'
         LIMIT 1"
    );
    let row = client.query_opt(&statement, &[&login]).await?;
    Ok(row.map(|row| (record(&row), row.get("password_hash"))))
}

/// The active user `id`, or `None` when unknown, deleted or `system`.
pub async fn find_active(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<UserRecord>, tokio_postgres::Error> {
    let statement = format!(
        "SELECT {COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL AND role <> 'system'"
    );
    Ok(client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| record(&row)))
}

/// The user `id` (deleted users included, `system` excluded), or `None`.
pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<UserRecord>, tokio_postgres::Error> {
    let statement = format!("SELECT {COLUMNS} FROM users WHERE id = $1 AND role <> 'system'");
    Ok(client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| record(&row)))
}

/// Up to `limit` users (deleted included, `system` excluded) ordered by id (time-ordered UUIDs),
/// strictly after `after`.
pub async fn list(
    client: &impl GenericClient,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UserRecord>, tokio_postgres::Error> {
    let statement = format!(
        "SELECT {COLUMNS} FROM users WHERE role <> 'system' AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    );
    Ok(client
        .query(&statement, &[&after, &limit])
        .await?
        .iter()
        .map(record)
        .collect())
}

/// What an update changes; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct UserChanges<'a> {
    pub email: Option<&'a Email>,
    pub password_hash: Option<&'a str>,
    pub role: Option<Role>,
}

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateUserError {
    #[error("email taken")]
    EmailTaken,
    /// The change would take the admin role from the last active admin.
    #[error("last admin")]
    LastAdmin,
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

/// Applies `changes` to the active user `id`; `None` when there is no such user. A change of
/// role away from `admin` is refused for the last active admin, race-free ([`only_admin`]: two
/// admins demoting each other at once, through any number of processes, leave one).
/// Errors: the email is taken; the last admin.
pub async fn update(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    changes: &UserChanges<'_>,
) -> Result<Option<UserRecord>, UpdateUserError> {
    let transaction = client.transaction().await?;
    if changes.role.is_some_and(|role| role != Role::Admin) && only_admin(&transaction, id).await? {
        return Err(UpdateUserError::LastAdmin);
    }
    let statement = logged(
        "UPDATE users SET email = coalesce($2, email), password_hash = coalesce($3, password_hash),
                          role = coalesce($4, role), updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL AND role <> 'system'
         RETURNING *",
        "user.updated",
        "jsonb_build_object('password_changed', $3::text IS NOT NULL)",
    );
    let row = transaction
        .query_opt(
            &statement,
            &[
                &id,
                &changes.email.map(Email::as_str),
                &changes.password_hash,
                &changes.role.map(Role::as_str),
            ],
        )
        .await
        .map_err(|error| match unique_violation(error) {
            InsertUserError::Database(error) => UpdateUserError::Database(error),
            InsertUserError::EmailTaken | InsertUserError::UsernameTaken => {
                UpdateUserError::EmailTaken
            }
        })?;
    transaction.commit().await?;
    Ok(row.map(|row| record(&row)))
}

/// Locks the user `id` and every active admin (`FOR UPDATE`, one statement, in id order: the
/// order in which the group commit share-locks users, so the two cannot deadlock) and returns
/// whether `id` is the only active admin. Held to the end of `transaction`, the locks make
/// "is there another admin" and the demotion or deletion that follows one step: a concurrent
/// demotion or deletion of another admin waits, then sees this one's outcome (READ COMMITTED
/// re-checks a locked row's latest version, so a row demoted meanwhile no longer counts).
async fn only_admin(
    transaction: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let admins: Vec<Uuid> = transaction
        .query(
            "SELECT id, role FROM users
             WHERE (id = $1 OR role = 'admin') AND deleted_at IS NULL AND role <> 'system'
             ORDER BY id
             FOR UPDATE",
            &[&id],
        )
        .await?
        .iter()
        .filter(|row| row.get::<_, &str>(1) == Role::Admin.as_str())
        .map(|row| row.get(0))
        .collect();
    Ok(admins == [id])
}

/// Why a delete was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeleteUserError {
    #[error("no such user")]
    NotFound,
    /// Some balance is not zero; the money must be moved out first.
    #[error("balance not zero")]
    BalanceNotZero,
    /// The user is the last active admin.
    #[error("last admin")]
    LastAdmin,
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

/// Soft-deletes the active user `id`: it can no longer log in or receive money; its ledger
/// history stays. Refused while any of its balances is not zero, and for the last active admin
/// (race-free, see [`only_admin`]). The user row (with every admin's) and then the balance rows
/// are locked for the checks, so a commit touching them waits for the delete (or the delete
/// for it).
pub async fn soft_delete(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
) -> Result<UserRecord, DeleteUserError> {
    let transaction = client.transaction().await?;
    let last_admin = only_admin(&transaction, id).await?;
    // Locked by `only_admin` when it exists.
    let user = transaction
        .query_opt(
            "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL AND role <> 'system'",
            &[&id],
        )
        .await?;
    if user.is_none() {
        return Err(DeleteUserError::NotFound);
    }
    if last_admin {
        return Err(DeleteUserError::LastAdmin);
    }
    let non_zero: i64 = transaction
        .query(
            "SELECT amount FROM balances WHERE user_id = $1 ORDER BY currency FOR UPDATE",
            &[&id],
        )
        .await?
        .iter()
        .filter(|row| row.get::<_, i64>(0) != 0)
        .count() as i64;
    if non_zero > 0 {
        return Err(DeleteUserError::BalanceNotZero);
    }
    let statement = logged(
        "UPDATE users SET deleted_at = now(), updated_at = now() WHERE id = $1 RETURNING *",
        "user.deleted",
        "'{}'::jsonb",
    );
    let row = transaction.query_one(&statement, &[&id]).await?;
    transaction
        .execute("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", &[&id])
        .await?;
    transaction.commit().await?;
    Ok(record(&row))
}

/// Which of `ids` are active users (not deleted, not `system`).
pub async fn active_among(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM users WHERE id = ANY($1) AND deleted_at IS NULL AND role <> 'system'",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
