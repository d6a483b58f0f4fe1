//! What the money endpoints share: the transaction on the wire, the `Idempotency-Key` header,
//! replays from a stored key, and the problems for what the pipeline answered. Used by the
//! single-request handlers (`transactions`) and the bulk endpoint (`bulk`), which depend on it
//! and not on each other.

use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::AppState;
use crate::domain::{
    IdempotencyKey, Movement, Phase, Refusal, TransactionKind, TransactionStatus, UserId,
};
use crate::error::ApiError;
use crate::ledger::{Recorded, SubmitError};
use crate::store::{self, transactions::TransactionRecord};

/// Header naming the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Header set on a reply that repeats a stored result.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// A transaction on the wire (DESIGN.md section 4). The system side of a credit or debit is
/// `null`. Amounts are integers of minor units.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TransactionBody {
    pub id: Uuid,
    /// `credit`, `debit`, `transfer`, `reversal` or `exchange`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `completed` or `failed`; a hold is `pending` until it is `posted`, `voided` or
    /// `expired`.
    pub status: &'static str,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Option<Uuid>,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A hold's deadline: it cannot be posted or voided from then on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// A hold's: when it was posted, voided or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// A posted hold's: the amount posted (the rest was released), minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posted_amount: Option<i64>,
    /// A posted hold's: the posting transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posting_id: Option<Uuid>,
    /// A posting's: the hold it posts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<Uuid>,
    /// A reversal's: the transaction it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reversal_of: Option<Uuid>,
    /// A reversal's: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A reversed transaction's: the sum of its reversals so far, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reversed_amount: Option<i64>,
    /// A reversed transaction's completed reversals, oldest first (`GET /transactions/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reversals: Option<Vec<Uuid>>,
    /// An exchange's (or its reversal's): what `to_user_id` got, and how it was priced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeBody>,
    /// A scheduled run's: the schedule, and which occurrence (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<i64>,
}

/// The other side of an exchange and its pricing (DESIGN.md section 9). `amount`/`currency` of
/// the transaction are what `from_user_id` gave; these are what `to_user_id` got.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExchangeBody {
    /// Minor units of `to_currency`, rounded down from the exact conversion.
    pub to_amount: i64,
    pub to_currency: String,
    /// Target major units per source major unit of the exchange, as a decimal string.
    pub rate: String,
    /// Where the rate came from (the admin's `source`).
    pub rate_source: String,
    /// The spread kept by the house, in basis points, and its amount in minor units of the
    /// currency the exchange sold (rounded up).
    pub spread_bps: i32,
    pub fee: i64,
    /// The quote that fixed the rate, when one did.
    pub quote_id: Option<Uuid>,
}

impl ExchangeBody {
    fn of(movement: &Movement) -> Option<ExchangeBody> {
        let exchange = movement.exchange_details()?;
        let (to_amount, to_currency) = if movement.reversal().is_some() {
            (exchange.sold, exchange.sold_currency)
        } else {
            (exchange.bought, exchange.bought_currency)
        };
        Some(ExchangeBody {
            to_amount: to_amount.minor(),
            to_currency: to_currency.code().to_owned(),
            rate: exchange.rate.to_string(),
            rate_source: exchange.rate_source.clone(),
            spread_bps: i32::try_from(exchange.spread_bps).unwrap_or(i32::MAX),
            fee: exchange.fee,
            quote_id: exchange.quote,
        })
    }
}

fn party(user: UserId) -> Option<Uuid> {
    (!user.is_system()).then(|| user.as_uuid())
}

impl From<TransactionRecord> for TransactionBody {
    fn from(record: TransactionRecord) -> TransactionBody {
        TransactionBody {
            id: record.id,
            kind: record.kind.as_str(),
            status: record.status.as_str(),
            from_user_id: party(record.from),
            to_user_id: party(record.to),
            amount: record.amount,
            currency: record.currency,
            description: record.description,
            reference: record.reference,
            failure_reason: record.failure_reason,
            created_at: record.created_at,
            completed_at: record.completed_at,
            expires_at: record.expires_at,
            resolved_at: record.resolved_at,
            posted_amount: record.posted_amount,
            posting_id: record.posting_id,
            pending_id: record.pending_id,
            reversal_of: record.reversal_of,
            reason: record.reason,
            reversed_amount: (record.reversed_amount > 0).then_some(record.reversed_amount),
            reversals: None,
            exchange: record.exchange.map(|exchange| ExchangeBody {
                to_amount: exchange.to_amount,
                to_currency: exchange.to_currency,
                rate: exchange.rate.normalize().to_string(),
                rate_source: exchange.rate_source,
                spread_bps: exchange.spread_bps,
                fee: exchange.fee,
                quote_id: exchange.quote_id,
            }),
            schedule_id: record.schedule_id,
            occurrence: record.occurrence,
        }
    }
}

impl TransactionBody {
    /// The transaction the ledger just wrote for `movement`: completed (a hold: pending until
    /// its deadline, which is its commit time plus its timeout), or failed with `refusal`'s
    /// reason.
    pub(crate) fn committed(
        movement: &Movement,
        refusal: Option<&Refusal>,
        recorded: Recorded,
    ) -> TransactionBody {
        let (status, expires_at) = match (refusal, movement.phase()) {
            (Some(_), _) => (TransactionStatus::Failed, None),
            (None, Phase::Hold { timeout_s }) => (
                TransactionStatus::Pending,
                Some(recorded.created_at + chrono::Duration::seconds(i64::from(timeout_s))),
            ),
            (None, _) => (TransactionStatus::Completed, None),
        };
        let pending_id = match movement.phase() {
            Phase::Post { hold, .. } => Some(hold),
            _ => None,
        };
        TransactionBody {
            id: movement.id(),
            kind: movement.kind().as_str(),
            status: status.as_str(),
            from_user_id: party(movement.from()),
            to_user_id: party(movement.to()),
            amount: movement.amount().minor(),
            currency: movement.currency().code().to_owned(),
            description: movement.description().map(|d| d.as_str().to_owned()),
            reference: movement.reference().map(|r| r.as_str().to_owned()),
            failure_reason: refusal.map(|refusal| refusal.reason().to_owned()),
            created_at: recorded.created_at,
            completed_at: (status == TransactionStatus::Completed)
                .then_some(recorded.completed_at)
                .flatten(),
            expires_at,
            resolved_at: None,
            posted_amount: None,
            posting_id: None,
            pending_id,
            reversal_of: movement.reversal().map(|reversal| reversal.of),
            reason: movement
                .reversal()
                .map(|reversal| reversal.reason.as_str().to_owned()),
            reversed_amount: None,
            reversals: None,
            exchange: ExchangeBody::of(movement),
            schedule_id: movement.schedule().map(|(schedule, _)| schedule),
            occurrence: movement.schedule().map(|(_, occurrence)| occurrence),
        }
    }
}

/// Why a movement on another user's account was refused.
pub(crate) const ONLY_ADMIN: &str = "only an admin may move money on another user's account";

/// `refusal`, unless `movement` carries an idempotency key already stored for its initiator:
/// then the stored result (replayed) or `idempotency_key_reused` (another body), because the
/// key is decided before any other check (invariant 4): a request the initiator could make
/// then is answered the same after their role or a party changed.
pub(crate) async fn replay_or(
    state: &AppState,
    movement: &Movement,
    refusal: ApiError,
) -> Result<HttpResponse, ApiError> {
    let Some(claim) = &movement.idempotency() else {
        return Err(refusal);
    };
    let stored = async {
        let client = state.pool.get().await?;
        let found =
            store::idempotency::find_many(&client, movement.initiated_by(), &[claim.key.as_str()])
                .await?;
        Ok::<_, ApiError>(found.into_iter().next())
    };
    match stored.await? {
        Some((_, stored)) if stored.request_hash[..] == claim.request_hash[..] => {
            replay(state, stored.transaction_id).await
        }
        Some(_) => Err(ApiError::IdempotencyKeyReused),
        None => Err(refusal),
    }
}

/// The keys of scheduled runs begin with this (`schedule:<id>:<occurrence>[:<attempt>]`); a
/// client may not use it, or it could claim a run's key before the run and take its place.
pub const RESERVED_KEY_PREFIX: &str = "schedule:";

/// The request's `Idempotency-Key`, if any.
///
/// Errors: 422 on the header for a key that is not 1 to 255 visible ASCII characters, or that
/// begins with [`RESERVED_KEY_PREFIX`].
pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|text| IdempotencyKey::parse(text).ok())
        .ok_or_else(|| {
            ApiError::field(IDEMPOTENCY_KEY, "must be 1 to 255 visible ASCII characters")
        })?;
    if key.as_str().starts_with(RESERVED_KEY_PREFIX) {
        return Err(ApiError::field(
            IDEMPOTENCY_KEY,
            format!("must not begin with `{RESERVED_KEY_PREFIX}`, which scheduled runs use"),
        ));
    }
    Ok(Some(key))
}

/// The problem for a submission the pipeline could not settle.
pub(crate) fn submit_error(error: SubmitError, state: &AppState) -> ApiError {
    match error {
        SubmitError::Overloaded => ApiError::Overloaded {
            retry_after_s: state.settings.pipeline.retry_after_s,
        },
        SubmitError::Unavailable => ApiError::Unavailable,
        error @ SubmitError::Internal(_) => ApiError::Internal(anyhow::Error::new(error)),
    }
}

/// The problem for a movement naming an unknown or deleted user: 401 when it is the caller
/// (a token outlives its user), else 422 naming the field that carried the user.
pub(crate) fn inactive_party(movement: &Movement, user: UserId) -> ApiError {
    if user == movement.initiated_by() {
        return ApiError::Unauthorized("the user of this access token no longer exists");
    }
    let field = if movement.kind() == TransactionKind::Transfer && user == movement.to() {
        "to_user_id"
    } else {
        "user_id"
    };
    ApiError::field(field, "no such user")
}

/// The reply the first request with this key got, rebuilt from its transaction.
pub(crate) async fn replay(
    state: &AppState,
    transaction_id: Uuid,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await?;
    let record = store::transactions::find(&client, transaction_id)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "idempotency key points at missing {transaction_id}"
            ))
        })?;
    match record.status {
        TransactionStatus::Failed => Err(ApiError::recorded_failure(
            transaction_id,
            record.failure_reason.as_deref(),
            record.failure_detail.as_ref(),
        )),
        _ => {
            // An acknowledgement like the first reply: not while this process may have lost a
            // write-through that no invalidation has made up for (see `BalanceCache`).
            if !state.cache.ready_to_acknowledge().await {
                return Err(ApiError::Unavailable);
            }
            Ok(replayed(created(TransactionBody::from(record))))
        }
    }
}

pub(crate) fn created(body: TransactionBody) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/transactions/{}", body.id)))
        .json(body)
}

/// `response`, marked as the repeat of a stored result (`Idempotent-Replayed: true`).
pub(crate) fn replayed(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    response
}
