//! `POST /api/v1/transactions/{credit,debit,transfer}`, `GET /api/v1/transactions/{id}` and
//! `GET /api/v1/transactions/history`.
//!
//! A POST is validated and authorized here, then submitted to the ledger pipeline, and answered
//! only after its group commit (invariant 3). With an `Idempotency-Key` header, a repeat of the
//! same request by the same user returns the first result and applies nothing (invariant 4).

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::DateTime;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::posting::{
    created, idempotency_key, inactive_party, replay, replay_or, submit_error, TransactionBody,
    ONLY_ADMIN,
};
use super::{AppState, Page};
use crate::auth::Principal;
use crate::domain::{
    Authority, Description, Movement, Reference, TransactionKind, TransactionStatus, UserId,
};
use crate::error::ApiError;
use crate::ledger::Outcome;
use crate::store::{
    self, transactions::HistoryCursor, transactions::HistoryFilter, transactions::TransactionRecord,
};

/// Each path is a `web::resource` with a method route (not `cfg.route`, which turns the method
/// into a resource guard): a wrong method then gets 405 instead of falling through to `/{id}`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/credit").route(web::post().to(credit)))
        .service(web::resource("/debit").route(web::post().to(debit)))
        .service(web::resource("/transfer").route(web::post().to(transfer)))
        .service(web::resource("/history").route(web::get().to(history)))
        .service(web::resource("/bulk").route(web::post().to(super::bulk::bulk)))
        .service(web::resource("/{id}/post").route(web::post().to(super::holds::post)))
        .service(web::resource("/{id}/void").route(web::post().to(super::holds::void)))
        .service(web::resource("/{id}/reverse").route(web::post().to(super::reversals::reverse)))
        .service(web::resource("/{id}").route(web::get().to(get_transaction)));
}

/// `{amount, currency, user_id?, description?, reference?}` → 201 transaction: money from
/// `system` to the caller's account (an admin may name `user_id`).
#[utoipa::path(
    post, path = "/api/v1/transactions/credit", tag = "transactions", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)")),
    request_body(content = super::schemas::MovementRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `insufficient_funds` (recorded as a failed transaction) or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn credit(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    match parse_system_movement(&state, principal, TransactionKind::Credit, body, &req).await? {
        Parsed::Submit(movement) => submit_system_movement(&state, &req, movement).await,
        Parsed::Answered(response) => Ok(response),
    }
}

/// Like credit, from the account to `system`. Errors: 422 `insufficient_funds` (recorded as a
/// failed transaction).
#[utoipa::path(
    post, path = "/api/v1/transactions/debit", tag = "transactions", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)")),
    request_body(content = super::schemas::DebitRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `insufficient_funds` (recorded as a failed transaction) or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn debit(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    match parse_system_movement(&state, principal, TransactionKind::Debit, body, &req).await? {
        Parsed::Submit(movement) => submit_system_movement(&state, &req, movement).await,
        Parsed::Answered(response) => Ok(response),
    }
}

/// `{to_user_id, amount, currency, description?, reference?}` → 201 transaction from the
/// caller's account. Errors: 422 for an unknown, deleted or own recipient; 422
/// `insufficient_funds`.
#[utoipa::path(
    post, path = "/api/v1/transactions/transfer", tag = "transactions", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request exactly-once (1 to 255 visible ASCII characters)")),
    request_body(content = super::schemas::TransferRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed", body = TransactionBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `insufficient_funds` (recorded as a failed transaction) or `idempotency_key_reused`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` or `unavailable`; retry with the same Idempotency-Key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn transfer(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idempotency = idempotency_key(&req)?;
    let movement = transfer_movement(&state, principal, Fields::new(body))?;
    submit(&state, movement.with_key(idempotency)).await
}

/// The types of request a schedule's transaction template may be (`type`), each an arm of
/// [`movement_from_template`].
pub(crate) const TEMPLATE_TYPES: [&str; 4] = ["credit", "debit", "transfer", "exchange"];

/// Parses the fields of a `kind` request (`credit`, `debit`, `transfer` or `exchange`: the body
/// of `POST /transactions/<kind>`; an exchange at the rate current when it is parsed, without a
/// quote) into the movement `principal` asks for, without an idempotency key.
/// The direct requests and the schedules' templates (at creation and at every run) share it, so
/// both refuse exactly the same fields with the same messages; a new kind of request is one arm
/// here.
///
/// Errors: 422 naming every bad field (`type` for an unknown `kind`).
pub(crate) async fn movement_from_template(
    state: &AppState,
    principal: Principal,
    kind: &str,
    fields: Fields,
) -> Result<Movement, ApiError> {
    match kind {
        "credit" => system_movement(state, principal, TransactionKind::Credit, fields),
        "debit" => system_movement(state, principal, TransactionKind::Debit, fields),
        "transfer" => transfer_movement(state, principal, fields),
        "exchange" => super::fx::exchange_template(state, principal, fields).await,
        _ => Err(ApiError::field(
            "type",
            format!("must be one of {}", TEMPLATE_TYPES.join(", ")),
        )),
    }
}

/// `{to_user_id, amount, currency, description?, reference?, hold?}`: a transfer from
/// `principal`'s account.
fn transfer_movement(
    state: &AppState,
    principal: Principal,
    mut fields: Fields,
) -> Result<Movement, ApiError> {
    let to = fields.required("to_user_id", parse::uuid);
    let amount = fields.required("amount", parse::amount);
    let currency = fields.required("currency", parse::currency);
    let description = fields.optional("description", parse::text(Description::parse));
    let reference = fields.optional("reference", parse::text(Reference::parse));
    let hold = fields.optional("hold", parse::hold(state.settings.holds.timeout_s_max));
    if to == Some(principal.user.as_uuid()) {
        fields.error("to_user_id", "must be another user than the sender");
    }
    // The system account is every credit's and debit's counterparty, never a party by name.
    if to.is_some_and(|to| UserId::from_uuid(to).is_system()) {
        fields.error("to_user_id", "no such user");
    }
    fields.finish()?;
    let to = to.expect("finish() refuses missing fields");
    // Whether the recipient (and the caller) exist and are active is checked in the group
    // commit (`store::journal::lock_parties`), not with a query per request.
    let movement = Movement::transfer(
        principal.user,
        UserId::from_uuid(to),
        amount.expect("finish() refuses missing fields"),
        currency.expect("finish() refuses missing fields"),
        principal.user,
        Authority::Owner,
    )
    .map_err(|_| ApiError::field("to_user_id", "must be another user than the sender"))?
    .with_details(description, reference);
    held(movement, hold)
}

/// Submits a credit or debit; when an admin moves money on another user's account, the attempt
/// and its outcome go to the audit log.
async fn submit_system_movement(
    state: &AppState,
    req: &HttpRequest,
    movement: Movement,
) -> Result<HttpResponse, ApiError> {
    let account = movement.owner();
    let on_behalf = account != movement.initiated_by();
    let details = on_behalf.then(|| {
        json!({
            "transaction_id": movement.id(),
            "user_id": account.as_uuid(),
            "amount": movement.amount().minor(),
            "currency": movement.currency().code(),
        })
    });
    let (initiator, kind) = (movement.initiated_by(), movement.kind());
    let result = submit(state, movement).await;
    if let Some(mut details) = details {
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
        };
        details["status"] = status.into();
        let action = if kind == TransactionKind::Credit {
            "transaction.admin_credit"
        } else {
            "transaction.admin_debit"
        };
        let client = state.pool.get().await?;
        let entity = ("user", Some(account.as_uuid().to_string()));
        super::audit(&client, req, Some(initiator), entity, action, details).await;
    }
    result
}

/// Parses a credit or debit: the account is the caller's own, or `user_id` for an admin (whose
/// role the commit checks again). A request the token does not allow is still answered from
/// its idempotency key when that key is stored (invariant 4: the key decides first).
async fn parse_system_movement(
    state: &AppState,
    principal: Principal,
    kind: TransactionKind,
    body: JsonObject,
    req: &HttpRequest,
) -> Result<Parsed, ApiError> {
    let idempotency = idempotency_key(req)?;
    let movement =
        system_movement(state, principal, kind, Fields::new(body))?.with_key(idempotency);
    if movement.authority() == Authority::Admin && !principal.is_admin() {
        return replay_or(state, &movement, ApiError::Forbidden(ONLY_ADMIN))
            .await
            .map(Parsed::Answered);
    }
    Ok(Parsed::Submit(movement))
}

/// `{amount, currency, user_id?, description?, reference?, hold? (debit only)}`: a credit or
/// debit of `user_id`'s account (default: `principal`'s own). Naming another user gives the
/// movement `Authority::Admin`, which the caller must check against `principal`'s role.
fn system_movement(
    state: &AppState,
    principal: Principal,
    kind: TransactionKind,
    mut fields: Fields,
) -> Result<Movement, ApiError> {
    let amount = fields.required("amount", parse::amount);
    let currency = fields.required("currency", parse::currency);
    let user_id = fields.optional("user_id", parse::uuid);
    let description = fields.optional("description", parse::text(Description::parse));
    let reference = fields.optional("reference", parse::text(Reference::parse));
    let hold = match kind {
        TransactionKind::Credit => None,
        _ => fields.optional("hold", parse::hold(state.settings.holds.timeout_s_max)),
    };
    if user_id.is_some_and(|user| UserId::from_uuid(user).is_system()) {
        fields.error("user_id", "no such user");
    }
    fields.finish()?;
    // The account's owner (and the caller) are checked in the group commit.
    let account = user_id.map_or(principal.user, UserId::from_uuid);
    let authority = if account == principal.user {
        Authority::Owner
    } else {
        Authority::Admin
    };
    let (amount, currency) = (
        amount.expect("finish() refuses missing fields"),
        currency.expect("finish() refuses missing fields"),
    );
    let movement = match kind {
        TransactionKind::Credit => {
            Movement::credit(account, amount, currency, principal.user, authority)
        }
        _ => Movement::debit(account, amount, currency, principal.user, authority),
    }
    .map_err(|_| ApiError::field("user_id", "no such user"))?
    .with_details(description, reference);
    held(movement, hold)
}

/// `movement`, made a hold of `timeout_s` when the request asked for one.
///
/// Errors: 422 on the `hold` field for what cannot be held.
fn held(movement: Movement, hold: Option<u32>) -> Result<Movement, ApiError> {
    match hold {
        Some(timeout_s) => movement
            .with_hold(timeout_s)
            .map_err(|error| ApiError::field("hold", error.to_string())),
        None => Ok(movement),
    }
}

/// A parsed money request: to submit, or already answered from its idempotency key.
pub(crate) enum Parsed {
    Submit(Movement),
    Answered(HttpResponse),
}

/// Answers from a stored key when there is one, else submits to the pipeline.
async fn submit(state: &AppState, movement: Movement) -> Result<HttpResponse, ApiError> {
    // No lookup here: the journal writer checks the parties (share-locked, in the batch) and
    // claims the idempotency key in the same commit, so the request costs the database nothing
    // outside its group commit; a repeated key comes back as `Duplicate` and is replayed.
    let outcome = state
        .ledger
        .submit(movement.clone())
        .await
        .map_err(|error| submit_error(error, state))?;
    match outcome {
        Outcome::Completed(recorded) => Ok(created(TransactionBody::committed(
            &movement, None, recorded,
        ))),
        Outcome::Refused(refusal, _) => Err(ApiError::refused(&refusal, Some(movement.id()))),
        Outcome::Forbidden => Err(ApiError::Forbidden(ONLY_ADMIN)),
        Outcome::Duplicate {
            transaction_id,
            same_request: true,
        } => replay(state, transaction_id).await,
        Outcome::Duplicate {
            same_request: false,
            ..
        } => Err(ApiError::IdempotencyKeyReused),
        Outcome::InactiveParty { user } => Err(inactive_party(&movement, user)),
        Outcome::HoldNotPending | Outcome::ReversalRefused(_) | Outcome::QuoteUnusable => {
            Err(ApiError::Internal(anyhow::anyhow!(
                "a plain movement was answered as a hold resolution or a reversal"
            )))
        }
    }
}

/// Whether `principal` may see `record`: an admin, the sender, whoever asked for it (a
/// refused self-credit is the asker's), or the recipient of a transaction that did not fail.
fn visible_to(record: &TransactionRecord, principal: Principal) -> bool {
    principal.is_admin()
        || record.from == principal.user
        || record.initiated_by == principal.user
        || (record.to == principal.user && record.status != TransactionStatus::Failed)
}

/// The transaction `id` when `principal` may see it ([`visible_to`]): what `GET
/// /transactions/{id}`, post, void and reverse start from. `id` is `None` when the path did not
/// hold a hyphenated UUID.
///
/// Errors: 404 `not_found` alike for a malformed id, an unknown one and one of somebody else
/// (so ids of others are not revealed); 503 without a database connection.
pub(crate) async fn find_visible(
    state: &AppState,
    principal: Principal,
    id: Option<Uuid>,
) -> Result<TransactionRecord, ApiError> {
    let not_found = ApiError::NotFound("no such transaction");
    let Some(id) = id else {
        return Err(not_found);
    };
    let client = state.pool.get().await?;
    store::transactions::find(&client, id)
        .await?
        .filter(|record| visible_to(record, principal))
        .ok_or(not_found)
}

/// → 200 transaction. Errors: 404 when it does not exist or the caller is no party to it.
#[utoipa::path(
    get, path = "/api/v1/transactions/{id}", tag = "transactions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Transaction id")),
    responses(
        (status = 200, description = "The transaction", body = TransactionBody),
        (status = 404, description = "No such transaction, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_transaction(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let record = find_visible(&state, principal, Some(id.into_inner())).await?;
    let reversals = if record.reversed_amount > 0 {
        let client = state.pool.get().await?;
        Some(store::transactions::reversals_of(&client, record.id).await?)
    } else {
        None
    };
    let mut body = TransactionBody::from(record);
    body.reversals = reversals;
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Items per page, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Admins only: whose history.
    #[serde(default, deserialize_with = "super::input::optional_uuid")]
    user_id: Option<Uuid>,
    /// `credit`, `debit`, `transfer`, `reversal` or `exchange`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// `pending`, `posted`, `voided`, `expired`, `completed` or `failed`.
    status: Option<String>,
    /// ISO 4217 code.
    currency: Option<String>,
    /// RFC 3339; transactions created at or after it.
    from: Option<String>,
    /// RFC 3339; transactions created before it.
    to: Option<String>,
    /// The other party of a transfer.
    #[param(value_type = Option<Uuid>)]
    counterparty: Option<String>,
    /// Minor units, inclusive.
    #[param(value_type = Option<i64>)]
    min_amount: Option<String>,
    /// Minor units, inclusive.
    #[param(value_type = Option<i64>)]
    max_amount: Option<String>,
}

impl HistoryQuery {
    /// The filter, or 422 listing every bad parameter.
    fn filter(&self) -> Result<HistoryFilter, ApiError> {
        let mut errors = super::input::QueryErrors::default();
        let filter = HistoryFilter {
            kind: errors.check("type", self.kind.as_deref(), |kind| {
                TransactionKind::parse(kind)
                    .ok_or("must be credit, debit, transfer, reversal or exchange")
            }),
            status: errors.check("status", self.status.as_deref(), |status| {
                TransactionStatus::parse(status)
                    .ok_or("must be pending, completed, failed or reversed")
            }),
            currency: errors.check("currency", self.currency.as_deref(), |code| {
                crate::domain::Currency::parse(code)
                    .map(|currency| currency.code())
                    .map_err(|_| "must be an ISO 4217 code")
            }),
            from: errors.check("from", self.from.as_deref(), super::input::parse::rfc3339),
            to: errors.check("to", self.to.as_deref(), super::input::parse::rfc3339),
            // Parsed here, not by the query deserializer, so that an error names the parameter.
            counterparty: errors.check("counterparty", self.counterparty.as_deref(), |id| {
                super::input::parse::hyphenated_uuid(id)
                    .map(UserId::from_uuid)
                    .ok_or("must be a user id (UUID)")
            }),
            min_amount: errors.check("min_amount", self.min_amount.as_deref(), minor_units),
            max_amount: errors.check("max_amount", self.max_amount.as_deref(), minor_units),
        };
        if let (Some(min), Some(max)) = (filter.min_amount, filter.max_amount) {
            if min > max {
                errors.push("min_amount", "must not be above max_amount");
            }
        }
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if from > to {
                errors.push("from", "must not be after to");
            }
        }
        errors.finish()?;
        Ok(filter)
    }
}

fn minor_units(text: &str) -> Result<i64, &'static str> {
    text.parse()
        .map_err(|_| "must be an integer number of minor units")
}

/// Items per history page when `limit` is not given, and the most allowed.
const HISTORY_LIMIT_DEFAULT: i64 = 50;
pub(crate) const HISTORY_LIMIT_MAX: i64 = 200;

/// `?limit&cursor&user_id` → 200 `{items, next_cursor}`, newest first. `user_id` is for admins.
/// Paging by `cursor` shows every transaction committed before the first page exactly once
/// (`store::transactions::history`).
#[utoipa::path(
    get, path = "/api/v1/transactions/history", tag = "transactions", security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page, newest first", body = TransactionPage),
        (status = 403, description = "Another user's history (admins only)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let user = super::subject(principal, query.user_id)?;
    let limit = query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be from 1 to {HISTORY_LIMIT_MAX}"),
        ));
    }
    let after = query
        .cursor
        .as_deref()
        .map(|cursor| {
            decode_cursor(cursor)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API issued"))
        })
        .transpose()?;
    let filter = query.filter()?;
    let client = state.pool.get().await?;
    let mut records =
        store::transactions::history(&client, user, &filter, after, limit + 1).await?;
    let next_cursor = if records.len() as i64 > limit {
        records.truncate(limit as usize);
        records.last().map(|last| {
            encode_cursor(HistoryCursor {
                created_at: last.created_at,
                id: last.id,
            })
        })
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: records.into_iter().map(TransactionBody::from).collect(),
        next_cursor,
    }))
}

/// Cursor: base64url of `<created_at in µs since the epoch>:<id>`. Opaque to clients.
pub(crate) fn encode_cursor(cursor: HistoryCursor) -> String {
    let text = format!("{}:{}", cursor.created_at.timestamp_micros(), cursor.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<HistoryCursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (micros, id) = text.split_once(':')?;
    Some(HistoryCursor {
        created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: Uuid::parse_str(id).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = HistoryCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)), Some(cursor));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }
}

/// A page of transactions, newest first.
#[derive(utoipa::ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
