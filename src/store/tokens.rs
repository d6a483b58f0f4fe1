//! The `refresh_tokens` table: opaque refresh tokens, stored as SHA-256 hashes, rotated on every
//! use; reuse of a rotated token revokes its whole family.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::domain::{Role, UserId};

/// Stores a new refresh token (its hash) in `family_id`, valid until `expires_at`.
pub async fn insert(
    client: &impl GenericClient,
    user: UserId,
    family_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &user.as_uuid(), &family_id, &token_hash, &expires_at],
        )
        .await?;
    Ok(id)
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is revoked and `new_hash` replaces it in the same family.
    Rotated { user: UserId, role: Role },
    /// The token had already been rotated or revoked: the whole family is now revoked.
    Reused { user: UserId },
    /// Unknown, expired, or its user is deleted.
    Invalid,
}

/// Rotates the token whose hash is `presented_hash` to `new_hash`, atomically (the row is locked,
/// so two concurrent uses of one token cannot both succeed).
pub async fn rotate(
    client: &mut Client,
    presented_hash: &[u8],
    new_hash: &[u8],
    new_expires_at: DateTime<Utc>,
) -> Result<Rotation, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let row = transaction
        .query_opt(
            "SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, u.role, u.deleted_at
             FROM refresh_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1
             FOR UPDATE OF t",
            &[&presented_hash],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    let id: Uuid = row.get("id");
    let family_id: Uuid = row.get("family_id");
    let user = UserId::from_uuid(row.get("user_id"));
    if row.get::<_, Option<DateTime<Utc>>>("revoked_at").is_some() {
        transaction
            .execute(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
                &[&family_id],
            )
            .await?;
        transaction.commit().await?;
        return Ok(Rotation::Reused { user });
    }
    let expired = row.get::<_, DateTime<Utc>>("expires_at") <= Utc::now();
    let deleted = row.get::<_, Option<DateTime<Utc>>>("deleted_at").is_some();
    if expired || deleted {
        return Ok(Rotation::Invalid);
    }
    let role = Role::parse(row.get("role")).expect("users.role is constrained to known roles");
    let new_id = insert(&transaction, user, family_id, new_hash, new_expires_at).await?;
    transaction
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now(), replaced_by = $2 WHERE id = $1",
            &[&id, &new_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(Rotation::Rotated { user, role })
}

/// Revokes every live refresh token of `user` (after a password change); returns how many.
pub async fn revoke_all_for_user(
    client: &impl GenericClient,
    user: UserId,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user.as_uuid()],
        )
        .await
}

/// Logout: revokes the family of the token whose hash is `token_hash`. Returns its user, or
/// `None` for an unknown token.
pub async fn revoke_family(
    client: &impl GenericClient,
    token_hash: &[u8],
) -> Result<Option<UserId>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "WITH t AS (SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1),
                  revoked AS (UPDATE refresh_tokens SET revoked_at = now()
                              WHERE family_id = (SELECT family_id FROM t) AND revoked_at IS NULL)
             SELECT user_id FROM t",
            &[&token_hash],
        )
        .await?;
    Ok(row.map(|row| UserId::from_uuid(row.get(0))))
}
