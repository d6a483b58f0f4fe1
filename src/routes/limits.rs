//! Limits as data (DESIGN.md section 8), the admin side: `GET`/`PUT /api/v1/users/{id}/limits`
//! (an account's own set), `GET`/`PUT /api/v1/limits/defaults` (the defaults of every account
//! of role `user`) and `PUT /api/v1/users/{id}/accounts/{currency}` (the overdraft limit on the
//! balance row). Enforcing them is the posting path's.
//!
//! A limit on the wire: `{kind, currency, value, window_s}`: `kind` one of
//! `max_per_transaction`, `daily_debit`, `rolling_debit`, `daily_credit`, `velocity`;
//! `currency` an ISO 4217 code or `*` (every currency); `value` in minor units of the account's
//! currency (a number of debits for `velocity`), 1 to 2^61; `window_s` seconds (1 to 366 days)
//! for `rolling_debit` and `velocity`, `null` otherwise.
//!
//! Every change is one database transaction that also writes the audit record and a
//! `limit.changed` event (`store::limits::set_changed`), so the log and the change commit
//! together. A request refused writes nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::balances::BalanceBody;
use super::input::{parse, Fields, JsonObject};
use super::users::{current, may_access};
use super::{audit_in_transaction, AppState};
use crate::auth::Principal;
use crate::domain::{
    AccountKey, AccountState, CommittedBalance, Currency, LimitKind, LimitSpec, LimitSpecError,
    Role, UserId, MONEY_BOUND_MINOR, SYSTEM_USER_ID,
};
use crate::error::{ApiError, FieldError};
use crate::store::limits::{self as store_limits, LockedUser, OverdraftOutcome, LIMIT_CHANGED};

/// Most limits in one set (an account's own, or the defaults). Five kinds on a handful of
/// currencies and `*` is far below; the bound keeps a request's work bounded.
pub const LIMITS_MAX: usize = 100;

/// 409 for an overdraft limit below what the account already uses.
const OVERDRAFT_IN_USE: ApiError = ApiError::Conflict {
    code: "overdraft_in_use",
    detail: "the account's available balance (amount - pending) is already below minus the new \
             overdraft limit: move money in first, or set a limit at least that large",
};

/// `/{id}/limits` and `/{id}/accounts/{currency}`, mounted in the `/users` scope.
pub fn user_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/{id}/limits")
            .route(web::get().to(get_account_limits))
            .route(web::put().to(put_account_limits)),
    )
    .service(web::resource("/{id}/accounts/{currency}").route(web::put().to(put_overdraft)));
}

/// `/defaults`, mounted as the `/limits` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/defaults")
            .route(web::get().to(get_defaults))
            .route(web::put().to(put_defaults)),
    );
}

/// One limit.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LimitBody {
    /// `max_per_transaction`, `daily_debit`, `rolling_debit`, `daily_credit` or `velocity`.
    kind: &'static str,
    /// An ISO 4217 code, or `*` for every currency.
    currency: &'static str,
    /// Minor units of the account's currency; a number of debits for `velocity`.
    value: i64,
    /// Seconds, for `rolling_debit` and `velocity`; `null` otherwise.
    window_s: Option<u32>,
}

impl From<&LimitSpec> for LimitBody {
    fn from(spec: &LimitSpec) -> LimitBody {
        LimitBody {
            kind: spec.kind().as_str(),
            currency: spec.currency_code(),
            value: spec.value(),
            window_s: spec.window_s(),
        }
    }
}

/// A limit that applies to the account, and where it comes from.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EffectiveLimitBody {
    kind: &'static str,
    /// An ISO 4217 code, or `*` for every currency the account has no row of its own for.
    currency: &'static str,
    value: i64,
    window_s: Option<u32>,
    /// `account` (the account's own row) or `default`.
    source: &'static str,
}

/// An account's limits: its own, the defaults that apply to it (only for role `user`), and
/// what is in effect.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountLimitsBody {
    user_id: Uuid,
    /// The account's own limits, by kind then currency.
    limits: Vec<LimitBody>,
    /// The defaults, when the account's role is `user` (empty for an admin).
    defaults: Vec<LimitBody>,
    /// One entry per (kind, currency) in effect: the account's own rows, and every default no
    /// own row of the same kind shadows (an own row on the same currency or on `*`). At
    /// enforcement a row naming the currency wins over `*`.
    effective: Vec<EffectiveLimitBody>,
}

/// The default limits.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DefaultLimitsBody {
    limits: Vec<LimitBody>,
}

fn bodies(specs: &[LimitSpec]) -> Vec<LimitBody> {
    specs.iter().map(LimitBody::from).collect()
}

/// What is in effect for an account with `own` rows and the applicable `defaults`: every own
/// row; and a default unless an own row of its kind is on its currency or on `*` (the account's
/// own setting wins over a default, whichever currency the default names). Sorted by kind,
/// then currency (`*` first).
fn effective(own: &[LimitSpec], defaults: &[LimitSpec]) -> Vec<EffectiveLimitBody> {
    let entry = |spec: &LimitSpec, source| EffectiveLimitBody {
        kind: spec.kind().as_str(),
        currency: spec.currency_code(),
        value: spec.value(),
        window_s: spec.window_s(),
        source,
    };
    let shadowed = |default: &LimitSpec| {
        own.iter().any(|mine| {
            mine.kind() == default.kind()
                && (mine.currency().is_none() || mine.currency() == default.currency())
        })
    };
    let mut effective: Vec<EffectiveLimitBody> = own
        .iter()
        .map(|spec| entry(spec, "account"))
        .chain(
            defaults
                .iter()
                .filter(|default| !shadowed(default))
                .map(|spec| entry(spec, "default")),
        )
        .collect();
    effective.sort_by(|a, b| (a.kind, a.currency).cmp(&(b.kind, b.currency)));
    effective
}

fn account_body(user: UserId, own: &[LimitSpec], defaults: &[LimitSpec]) -> AccountLimitsBody {
    AccountLimitsBody {
        user_id: user.as_uuid(),
        limits: bodies(own),
        defaults: bodies(defaults),
        effective: effective(own, defaults),
    }
}

/// A user id in a path: hyphenated (the only form the document's `uuid` admits), else 404.
fn path_user(id: &str) -> Result<Uuid, ApiError> {
    parse::hyphenated_uuid(id).ok_or(ApiError::NotFound("no such user"))
}

/// The error for a limit or overdraft on the `system` account, named as the path's `id`.
fn system_account() -> FieldError {
    FieldError::new(
        "id",
        "is the system account: it has no limits (its bound is ledger.supply_max_minor)",
    )
}

/// → 200 `{user_id, limits: [limit], defaults: [limit], effective: [limit + source]}`
/// (limits as in the module docs; `source` is `account` or `default`).
///
/// Errors: 404 for an unknown or deleted user, or another user's limits for a non-admin.
#[utoipa::path(
    get, path = "/api/v1/users/{id}/limits", tag = "limits", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The account's limits", body = AccountLimitsBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_account_limits(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let id = path_user(&id)?;
    may_access(principal, id)?;
    let mut client = state.pool.get().await?;
    // One snapshot for the account's rows and the defaults.
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let user = crate::store::users::find_active(&transaction, id)
        .await?
        .ok_or(ApiError::NotFound("no such user"))?;
    let own = store_limits::list(&transaction, Some(user.id)).await?;
    let defaults = if user.role == Role::User {
        store_limits::list(&transaction, None).await?
    } else {
        Vec::new()
    };
    transaction.commit().await?;
    Ok(HttpResponse::Ok().json(account_body(user.id, &own, &defaults)))
}

/// `{"limits": [limit]}` replaces the account's whole set (`[]` clears it) → 200 as `GET`.
/// Admins only.
///
/// Errors: 403 for a non-admin (the user themself included); 404 for an unknown or deleted
/// user; 422 naming every bad field (`limits[<i>].kind|currency|value|window_s`): an unknown or
/// non-configurable kind, a value outside 1..=2^61, a window missing, not allowed or outside
/// 1..=31622400, an unknown currency, a (kind, currency) given twice, more than 100 limits, a
/// currency the user never held (no balance in it); 422 naming `id` for the `system` account.
#[utoipa::path(
    put, path = "/api/v1/users/{id}/limits", tag = "limits", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id; not the system account")),
    request_body(content = super::schemas::LimitsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The account's limits, as set", body = AccountLimitsBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limits (every one named), a currency the user never held, or the system account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_account_limits(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    if !principal.is_admin() {
        return Err(ApiError::Forbidden("only an admin may set limits"));
    }
    let id = path_user(&id)?;
    if id == SYSTEM_USER_ID.as_uuid() {
        return Err(ApiError::Validation(vec![system_account()]));
    }
    let specs = parse_set(body)?;
    let user = UserId::from_uuid(id);
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    let role =
        match store_limits::lock_user(&transaction, id, store_limits::UserLock::Share).await? {
            LockedUser::Missing => return Err(ApiError::NotFound("no such user")),
            LockedUser::Active(Role::System) => {
                return Err(ApiError::Validation(vec![system_account()]))
            }
            LockedUser::Active(role) => role,
        };
    store_limits::lock_set(&transaction, Some(user)).await?;
    let named: Vec<Currency> = specs.iter().filter_map(LimitSpec::currency).collect();
    let never_held = store_limits::never_held(&transaction, user, &named).await?;
    let errors: Vec<FieldError> = specs
        .iter()
        .enumerate()
        .filter(|(_, spec)| {
            spec.currency()
                .is_some_and(|currency| never_held.contains(&currency))
        })
        .map(|(index, _)| {
            FieldError::new(
                format!("limits[{index}].currency"),
                "is a currency this user never held (no balance in it)",
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let before =
        store_limits::replace(&transaction, Some(user), &specs, Some(principal.user)).await?;
    let own = store_limits::list(&transaction, Some(user)).await?;
    let defaults = if role == Role::User {
        store_limits::list(&transaction, None).await?
    } else {
        Vec::new()
    };
    record_change(
        &transaction,
        &req,
        principal.user,
        Some(user),
        (&before, &own),
    )
    .await?;
    transaction.commit().await?;
    Ok(HttpResponse::Ok().json(account_body(user, &own, &defaults)))
}

/// → 200 `{"limits": [limit]}`, the defaults that apply to every account of role `user` (an
/// account's own row wins over them).
#[utoipa::path(
    get, path = "/api/v1/limits/defaults", tag = "limits", security(("bearer" = [])),
    responses(
        (status = 200, description = "The default limits", body = DefaultLimitsBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_defaults(
    state: web::Data<AppState>,
    _principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await?;
    let limits = store_limits::list(&client, None).await?;
    Ok(HttpResponse::Ok().json(DefaultLimitsBody {
        limits: bodies(&limits),
    }))
}

/// `{"limits": [limit]}` replaces the whole default set (`[]` clears it) → 200 as `GET`.
/// Admins only. Validation as for an account's set, without the "held" rule.
#[utoipa::path(
    put, path = "/api/v1/limits/defaults", tag = "limits", security(("bearer" = [])),
    request_body(content = super::schemas::LimitsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The default limits, as set", body = DefaultLimitsBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limits, every one named", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_defaults(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    if !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin may set the default limits",
        ));
    }
    let specs = parse_set(body)?;
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    store_limits::lock_set(&transaction, None).await?;
    let before = store_limits::replace(&transaction, None, &specs, Some(principal.user)).await?;
    let after = store_limits::list(&transaction, None).await?;
    record_change(&transaction, &req, principal.user, None, (&before, &after)).await?;
    transaction.commit().await?;
    Ok(HttpResponse::Ok().json(DefaultLimitsBody {
        limits: bodies(&after),
    }))
}

/// Audits a replaced set (`limit.changed` on entity `limits`, id the user or `defaults`) and
/// writes its `limit.changed` event, in the caller's transaction.
async fn record_change(
    client: &impl deadpool_postgres::GenericClient,
    req: &HttpRequest,
    changed_by: UserId,
    user: Option<UserId>,
    (before, after): (&[LimitSpec], &[LimitSpec]),
) -> Result<(), ApiError> {
    let payload = store_limits::set_changed(user, before, after, Some(changed_by));
    let entity_id = user.map_or_else(|| "defaults".to_owned(), |user| user.to_string());
    audit_in_transaction(
        client,
        req,
        Some(changed_by),
        ("limits", Some(entity_id)),
        LIMIT_CHANGED,
        json!({"before": payload["before"], "after": payload["after"]}),
    )
    .await?;
    store_limits::record_event(client, &store_limits::stream(user), LIMIT_CHANGED, &payload)
        .await?;
    Ok(())
}

/// `{"overdraft_limit": <minor units, 0 to 2^61>}` → 200 the balance as one item of
/// `GET /balances/current` (`{currency, amount, pending, available, overdraft_limit,
/// updated_at}`), with the new limit, which `/balances/current` shows at once. Creates the
/// balance row when the account never used the currency. Admins only.
///
/// Errors: 403 for a non-admin; 404 for an unknown or deleted user; 409 `overdraft_in_use` when
/// `amount - pending` is below minus the new limit; 422 naming `overdraft_limit`, `currency`
/// (unknown code) or `id` (the `system` account); 503 when the database, or the cache's
/// invalidation, is unavailable (the change may have been made: repeat the request).
#[utoipa::path(
    put, path = "/api/v1/users/{id}/accounts/{currency}", tag = "limits", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "User id; not the system account"),
        ("currency" = String, Path, description = "ISO 4217 code"),
    ),
    request_body(content = super::schemas::OverdraftRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The balance with its new overdraft limit", body = BalanceBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`overdraft_in_use`: the account uses more overdraft than the new limit", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid overdraft_limit or currency, or the system account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database or the cache is unavailable; repeat the request", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_overdraft(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    if !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin may set an overdraft limit",
        ));
    }
    let (id, code) = path.into_inner();
    let id = path_user(&id)?;
    let mut fields = Fields::new(body);
    let limit = fields.required("overdraft_limit", |value| {
        integer(value, "must be from 0 to 2^61").and_then(|limit| {
            (0..=MONEY_BOUND_MINOR)
                .contains(&limit)
                .then_some(limit)
                .ok_or_else(|| format!("must be from 0 to 2^61 ({MONEY_BOUND_MINOR})"))
        })
    });
    let currency = Currency::parse(&code)
        .map_err(|error| fields.error("currency", error.to_string()))
        .ok();
    if id == SYSTEM_USER_ID.as_uuid() {
        let error = system_account();
        fields.error(&error.field, error.message);
    }
    fields.finish()?;
    let (limit, currency) = (
        limit.expect("finish() refuses a missing overdraft_limit"),
        currency.expect("finish() refuses a bad currency"),
    );
    let account = AccountKey {
        user: UserId::from_uuid(id),
        currency,
    };
    let mut client = state.pool.get().await?;
    let transaction = client.transaction().await?;
    match store_limits::lock_user(&transaction, id, store_limits::UserLock::Share).await? {
        LockedUser::Missing => return Err(ApiError::NotFound("no such user")),
        LockedUser::Active(Role::System) => {
            return Err(ApiError::Validation(vec![system_account()]))
        }
        LockedUser::Active(_) => {}
    }
    let changed = match store_limits::set_overdraft(&transaction, account, limit).await? {
        OverdraftOutcome::InUse { .. } => return Err(OVERDRAFT_IN_USE),
        OverdraftOutcome::Set(changed) => changed,
    };
    let limit_json = |value: i64| json!({"kind": "overdraft", "currency": currency.code(), "value": value, "window_s": null});
    let payload = json!({
        "user_id": id,
        "before": limit_json(changed.before),
        "after": limit_json(changed.overdraft_limit),
        "changed_by": principal.user.as_uuid(),
    });
    audit_in_transaction(
        &transaction,
        &req,
        Some(principal.user),
        ("balance", Some(format!("{id}:{}", currency.code()))),
        LIMIT_CHANGED,
        json!({"before": payload["before"], "after": payload["after"]}),
    )
    .await?;
    store_limits::record_event(
        &transaction,
        &store_limits::stream(Some(account.user)),
        LIMIT_CHANGED,
        &payload,
    )
    .await?;
    transaction.commit().await?;
    // Read your writes, on every process: as the journal writer does after a commit (a larger
    // `version` replaces the cached field). When that can neither land nor be made up for by
    // an invalidation, another process may still serve the old limit: 503, repeat the request.
    let committed = CommittedBalance {
        state: AccountState {
            account,
            amount: changed.amount,
            pending: changed.pending,
            overdraft_limit: changed.overdraft_limit,
            version: changed.version,
        },
        at: changed.updated_at,
    };
    if !state
        .cache
        .write_through(&[committed])
        .await
        .may_acknowledge()
    {
        return Err(ApiError::Unavailable);
    }
    Ok(HttpResponse::Ok().json(BalanceBody::new(
        currency,
        changed.amount,
        changed.pending,
        changed.overdraft_limit,
        Some(changed.updated_at),
    )))
}

/// Reads `{"limits": [...]}` into limits, in request order.
///
/// Errors: 422 naming every bad field (`limits`, `limits[<i>]`, `limits[<i>].<field>`).
fn parse_set(body: JsonObject) -> Result<Vec<LimitSpec>, ApiError> {
    let mut fields = Fields::new(body);
    let items = fields.required("limits", |value| match value {
        Value::Array(items) if items.len() > LIMITS_MAX => {
            Err(format!("must have at most {LIMITS_MAX} limits"))
        }
        Value::Array(items) => Ok(items.clone()),
        _ => Err("must be an array of limits".to_owned()),
    });
    fields.finish()?;
    let items = items.expect("finish() refuses a missing limits");
    let mut errors = Vec::new();
    let mut specs: Vec<LimitSpec> = Vec::with_capacity(items.len());
    let mut indices: Vec<usize> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match parse_limit(item) {
            Ok(spec) => {
                let repeated = specs.iter().zip(&indices).find(|(other, _)| {
                    other.kind() == spec.kind() && other.currency() == spec.currency()
                });
                if let Some((_, first)) = repeated {
                    errors.push(FieldError::new(
                        format!("limits[{index}].currency"),
                        format!("repeats the kind and currency of limits[{first}]: one limit per kind and currency"),
                    ));
                } else {
                    specs.push(spec);
                    indices.push(index);
                }
            }
            Err(item_errors) => errors.extend(item_errors.into_iter().map(|error| {
                let field = if error.field.is_empty() {
                    format!("limits[{index}]")
                } else {
                    format!("limits[{index}].{}", error.field)
                };
                FieldError::new(field, error.message)
            })),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// One limit `{kind, currency, value, window_s?}`. Each field is checked on its own (the rules
/// are [`LimitSpec::new`]'s, asked one field at a time), so every bad field is named. Errors
/// name the field (empty for an item that is not an object).
fn parse_limit(item: Value) -> Result<LimitSpec, Vec<FieldError>> {
    let Value::Object(object) = item else {
        return Err(vec![FieldError::new("", "must be an object")]);
    };
    let window_given = object.get("window_s").is_some_and(|value| !value.is_null());
    let mut fields = Fields::new(JsonObject(object));
    let kind = fields.required("kind", |value| {
        value
            .as_str()
            .and_then(LimitKind::parse)
            .filter(|kind| kind.is_configurable())
            .ok_or_else(|| LimitSpecError::Kind.to_string())
    });
    let currency = fields.required("currency", |value| match value {
        Value::String(code) if code == "*" => Ok(None),
        Value::String(_) => parse::currency(value).map(Some),
        _ => Err("must be a string: an ISO 4217 code or \"*\"".to_owned()),
    });
    let value = fields.required("value", |value| {
        let too_large = LimitSpecError::Value.to_string();
        let number = integer(value, &too_large)?;
        // The value rule alone: a kind without a window, and no window.
        LimitSpec::new(LimitKind::MaxPerTransaction, None, number, None)
            .map(|_| number)
            .map_err(|error| error.to_string())
    });
    let window_s = fields.optional("window_s", |value| {
        integer(value, &LimitSpecError::WindowRange.to_string())
    });
    // The window rules for this kind, with a value that passes; skipped when the kind is
    // unknown or window_s was not an integer (already named).
    if let (Some(kind), true) = (kind, window_s.is_some() || !window_given) {
        if let Err(error) = LimitSpec::new(kind, None, 1, window_s) {
            fields.error(error.field(), error.to_string());
        }
    }
    fields.finish().map_err(|error| match error {
        ApiError::Validation(errors) => errors,
        other => vec![FieldError::new("", other.to_string())],
    })?;
    let (kind, currency, value) = (
        kind.expect("finish() refuses a missing kind"),
        currency.expect("finish() refuses a missing currency"),
        value.expect("finish() refuses a missing value"),
    );
    LimitSpec::new(kind, currency, value, window_s)
        .map_err(|error| vec![FieldError::new(error.field(), error.to_string())])
}

/// A JSON integer. Strings, fractions and exponent forms are refused; `too_large` is the
/// message for an integer beyond 64 bits.
pub(super) fn integer(value: &Value, too_large: &str) -> Result<i64, String> {
    let Value::Number(number) = value else {
        return Err("must be a JSON integer".to_owned());
    };
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    if number.is_u64() {
        return Err(too_large.to_owned());
    }
    Err("must be a whole number, not a fraction".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: LimitKind, currency: Option<&str>, value: i64) -> LimitSpec {
        let window = kind.has_window().then_some(60);
        LimitSpec::new(
            kind,
            currency.map(|code| Currency::parse(code).unwrap()),
            value,
            window,
        )
        .unwrap()
    }

    #[test]
    fn own_rows_shadow_defaults_of_their_kind_on_their_currency_or_everywhere() {
        let own = [
            spec(LimitKind::DailyDebit, None, 5_000),
            spec(LimitKind::MaxPerTransaction, Some("USD"), 700),
        ];
        let defaults = [
            spec(LimitKind::DailyDebit, Some("USD"), 1_000),
            spec(LimitKind::DailyDebit, None, 2_000),
            spec(LimitKind::MaxPerTransaction, None, 900),
            spec(LimitKind::MaxPerTransaction, Some("USD"), 800),
            spec(LimitKind::DailyCredit, None, 3_000),
        ];
        let effective: Vec<(&str, &str, i64, &str)> = effective(&own, &defaults)
            .iter()
            .map(|e| (e.kind, e.currency, e.value, e.source))
            .collect();
        assert_eq!(
            effective,
            vec![
                ("daily_credit", "*", 3_000, "default"),
                ("daily_debit", "*", 5_000, "account"),
                ("max_per_transaction", "*", 900, "default"),
                ("max_per_transaction", "USD", 700, "account"),
            ]
        );
    }

    #[test]
    fn every_bad_field_of_an_item_is_named() {
        let errors =
            parse_limit(json!({"kind": "velocity", "currency": "usd", "value": 0})).unwrap_err();
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["currency", "value", "window_s"], "{errors:?}");
        let errors =
            parse_limit(json!({"kind": "supply", "currency": "*", "value": 1, "window_s": "x"}))
                .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["kind", "window_s"]);
    }
}
