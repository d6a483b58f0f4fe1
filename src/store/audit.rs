//! The `audit_logs` table: security and administrative actions (who, what, when, from which IP
//! and request id). Append-only.

use deadpool_postgres::GenericClient;
use serde_json::Value;

use crate::domain::UserId;

/// One audit record. `details` carries `ip` and `request_id` plus action-specific fields
/// (before/after values, amounts); never secrets.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// `user`, `transaction`, `refresh_token`, `login`.
    pub entity_type: &'static str,
    pub entity_id: Option<String>,
    /// e.g. `user.registered`, `login.failed`, `transaction.admin_credit`.
    pub action: &'static str,
    /// Who did it; `None` for an anonymous caller (a failed login).
    pub actor: Option<UserId>,
    pub details: &'a Value,
}

pub async fn record(
    client: &impl GenericClient,
    entry: AuditEntry<'_>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO audit_logs (entity_type, entity_id, action, actor_id, details) VALUES ($1, $2, $3, $4, $5)",
            &[&entry.entity_type, &entry.entity_id, &entry.action, &entry.actor.map(UserId::as_uuid), entry.details],
        )
        .await?;
    Ok(())
}
