//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the DTOs' schemas, served at `GET /openapi.json`; Swagger UI (compiled into the binary, no
//! CDN) at `/docs/`.
//!
//! Request bodies are parsed field by field (`routes::input`) so that every bad field is
//! reported. The request schemas below say exactly what those parsers accept: what utoipa's
//! attributes cannot say (the currency list, enums, formats, cross-field rules, the bulk size
//! from the configuration, the `Idempotency-Key` header) [`exact`] writes into the rendered
//! document, from the same constants and functions the parsers use. `tests/api/openapi.rs`
//! proves the two agree field by field: it derives valid and boundary-invalid values from each
//! request schema and parameter, sends them to the real app, and requires a 422 naming the field
//! exactly when the schema refuses the value.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::{TokenBody, UserBody};
use super::posting::TransactionBody;
use super::schemas::{
    AlertRequest, BulkItem, BulkRequest, DebitRequest, HoldRequest, LimitItem, LimitsRequest,
    LoginRequest, MovementRequest, OverdraftRequest, PostRequest, RecurrenceRequest,
    RefreshRequest, RegisterRequest, ReverseRequest, ScheduleRequest, ScheduleTemplate,
    TransferRequest, UpdateUserRequest,
};
use super::transactions::TransactionPage;
use super::users::UserPage;
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "A double-entry money ledger. Amounts are integers of minor units (1234 USD = 12.34 USD). \
                       Errors are application/problem+json.",
    ),
    paths(
        super::auth::register, super::auth::login, super::auth::refresh, super::auth::logout,
        super::users::list_users, super::users::get_user, super::users::update_user, super::users::delete_user,
        super::transactions::credit, super::transactions::debit, super::transactions::transfer, super::bulk::bulk,
        super::transactions::get_transaction, super::transactions::history,
        super::holds::post, super::holds::void, super::reversals::reverse,
        super::balances::current, super::balances::historical, super::balances::at_time,
        super::limits::get_account_limits, super::limits::put_account_limits,
        super::limits::get_defaults, super::limits::put_defaults, super::limits::put_overdraft,
        super::alerts::create, super::alerts::list, super::alerts::delete,
        super::fx::currencies, super::fx::list_rates, super::fx::put_rate, super::fx::quote, super::fx::exchange,
        super::schedules::create, super::schedules::list, super::schedules::get_schedule,
        super::schedules::pause, super::schedules::resume, super::schedules::cancel,
        super::events::list,
        super::webhooks::create, super::webhooks::list, super::webhooks::delete,
        super::webhooks::enable, super::webhooks::deliveries,
        super::feed::connect, super::feed::ticket,
        super::ops::metrics, super::ops::live, super::ops::ready, openapi_json,
    ),
    components(schemas(
        Problem, FieldError, UserBody, TokenBody, TransactionBody, UserPage, TransactionPage,
        super::balances::BalancesBody, super::balances::BalanceBody, super::balances::ChangesBody,
        super::balances::ChangeBody, super::balances::ClosingBalancesBody, super::balances::ClosingBody,
        super::balances::HistoricalBody, super::balances::AtTimeBody, super::ops::HealthBody,
        super::bulk::BulkBody, super::bulk::BulkResult, BulkRequest, BulkItem, RegisterRequest, LoginRequest, RefreshRequest, UpdateUserRequest, MovementRequest, DebitRequest, TransferRequest, HoldRequest, PostRequest, ReverseRequest,
        LimitsRequest, LimitItem, OverdraftRequest, AlertRequest,
        super::limits::LimitBody, super::limits::EffectiveLimitBody, super::limits::AccountLimitsBody,
        super::limits::DefaultLimitsBody, super::alerts::AlertBody, super::alerts::AlertsBody,
        super::schemas::RateRequest, super::schemas::QuoteRequest, super::schemas::ExchangeRequest,
        super::fx::CurrencyBody, super::fx::CurrenciesBody, super::fx::RateBody, super::fx::RatesBody, super::fx::QuoteBody, super::posting::ExchangeBody,
        ScheduleRequest, ScheduleTemplate, super::schemas::ExchangeTemplate, RecurrenceRequest, super::schedules::ScheduleBody,
        super::schedules::SchedulePage, super::schedules::RecurrenceBody, super::schedules::RunBody,
        super::schedules::RunPage, super::events::EventBody, super::events::EventPage,
        super::events::EventAccount, super::schemas::WebhookRequest, super::webhooks::WebhookBody,
        super::webhooks::WebhooksBody, super::webhooks::DeliveryBody, super::webhooks::DeliveryPage,
        super::events::EventAccount, super::feed::TicketBody,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Registration, login and tokens"),
        (name = "users", description = "User management"),
        (name = "transactions", description = "Credits, debits, transfers and history"),
        (name = "balances", description = "Balances"),
        (name = "limits", description = "Limits, default limits and overdrafts (admins set them)"),
        (name = "alerts", description = "Balance alerts"),
        (name = "exchange", description = "Exchange rates, quotes and currency exchange"),
        (name = "schedules", description = "Scheduled and recurring transactions"),
        (name = "events", description = "The event log, its live feed and webhooks"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")))]
pub async fn openapi_json(document: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

/// The document as JSON, rendered once at start.
pub struct OpenApiDocument(pub String);

impl OpenApiDocument {
    /// The document for a service whose bulk requests take at most `bulk_max_items` items
    /// (`bulk.max_items`) and whose holds at most `hold_timeout_s_max` seconds
    /// (`holds.timeout_s_max`).
    pub fn render(bulk_max_items: usize, hold_timeout_s_max: u32) -> OpenApiDocument {
        let mut document =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
        exact::apply(&mut document, bulk_max_items, hold_timeout_s_max);
        OpenApiDocument(document.to_string())
    }
}

/// The request rules utoipa's attributes cannot express, written into the rendered document
/// from the parsers' own constants. Each `set` names a location that must exist, so renaming a
/// field or parameter without updating this fails at the first render (every API test).
mod exact {
    use serde_json::{json, Value};

    use crate::domain::{
        Amount, Currency, Description, Email, IdempotencyKey, LimitKind, Reference, FEES_USER_ID,
        MONEY_BOUND_MINOR, SYSTEM_USER_ID, WINDOW_MAX_S,
    };
    use crate::routes::{balances, limits, posting, schedules, transactions, users};

    /// Where a request schema lives.
    const SCHEMAS: &str = "/components/schemas";

    pub fn apply(document: &mut Value, bulk_max_items: usize, hold_timeout_s_max: u32) {
        let codes: Vec<&str> = Currency::all().into_iter().map(Currency::code).collect();
        set(
            document,
            &format!("{SCHEMAS}/Currency"),
            json!({
                "type": "string",
                "description": "An ISO 4217 code of a currency with minor units.",
                "pattern": "^[A-Z]{3}$",
                "enum": codes,
            }),
        );
        let currency = json!({"$ref": "#/components/schemas/Currency"});
        let not_system = json!({"not": {"const": SYSTEM_USER_ID.to_string()}});

        // Accounts and users.
        let email = json!({
            "type": "string",
            "format": "email",
            "pattern": Email::PATTERN,
            "maxLength": Email::MAX_CHARS,
        });
        set(
            document,
            &format!("{SCHEMAS}/RegisterRequest/properties/email"),
            email.clone(),
        );
        let update = format!("{SCHEMAS}/UpdateUserRequest");
        let mut nullable_email = email;
        nullable_email["type"] = json!(["string", "null"]);
        set(
            document,
            &format!("{update}/properties/email"),
            nullable_email,
        );
        set(
            document,
            &format!("{update}/properties/role"),
            json!({
                "type": ["string", "null"],
                "description": "Admins only.",
                "enum": ["user", "admin", null],
            }),
        );
        // `null` means "leave as is", so at least one field must be present and not null.
        set(document, &format!("{update}/minProperties"), json!(1));
        set(
            document,
            &format!("{update}/anyOf"),
            json!(["email", "password", "role"]
                .iter()
                .map(|name| {
                    let mut properties = serde_json::Map::new();
                    properties.insert((*name).to_owned(), json!({"type": "string"}));
                    json!({"required": [name], "properties": properties})
                })
                .collect::<Vec<_>>()),
        );

        // Money movements.
        set(
            document,
            &format!("{SCHEMAS}/HoldRequest/properties/timeout_s"),
            json!({
                "type": "integer",
                "format": "int32",
                "description": "Seconds, 1 to `holds.timeout_s_max`.",
                "minimum": 1,
                "maximum": hold_timeout_s_max,
            }),
        );
        let mut reason = text(Description::MAX_CHARS, 1);
        reason["type"] = json!("string");
        set(
            document,
            &format!("{SCHEMAS}/ReverseRequest/properties/reason"),
            reason,
        );
        for schema in [
            "MovementRequest",
            "DebitRequest",
            "TransferRequest",
            "BulkItem",
            "ScheduleTemplate",
        ] {
            let properties = format!("{SCHEMAS}/{schema}/properties");
            set(
                document,
                &format!("{properties}/currency"),
                currency.clone(),
            );
            set(
                document,
                &format!("{properties}/amount"),
                json!({
                    "type": "integer",
                    "format": "int64",
                    "description": "Minor units, 1 to 10^15.",
                    "minimum": 1,
                    "maximum": Amount::MAX_MINOR,
                }),
            );
            set(
                document,
                &format!("{properties}/description"),
                text(Description::MAX_CHARS, 0),
            );
            set(
                document,
                &format!("{properties}/reference"),
                text(Reference::MAX_CHARS, 1),
            );
            for party in ["user_id", "from_user_id", "to_user_id"] {
                let pointer = format!("{properties}/{party}");
                if let Some(field) = document.pointer_mut(&pointer) {
                    field["allOf"] = json!([not_system]);
                }
            }
        }
        // Exchange.
        let optional_currency = json!({"anyOf": [currency.clone(), {"type": "null"}]});
        for (schema, required) in [("QuoteRequest", true), ("ExchangeRequest", false)] {
            let properties = format!("{SCHEMAS}/{schema}/properties");
            for field in ["from_currency", "to_currency"] {
                let value = if required {
                    currency.clone()
                } else {
                    optional_currency.clone()
                };
                set(document, &format!("{properties}/{field}"), value);
            }
        }
        let exchange = format!("{SCHEMAS}/ExchangeRequest/properties");
        set(
            document,
            &format!("{exchange}/description"),
            text(Description::MAX_CHARS, 0),
        );
        set(
            document,
            &format!("{exchange}/reference"),
            text(Reference::MAX_CHARS, 1),
        );
        if let Some(field) = document.pointer_mut(&format!("{exchange}/to_user_id")) {
            field["allOf"] = json!([not_system, {"not": {"const": FEES_USER_ID.to_string()}}]);
        }
        let mut source = text(100, 1);
        source["type"] = json!("string");
        set(
            document,
            &format!("{SCHEMAS}/RateRequest/properties/source"),
            source,
        );
        for name in ["from", "to"] {
            parameter(
                document,
                "put",
                "/api/v1/rates/{from}/{to}",
                name,
                currency.clone(),
            );
        }
        let bulk = format!("{SCHEMAS}/BulkRequest/properties");
        set(
            document,
            &format!("{bulk}/mode"),
            json!({
                "type": "string",
                "description": "`atomic` (all or nothing) or `independent` (each item alone).",
                "enum": ["atomic", "independent"],
            }),
        );
        set(document, &format!("{bulk}/transactions/minItems"), json!(1));
        set(
            document,
            &format!("{bulk}/transactions/maxItems"),
            json!(bulk_max_items),
        );
        let item = format!("{SCHEMAS}/BulkItem");
        set(
            document,
            &format!("{item}/properties/type"),
            json!({"type": "string", "enum": ["credit", "debit", "transfer"]}),
        );
        // A transfer names its payee and never `user_id`; a credit or debit names neither end.
        set(
            document,
            &format!("{item}/if"),
            json!({"properties": {"type": {"const": "transfer"}}}),
        );
        set(
            document,
            &format!("{item}/then"),
            json!({
                "required": ["to_user_id"],
                "properties": {"to_user_id": {"type": "string"}, "user_id": {"type": "null"}},
            }),
        );
        set(
            document,
            &format!("{item}/else"),
            json!({"properties": {"from_user_id": {"type": "null"}, "to_user_id": {"type": "null"}}}),
        );
        // Only what leaves a user's account can be held: never a credit.
        set(
            document,
            &format!("{item}/allOf"),
            json!([{
                "if": {"properties": {"type": {"const": "credit"}}},
                "then": {"properties": {"hold": {"type": "null"}}},
            }]),
        );

        // Schedules: the template is a credit, debit or transfer request with its type.
        let template = format!("{SCHEMAS}/ScheduleTemplate");
        // The movement templates; an exchange's is `ExchangeTemplate` (the last type).
        let (exchange_type, movement_types) = transactions::TEMPLATE_TYPES
            .split_last()
            .expect("template types");
        set(
            document,
            &format!("{template}/properties/type"),
            json!({"type": "string", "enum": movement_types}),
        );
        let exchange_template = format!("{SCHEMAS}/ExchangeTemplate/properties");
        set(
            document,
            &format!("{exchange_template}/type"),
            json!({"type": "string", "enum": [exchange_type]}),
        );
        for field in ["from_currency", "to_currency"] {
            set(
                document,
                &format!("{exchange_template}/{field}"),
                currency.clone(),
            );
        }
        set(
            document,
            &format!("{exchange_template}/description"),
            text(Description::MAX_CHARS, 0),
        );
        set(
            document,
            &format!("{exchange_template}/reference"),
            text(Reference::MAX_CHARS, 1),
        );
        if let Some(field) = document.pointer_mut(&format!("{exchange_template}/to_user_id")) {
            field["allOf"] = json!([not_system, {"not": {"const": FEES_USER_ID.to_string()}}]);
        }
        set(
            document,
            &format!("{SCHEMAS}/ScheduleRequest/properties/transaction"),
            json!({
                "description": "What to run: the body of `POST /transactions/<type>` with its `type`.",
                "oneOf": [
                    {"$ref": "#/components/schemas/ScheduleTemplate"},
                    {"$ref": "#/components/schemas/ExchangeTemplate"},
                ],
            }),
        );
        set(
            document,
            &format!("{template}/if"),
            json!({"properties": {"type": {"const": "transfer"}}}),
        );
        set(
            document,
            &format!("{template}/then"),
            json!({
                "required": ["to_user_id"],
                "properties": {"to_user_id": {"type": "string"}},
                "not": {"required": ["user_id"]},
            }),
        );
        // The fields a request does not read are unknown to it, even when null.
        set(
            document,
            &format!("{template}/else"),
            json!({"not": {"required": ["to_user_id"]}}),
        );
        set(
            document,
            &format!("{template}/allOf"),
            json!([{
                "if": {"properties": {"type": {"const": "credit"}}},
                "then": {"not": {"required": ["hold"]}},
            }]),
        );
        let schedule = format!("{SCHEMAS}/ScheduleRequest/properties");
        set(
            document,
            &format!("{schedule}/start_at"),
            json!({"type": "string", "format": "date-time",
                   "description": "RFC 3339; at most `schedules.start_grace_s` in the past."}),
        );
        set(
            document,
            &format!("{schedule}/misfire_policy"),
            json!({"type": "string", "enum": ["run_once", "catch_up", "skip"]}),
        );
        set(
            document,
            &format!("{schedule}/on_failure"),
            json!({"type": "string", "enum": ["fail", "retry"]}),
        );
        let recurrence = format!("{SCHEMAS}/RecurrenceRequest");
        set(
            document,
            &format!("{recurrence}/properties/every"),
            json!({"type": "string", "enum": ["day", "week", "month"]}),
        );
        set(
            document,
            &format!("{recurrence}/properties/interval"),
            json!({"type": "integer", "format": "int32", "minimum": 1,
                   "description": "1 to 3660 for day, 520 for week, 120 for month."}),
        );
        set(
            document,
            &format!("{recurrence}/allOf"),
            json!([
                crate::domain::Every::Day,
                crate::domain::Every::Week,
                crate::domain::Every::Month
            ]
            .iter()
            .map(|every| json!({
                "if": {"properties": {"every": {"const": every.as_str()}}},
                "then": {"properties": {"interval": {"maximum": every.interval_max()}}},
            }))
            .collect::<Vec<_>>()),
        );
        set(
            document,
            &format!("{recurrence}/properties/count"),
            json!({"type": ["integer", "null"], "format": "int32", "minimum": 1,
                   "maximum": crate::domain::COUNT_MAX}),
        );
        set(
            document,
            &format!("{recurrence}/properties/until"),
            json!({"type": ["string", "null"], "format": "date-time"}),
        );
        set(
            document,
            &format!("{recurrence}/properties/time_zone"),
            json!({"type": "string", "description": "An IANA time zone name (tz database).",
                   "enum": chrono_tz::TZ_VARIANTS.iter().map(|zone| zone.name()).collect::<Vec<_>>()}),
        );
        // A schedule ends one way: not both count and until.
        set(
            document,
            &format!("{recurrence}/not"),
            json!({"required": ["count", "until"],
                   "properties": {"count": {"type": "integer"}, "until": {"type": "string"}}}),
        );
        for (status, body) in [
            (
                "status",
                json!({"type": "string", "enum": ["active", "paused", "cancelled", "completed"]}),
            ),
            (
                "misfire_policy",
                json!({"type": "string", "enum": ["run_once", "catch_up", "skip"]}),
            ),
            (
                "on_failure",
                json!({"type": "string", "enum": ["fail", "retry"]}),
            ),
        ] {
            set(
                document,
                &format!("{SCHEMAS}/ScheduleBody/properties/{status}"),
                body,
            );
        }
        set(
            document,
            &format!("{SCHEMAS}/RunBody/properties/outcome"),
            json!({"type": "string", "enum": ["completed", "failed", "skipped"]}),
        );
        set(
            document,
            &format!("{SCHEMAS}/RecurrenceBody/properties/every"),
            json!({"type": "string", "enum": ["day", "week", "month"]}),
        );
        parameter(
            document,
            "get",
            "/api/v1/schedules",
            "limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": schedules::LIMIT_MAX}),
        );
        parameter(
            document,
            "get",
            "/api/v1/schedules/{id}",
            "runs_limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": schedules::LIMIT_MAX}),
        );

        parameter(
            document,
            "get",
            "/api/v1/events",
            "limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000}),
        );
        parameter(
            document,
            "get",
            "/api/v1/events",
            "after",
            json!({"type": "string", "pattern": "^[0-9]{1,19}\\.[0-9]{1,19}$"}),
        );
        set(
            document,
            &format!("{SCHEMAS}/EventBody/properties/type"),
            json!({"type": "string", "enum": crate::routes::events::EVENT_TYPES}),
        );

        // Webhooks: the event types a subscription may name, the delivery log's paging.
        set(
            document,
            &format!("{SCHEMAS}/WebhookRequest/properties/types"),
            json!({
                "description": "Event types to receive, at least one, each once; absent or null: every type.",
                "type": ["array", "null"],
                "minItems": 1,
                "uniqueItems": true,
                "items": {"type": "string", "enum": crate::routes::events::EVENT_TYPES},
            }),
        );
        parameter(
            document,
            "get",
            "/api/v1/webhooks/{id}/deliveries",
            "limit",
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 500}),
        );
        parameter(
            document,
            "get",
            "/api/v1/webhooks/{id}/deliveries",
            "cursor",
            json!({"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}),
        );

        // Limits, overdrafts and alerts.
        let configurable: Vec<&str> = LimitKind::ALL
            .into_iter()
            .filter(|kind| kind.is_configurable())
            .map(LimitKind::as_str)
            .collect();
        let windowed: Vec<&str> = LimitKind::ALL
            .into_iter()
            .filter(|kind| kind.is_configurable() && kind.has_window())
            .map(LimitKind::as_str)
            .collect();
        let kind = json!({"type": "string", "enum": configurable});
        // The limit a `limit_exceeded` problem names: any kind, configured or a bound of
        // invariant 7.
        let every_kind: Vec<&str> = LimitKind::ALL.into_iter().map(LimitKind::as_str).collect();
        set(
            document,
            &format!("{SCHEMAS}/Problem/properties/limit"),
            json!({
                "type": ["object", "null"],
                "description": "With limit_exceeded: the limit the movement would cross. `value` \
                    in minor units of `currency` (a number of debits for velocity); `window_s` \
                    for rolling_debit and velocity, else null.",
                "required": ["kind", "currency", "value"],
                "additionalProperties": false,
                "properties": {
                    "kind": {"type": "string", "enum": every_kind},
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "value": {"type": "integer", "minimum": 1},
                    "window_s": {"type": ["integer", "null"], "minimum": 1},
                },
            }),
        );
        let limit_currency = json!({"anyOf": [currency.clone(), {"type": "string", "const": "*"}]});
        let limit_value = json!({
            "type": "integer",
            "format": "int64",
            "description": "Minor units (a number of debits for `velocity`), 1 to 2^61.",
            "minimum": 1,
            "maximum": MONEY_BOUND_MINOR,
        });
        let window = json!({
            "type": ["integer", "null"],
            "description": "Seconds, 1 to 366 days; only and always for the rolling kinds.",
            "minimum": 1,
            "maximum": WINDOW_MAX_S,
        });
        let item = format!("{SCHEMAS}/LimitItem");
        set(document, &format!("{item}/properties/kind"), kind.clone());
        set(
            document,
            &format!("{item}/properties/currency"),
            limit_currency.clone(),
        );
        set(document, &format!("{item}/properties/value"), limit_value);
        set(document, &format!("{item}/properties/window_s"), window);
        // A window exactly on the rolling kinds.
        set(
            document,
            &format!("{item}/if"),
            json!({"required": ["kind"], "properties": {"kind": {"enum": windowed}}}),
        );
        set(
            document,
            &format!("{item}/then"),
            json!({"required": ["window_s"], "properties": {"window_s": {"type": "integer"}}}),
        );
        set(
            document,
            &format!("{item}/else"),
            json!({"properties": {"window_s": {"type": "null"}}}),
        );
        let set_of = format!("{SCHEMAS}/LimitsRequest/properties/limits");
        set(document, &format!("{set_of}/minItems"), json!(0));
        set(
            document,
            &format!("{set_of}/maxItems"),
            json!(limits::LIMITS_MAX),
        );
        for body in ["LimitBody", "EffectiveLimitBody"] {
            let properties = format!("{SCHEMAS}/{body}/properties");
            set(document, &format!("{properties}/kind"), kind.clone());
            set(
                document,
                &format!("{properties}/currency"),
                limit_currency.clone(),
            );
        }
        set(
            document,
            &format!("{SCHEMAS}/EffectiveLimitBody/properties/source"),
            json!({"type": "string", "enum": ["account", "default"]}),
        );
        set(
            document,
            &format!("{SCHEMAS}/OverdraftRequest/properties/overdraft_limit"),
            json!({
                "type": "integer",
                "format": "int64",
                "description": "Minor units, 0 to 2^61.",
                "minimum": 0,
                "maximum": MONEY_BOUND_MINOR,
            }),
        );
        let alert = format!("{SCHEMAS}/AlertRequest/properties");
        set(document, &format!("{alert}/currency"), currency.clone());
        let condition = json!({"type": "string", "enum": ["below", "above"]});
        set(document, &format!("{alert}/condition"), condition.clone());
        set(
            document,
            &format!("{alert}/threshold"),
            json!({
                "type": "integer",
                "format": "int64",
                "description": "Minor units, -2^61 to 2^61.",
                "minimum": -MONEY_BOUND_MINOR,
                "maximum": MONEY_BOUND_MINOR,
            }),
        );
        if let Some(field) = document.pointer_mut(&format!("{alert}/user_id")) {
            field["allOf"] = json!([not_system]);
        }
        set(
            document,
            &format!("{SCHEMAS}/AlertBody/properties/condition"),
            condition,
        );
        for (method, path) in [
            ("put", "/api/v1/users/{id}/limits"),
            ("put", "/api/v1/users/{id}/accounts/{currency}"),
        ] {
            parameter(
                document,
                method,
                path,
                "id",
                json!({"type": "string", "format": "uuid", "not": {"const": SYSTEM_USER_ID.to_string()}}),
            );
        }
        parameter(
            document,
            "put",
            "/api/v1/users/{id}/accounts/{currency}",
            "currency",
            currency.clone(),
        );

        // Query parameters and headers.
        let date_time = json!({"type": "string", "format": "date-time"});
        let limit =
            |max: i64| json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": max});
        parameter(
            document,
            "get",
            "/api/v1/users",
            "limit",
            limit(users::LIST_LIMIT_MAX),
        );
        let history = "/api/v1/transactions/history";
        parameter(
            document,
            "get",
            history,
            "limit",
            limit(transactions::HISTORY_LIMIT_MAX),
        );
        parameter(
            document,
            "get",
            history,
            "type",
            json!({"type": "string", "enum": ["credit", "debit", "transfer", "reversal", "exchange"]}),
        );
        parameter(
            document,
            "get",
            history,
            "status",
            json!({"type": "string", "enum": crate::domain::TransactionStatus::ALL.map(crate::domain::TransactionStatus::as_str)}),
        );
        parameter(document, "get", history, "currency", currency.clone());
        for bound in ["min_amount", "max_amount"] {
            parameter(
                document,
                "get",
                history,
                bound,
                json!({"type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX}),
            );
        }
        parameter(document, "get", history, "from", date_time.clone());
        parameter(document, "get", history, "to", date_time.clone());
        parameter(
            document,
            "get",
            "/api/v1/balances/current",
            "currency",
            currency.clone(),
        );
        let historical = "/api/v1/balances/historical";
        parameter(document, "get", historical, "currency", currency.clone());
        parameter(document, "get", historical, "from", date_time.clone());
        parameter(document, "get", historical, "to", date_time.clone());
        parameter(
            document,
            "get",
            historical,
            "interval",
            json!({"type": "string", "enum": ["hour", "day"]}),
        );
        parameter(
            document,
            "get",
            historical,
            "limit",
            limit(balances::CHANGES_LIMIT_MAX),
        );
        let at_time = "/api/v1/balances/at-time";
        parameter(document, "get", at_time, "at", date_time);
        parameter(document, "get", at_time, "currency", currency);
        for path in [
            "credit",
            "debit",
            "transfer",
            "bulk",
            "{id}/post",
            "{id}/void",
            "{id}/reverse",
            "exchange",
            // Not a money request: the creation of a schedule.
            "schedules",
        ] {
            // A bulk item's key is `<key>#<index>`, and `#` plus up to four digits must fit.
            let max = if path == "bulk" {
                IdempotencyKey::MAX_LEN - 5
            } else {
                IdempotencyKey::MAX_LEN
            };
            let path = if path == "schedules" {
                "/api/v1/schedules".to_owned()
            } else {
                format!("/api/v1/transactions/{path}")
            };
            parameter(
                document,
                "post",
                &path,
                posting::IDEMPOTENCY_KEY,
                json!({
                    "type": "string",
                    "description": "Visible ASCII characters, not beginning with `schedule:` \
                        (the keys of scheduled runs).",
                    "pattern": format!("^[!-~]{{1,{max}}}$"),
                    "minLength": 1,
                    "maxLength": max,
                    "not": {"pattern": format!("^{}", posting::RESERVED_KEY_PREFIX)},
                }),
            );
        }
    }

    /// Optional free text of `min..=max` characters without control characters (Unicode
    /// category Cc, which `char::is_control` tests: U+0000 to U+001F and U+007F to U+009F). The
    /// class holds the characters themselves, not `\u` escapes, which not every regex dialect
    /// reads.
    fn text(max: usize, min: usize) -> Value {
        json!({
            "type": ["string", "null"],
            "minLength": min,
            "maxLength": max,
            "pattern": format!("^[^{}-{}{}-{}]*$", '\u{0}', '\u{1f}', '\u{7f}', '\u{9f}'),
        })
    }

    /// Replaces (or adds) the value at `pointer`, whose parent must exist.
    fn set(document: &mut Value, pointer: &str, value: Value) {
        let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
        let parent = document
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("the OpenAPI document has no object at {parent}"));
        parent.insert(key.replace("~1", "/"), value);
    }

    /// Replaces the schema of the parameter `name` of an operation, keeping its description.
    fn parameter(document: &mut Value, method: &str, path: &str, name: &str, schema: Value) {
        let parameters = document["paths"][path][method]["parameters"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"));
        let parameter = parameters
            .iter_mut()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"));
        parameter["schema"] = schema;
    }
}
