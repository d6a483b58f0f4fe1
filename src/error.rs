//! Every error a client can see, rendered in one place as `application/problem+json`
//! (RFC 9457): `{type, title, status, detail, code}` plus `errors` for validation and
//! `transaction_id` for a recorded business rejection. Causes are logged, never sent.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use uuid::Uuid;

/// One invalid field of a request: `field` is its JSON name (or `header:<name>`, `query:<name>`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The closed set of failures the REST API reports. Each maps to one status and one stable
/// `code` (DESIGN.md section 4) that clients may rely on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_request`: the body is not JSON, or not a JSON object.
    #[error("{0}")]
    MalformedRequest(String),
    /// 422 `validation_failed` with one entry per bad field.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// 415 `unsupported_media_type`: a body that is not `application/json`.
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// 413 `payload_too_large`.
    #[error("the body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(&'static str),
    /// 405 `method_not_allowed`.
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    /// 409 with a specific code (`username_taken`, `email_taken`, `balance_not_zero`).
    #[error("{detail}")]
    Conflict {
        code: &'static str,
        detail: &'static str,
    },
    /// 422 `insufficient_funds`: recorded as the `failed` transaction `transaction_id`.
    #[error("the source account's available balance is lower than the amount")]
    InsufficientFunds { transaction_id: Uuid },
    /// 422 `limit_exceeded`: a configured limit (DESIGN.md section 8) or a bound of invariant 7
    /// would be crossed. `detail` is what the client is shown beside the code (`limit: {kind, currency,
    /// value, window_s?}`, `used`, `requested`, `remaining`, minor units), as stored on the
    /// failed transaction `transaction_id` (none in an atomic bulk, which records nothing).
    #[error("the movement would exceed a limit")]
    LimitExceeded {
        transaction_id: Option<Uuid>,
        detail: serde_json::Value,
    },
    /// 422 `bulk_failed`: an atomic bulk of which some item failed, so none was applied;
    /// `results` says which item failed and why (the others are `not_applied`).
    #[error("an item of the atomic bulk failed, so none was applied")]
    BulkFailed { results: serde_json::Value },
    /// 409 `hold_not_pending`: the hold `transaction_id` was resolved before (its `hold_status`
    /// says how: `posted`, `voided` or `expired`), or its deadline has passed.
    #[error("the hold is not pending: it is {hold_status}")]
    HoldNotPending {
        transaction_id: Uuid,
        hold_status: &'static str,
    },
    /// 422 `reversal_exceeds_amount`: a reversal of more than is left of `transaction_id`
    /// (`remaining`, minor units).
    #[error("the reversal exceeds what is left to reverse: {remaining}")]
    ReversalExceedsAmount {
        transaction_id: Uuid,
        remaining: i64,
    },
    /// 422 `exceeds_hold`: a posting of more than the hold `transaction_id` holds (`held`).
    #[error("the posting exceeds the held amount of {held}")]
    ExceedsHold { transaction_id: Uuid, held: i64 },
    /// 422 `rate_unavailable`: no current exchange rate for the pair (none configured, or past
    /// its `valid_until`; an inverse rate is never implied).
    #[error("no current exchange rate from {from} to {to}")]
    RateUnavailable {
        from: &'static str,
        to: &'static str,
    },
    /// 422 `idempotency_key_reused`: the key was first used with another request body.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// 429 `rate_limited` with `Retry-After`: too many requests from this client IP (`/auth/*`)
    /// or this user (everything else).
    #[error("too many requests; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// 429 `login_locked` with `Retry-After`: too many failed logins for this username.
    #[error("too many failed logins for this username; retry after {retry_after_s} s")]
    LoginLocked { retry_after_s: u64 },
    /// 503 `overloaded` with `Retry-After`: the submission queue is full.
    #[error("the transaction queue is full; retry later")]
    Overloaded { retry_after_s: u64 },
    /// 503 `unavailable` with `Retry-After`: the database cannot be reached or did not answer in
    /// time. Nothing was acknowledged; a retry with the same Idempotency-Key is safe.
    #[error("the ledger database is unavailable; retry later with the same Idempotency-Key")]
    Unavailable,
    /// 426 `upgrade_required` with `Upgrade: websocket`: the live feed was asked for without a
    /// WebSocket handshake.
    #[error("this endpoint is a WebSocket: send the upgrade handshake")]
    UpgradeRequired,
    /// 429 `too_many_connections` with `Retry-After`: this user has
    /// `feed.max_connections_per_user` feed connections open on this instance.
    #[error("too many live feed connections for this user; close one first")]
    TooManyConnections,
    /// 503 `feed_full` with `Retry-After`: the instance has `feed.max_connections` feed
    /// connections open, or is shutting down.
    #[error("this instance takes no more live feed connections; retry later")]
    FeedFull,
    /// 500 `internal`: a bug or an unexpected failure, logged with its cause chain.
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

/// The problem+json body (RFC 9457) of every error reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:tally:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// Stable machine-readable code (`validation_failed`, `insufficient_funds`, ...).
    pub code: &'static str,
    /// With `validation_failed`: one entry per bad field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// With `insufficient_funds`: the `failed` transaction that records the rejection; with
    /// `hold_not_pending` and `exceeds_hold`: the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<Uuid>,
    /// With `hold_not_pending`: how the hold ended (`posted`, `voided` or `expired`; `expired`
    /// too when its deadline has passed and the sweeper has not released it yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_status: Option<&'static str>,
    /// With `bulk_failed`: one result per item, in request order (`BulkResult`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub results: Option<serde_json::Value>,
    /// With `limit_exceeded`: the limit crossed, `{kind, currency, value, window_s}` (`kind`
    /// is a configured kind, or `balance_max` or `supply` for the bounds of invariant 7).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limit: Option<serde_json::Value>,
    /// With `limit_exceeded`: what the limit had counted before this movement, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
    /// With `limit_exceeded`: what this movement asked for, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<i64>,
    /// With `limit_exceeded`: what the limit still allows; with `reversal_exceeds_amount`: what
    /// is left to reverse; minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// With `exceeds_hold`: what the hold holds, the most a posting may be; minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<i64>,
}

impl ApiError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedRequest(_) => "malformed_request",
            ApiError::Validation(_) => "validation_failed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { code, .. } => code,
            ApiError::InsufficientFunds { .. } => "insufficient_funds",
            ApiError::LimitExceeded { .. } => "limit_exceeded",
            ApiError::BulkFailed { .. } => "bulk_failed",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RateUnavailable { .. } => "rate_unavailable",
            ApiError::HoldNotPending { .. } => "hold_not_pending",
            ApiError::ExceedsHold { .. } => "exceeds_hold",
            ApiError::ReversalExceedsAmount { .. } => "reversal_exceeds_amount",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::LoginLocked { .. } => "login_locked",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Unavailable => "unavailable",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::FeedFull => "feed_full",
            ApiError::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::MalformedRequest(_) => "Malformed request",
            ApiError::Validation(_) => "Validation failed",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::InsufficientFunds { .. } => "Insufficient funds",
            ApiError::LimitExceeded { .. } => "Limit exceeded",
            ApiError::BulkFailed { .. } => "Bulk failed",
            ApiError::IdempotencyKeyReused => "Idempotency key reused",
            ApiError::RateUnavailable { .. } => "Rate unavailable",
            ApiError::HoldNotPending { .. } => "Hold not pending",
            ApiError::ExceedsHold { .. } => "Exceeds hold",
            ApiError::ReversalExceedsAmount { .. } => "Reversal exceeds amount",
            ApiError::RateLimited { .. } => "Too many requests",
            ApiError::LoginLocked { .. } => "Login locked",
            ApiError::Overloaded { .. } => "Overloaded",
            ApiError::Unavailable => "Service unavailable",
            ApiError::UpgradeRequired => "Upgrade required",
            ApiError::TooManyConnections => "Too many connections",
            ApiError::FeedFull => "Feed full",
            ApiError::Internal(_) => "Internal error",
        }
    }

    /// The problem+json body of this error (also embedded per item in bulk results).
    pub fn problem(&self) -> Problem {
        let code = self.code();
        let limit_detail = match self {
            ApiError::LimitExceeded { detail, .. } => Some(detail),
            _ => None,
        };
        let figure = |name: &str| limit_detail.and_then(|detail| detail[name].as_i64());
        Problem {
            kind: format!("urn:tally:problem:{code}"),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            code,
            errors: match self {
                ApiError::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
            hold_status: match self {
                ApiError::HoldNotPending { hold_status, .. } => Some(hold_status),
                _ => None,
            },
            transaction_id: match self {
                ApiError::InsufficientFunds { transaction_id }
                | ApiError::HoldNotPending { transaction_id, .. }
                | ApiError::ExceedsHold { transaction_id, .. }
                | ApiError::ReversalExceedsAmount { transaction_id, .. } => Some(*transaction_id),
                ApiError::LimitExceeded { transaction_id, .. } => *transaction_id,
                _ => None,
            },
            results: match self {
                ApiError::BulkFailed { results } => Some(results.clone()),
                _ => None,
            },
            limit: limit_detail.map(|detail| detail["limit"].clone()),
            used: figure("used"),
            requested: figure("requested"),
            remaining: match self {
                ApiError::ReversalExceedsAmount { remaining, .. } => Some(*remaining),
                _ => figure("remaining"),
            },
            held: match self {
                ApiError::ExceedsHold { held, .. } => Some(*held),
                _ => None,
            },
        }
    }

    /// The problem of a movement a posting rule refused, recorded as `transaction_id` (none
    /// when nothing was recorded).
    pub fn refused(refusal: &crate::domain::Refusal, transaction_id: Option<Uuid>) -> ApiError {
        match refusal {
            crate::domain::Refusal::InsufficientFunds => ApiError::InsufficientFunds {
                transaction_id: transaction_id.unwrap_or_default(),
            },
            crate::domain::Refusal::LimitExceeded(_) => ApiError::LimitExceeded {
                transaction_id,
                detail: crate::store::journal::failure_detail(refusal).unwrap_or_default(),
            },
        }
    }

    /// The problem a stored failed transaction was answered with (for idempotent replays):
    /// from its `failure_reason` and `failure_detail`.
    pub fn recorded_failure(
        transaction_id: Uuid,
        reason: Option<&str>,
        detail: Option<&serde_json::Value>,
    ) -> ApiError {
        match reason {
            Some("limit_exceeded") => ApiError::LimitExceeded {
                transaction_id: Some(transaction_id),
                detail: detail.cloned().unwrap_or_default(),
            },
            _ => ApiError::InsufficientFunds { transaction_id },
        }
    }

    /// A validation error about a single field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_)
            | ApiError::InsufficientFunds { .. }
            | ApiError::LimitExceeded { .. }
            | ApiError::BulkFailed { .. }
            | ApiError::ExceedsHold { .. }
            | ApiError::ReversalExceedsAmount { .. }
            | ApiError::RateUnavailable { .. }
            | ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::HoldNotPending { .. } => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. }
            | ApiError::LoginLocked { .. }
            | ApiError::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } | ApiError::Unavailable | ApiError::FeedFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = ?cause, "internal error");
        }
        let problem = self.problem();
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        match self {
            ApiError::Overloaded { retry_after_s }
            | ApiError::RateLimited { retry_after_s }
            | ApiError::LoginLocked { retry_after_s } => {
                response.insert_header((header::RETRY_AFTER, retry_after_s.to_string()));
            }
            ApiError::Unavailable | ApiError::FeedFull | ApiError::TooManyConnections => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::UpgradeRequired => {
                response.insert_header((header::UPGRADE, "websocket"));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.body(serde_json::to_string(&problem).expect("a problem always serializes"))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> ApiError {
        tracing::warn!(%error, "no database connection");
        ApiError::Unavailable
    }
}

impl From<crate::store::AcquireError> for ApiError {
    fn from(error: crate::store::AcquireError) -> ApiError {
        match error {
            // The health check already logged the outage; one line per request would flood.
            crate::store::AcquireError::DatabaseDown => ApiError::Unavailable,
            crate::store::AcquireError::Pool(error) => ApiError::from(error),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> ApiError {
        if crate::store::is_connection_error(&error) {
            tracing::warn!(%error, "database connection lost");
            ApiError::Unavailable
        } else if crate::store::is_timeout(&error) {
            // `database.lock_timeout_ms` or `database.statement_timeout_ms` ran out: the
            // database is busy (or another session holds a lock too long), not wrong; nothing
            // was written, and a retry may pass.
            tracing::warn!(%error, "database statement timed out");
            ApiError::Unavailable
        } else {
            ApiError::Internal(anyhow::Error::new(error).context("database query"))
        }
    }
}
