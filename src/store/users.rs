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

const COLUMNS: &str = "id, username, email, role, created_at, updated_at";

fn record(row: &tokio_postgres::Row) -> UserRecord {
    UserRecord {
        id: UserId::from_uuid(row.get("id")),
        username: row.get("username"),
        email: row.get("email"),
        role: Role::parse(row.get("role")).expect("users.role is constrained to known roles"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
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
    let statement = format!(
        "INSERT INTO users (id, username, email, password_hash, role) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
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
