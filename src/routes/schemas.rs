//! The request bodies as the OpenAPI document describes them. The handlers do not deserialize
//! into these types: they parse field by field (`routes::input`) so that every bad field is
//! reported; these schemas say exactly what those parsers accept (`routes::openapi` adds what
//! utoipa's attributes cannot express, and `tests/api/openapi.rs` proves the agreement). They
//! live apart from both, so that the handlers and the document depend on them and not on each
//! other.

use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3 to 32 of `[A-Za-z0-9_.-]`, starting with a letter or digit; unique regardless of case.
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )]
    pub username: String,
    #[schema(max_length = 254)]
    pub email: String,
    /// 8 to 128 characters, no NUL character (PostgreSQL cannot store one).
    #[schema(min_length = 8, max_length = 128, pattern = "^[^\u{0}]*$")]
    pub password: String,
}

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username or the email: 1 to 254 characters without control characters.
    #[schema(
        min_length = 1,
        max_length = 254,
        pattern = "^[^\u{0}-\u{1f}\u{7f}-\u{9f}]*$"
    )]
    pub username: String,
    /// No NUL character (PostgreSQL cannot store one).
    #[schema(pattern = "^[^\u{0}]*$")]
    pub password: String,
}

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// No NUL character.
    #[schema(pattern = "^[^\u{0}]*$")]
    pub refresh_token: String,
}

/// At least one field. `role` only by an admin.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub email: Option<String>,
    /// 8 to 128 characters, no NUL character.
    #[schema(min_length = 8, max_length = 128, pattern = "^[^\u{0}]*$")]
    pub password: Option<String>,
    /// `user` or `admin`.
    pub role: Option<String>,
}

/// A credit (money from the system account).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementRequest {
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217 code with minor units, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Admins only: the account to move money on (default: the caller's).
    pub user_id: Option<Uuid>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
}

/// A debit (money to the system account), settled now or held.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217 code with minor units, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Admins only: the account to move money on (default: the caller's).
    pub user_id: Option<Uuid>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
    /// Make it a hold (two-phase): reserved now, posted or voided later.
    pub hold: Option<HoldRequest>,
}

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// An active user other than the caller.
    pub to_user_id: Uuid,
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
    /// Make it a hold (two-phase): reserved now, posted or voided later.
    pub hold: Option<HoldRequest>,
}

/// A hold request on a transfer or debit: reserve the amount on the payer until it is posted,
/// voided, or expires `timeout_s` seconds after its commit.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// 1 to `holds.timeout_s_max` (30 days by default).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub timeout_s: u32,
}

/// The posting of a hold.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    /// Minor units, 0 to the held amount (default: all of it); 0 voids the hold.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub amount: Option<i64>,
}

/// A reversal (refund) of a completed transaction.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// Minor units, 1 to what is left to reverse (default: all of it).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: Option<i64>,
    /// Why: 1 to 500 characters without control characters.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// A bulk of transactions.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `atomic` (all or nothing) or `independent` (each item alone).
    pub mode: String,
    /// 1 to `bulk.max_items` (10,000 by default) items.
    pub transactions: Vec<BulkItem>,
}

/// One item of a bulk: a credit or debit (`user_id`, default the caller) or a transfer
/// (`from_user_id`, default the caller, and `to_user_id`).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkItem {
    /// `credit`, `debit` or `transfer`.
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<Uuid>,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Option<Uuid>,
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
    /// Make a transfer or debit a hold (two-phase); not on a credit.
    pub hold: Option<HoldRequest>,
}

/// A whole set of limits (an account's own, or the defaults), replacing the set before.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// 0 to 100 limits, at most one per (kind, currency); `[]` clears the set.
    pub limits: Vec<LimitItem>,
}

/// One limit.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitItem {
    /// `max_per_transaction`, `daily_debit`, `rolling_debit`, `daily_credit` or `velocity`.
    pub kind: String,
    /// An ISO 4217 code (for an account: one it holds a balance in), or `*` for every currency.
    pub currency: String,
    /// Minor units of the account's currency (a number of debits for `velocity`), 1 to 2^61.
    pub value: i64,
    /// Seconds, 1 to 31622400 (366 days): required for `rolling_debit` and `velocity`, absent
    /// or null for the other kinds.
    pub window_s: Option<i64>,
}

/// An account's overdraft limit.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverdraftRequest {
    /// How far below zero `amount - pending` may go, minor units, 0 to 2^61.
    #[schema(minimum = 0, maximum = 2_305_843_009_213_693_952_i64)]
    pub overdraft_limit: i64,
}

/// A balance alert.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRequest {
    /// ISO 4217 code with minor units.
    pub currency: String,
    /// `below` (holds while `amount < threshold`) or `above` (while `amount > threshold`).
    pub condition: String,
    /// Minor units, -2^61 to 2^61.
    pub threshold: i64,
    /// Admins only: whose account (default: the caller's).
    pub user_id: Option<Uuid>,
}

/// A webhook subscription.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where events are POSTed: an absolute `http` URL (no `https` in this build) without a
    /// user name or password, whose host `webhooks.allowed_hosts` allows; at most 2048 bytes.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types to receive, at least one; absent or null: every type.
    #[schema(min_items = 1)]
    pub types: Option<Vec<String>>,
    /// Up to 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// An exchange rate (admins).
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    /// Major units of `to` one major unit of `from` buys: a plain decimal string (no sign,
    /// exponent or spaces), greater than 0, at most 1000000, at most 12 decimal places.
    #[schema(pattern = "^[0-9]{1,7}(\\.[0-9]{1,12})?$")]
    pub rate: String,
    /// Where the rate comes from: 1 to 100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100)]
    pub source: String,
    /// After this instant the rate prices nothing (must be in the future); absent or null:
    /// until replaced.
    pub valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// A quote request.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// The currency sold.
    pub from_currency: String,
    /// The currency bought; another than `from_currency`.
    pub to_currency: String,
    /// Minor units of `from_currency` to sell, 1 to 10^15; enough to buy at least one minor
    /// unit of `to_currency` after the spread.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
}

/// An exchange: a quote (`quote_id`), or the pair and amount at the current rate.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// A quote of the caller's, unexpired and unused; the pricing fields may then be left out
    /// (given, they must equal the quote's).
    pub quote_id: Option<Uuid>,
    /// Required without `quote_id`.
    pub from_currency: Option<String>,
    /// Required without `quote_id`; another than `from_currency`.
    pub to_currency: Option<String>,
    /// Minor units of `from_currency`, 1 to 10^15; required without `quote_id`.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: Option<i64>,
    /// Who gets the bought currency: an active user (default: the caller).
    pub to_user_id: Option<Uuid>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
}

/// A scheduled or recurring transaction.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// What to run: the body of `POST /transactions/<type>` with its `type` (a
    /// `ScheduleTemplate` or an `ExchangeTemplate`).
    #[schema(value_type = Object)]
    pub transaction: ScheduleTemplate,
    /// The first occurrence (whole seconds; a fraction is dropped); at most
    /// `schedules.start_grace_s` in the past.
    pub start_at: String,
    /// Absent or null for a one-off schedule.
    pub recurrence: Option<RecurrenceRequest>,
    /// After downtime: `run_once` (one run for all missed occurrences), `catch_up` (every
    /// missed occurrence, in order) or `skip` (the next future one).
    pub misfire_policy: String,
    /// When the ledger refuses a run: `fail` (recorded failed) or `retry` (every
    /// `schedules.retry_interval_s`, up to `schedules.retry_max_attempts` attempts).
    pub on_failure: String,
}

/// A schedule's transaction: a credit or debit (`user_id`, admins only, default the owner) or
/// a transfer (`to_user_id`) from the owner's account.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTemplate {
    /// `credit`, `debit` or `transfer`.
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<Uuid>,
    pub to_user_id: Option<Uuid>,
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
    /// Make a transfer or debit a hold (two-phase); not on a credit.
    pub hold: Option<HoldRequest>,
}

/// A schedule's exchange: the body of `POST /transactions/exchange` without a quote (it would
/// expire before the run), priced at the rate current at each run.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeTemplate {
    /// `exchange`.
    #[serde(rename = "type")]
    pub kind: String,
    pub from_currency: String,
    /// Another than `from_currency`, with a current rate from it.
    pub to_currency: String,
    /// Minor units of `from_currency`, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// Who gets the bought currency (default: the schedule's owner).
    pub to_user_id: Option<Uuid>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub reference: Option<String>,
}

/// When a schedule recurs, in a time zone.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceRequest {
    /// `day`, `week` or `month`. A monthly schedule started on the 29th to 31st runs on the
    /// last day of shorter months.
    pub every: String,
    /// Every `interval` units: 1 to 3660 days, 520 weeks or 120 months.
    pub interval: i64,
    /// How many occurrences in all, 1 to 10000; not with `until`.
    pub count: Option<i64>,
    /// The last occurrence is at or before it; not before `start_at`, not with `count`.
    pub until: Option<String>,
    /// An IANA time zone (`Europe/Berlin`): local wall time is kept across DST changes.
    pub time_zone: String,
}
