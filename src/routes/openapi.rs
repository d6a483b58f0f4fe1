//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the DTOs' schemas, served at `GET /openapi.json`; Swagger UI (compiled into the binary, no
//! CDN) at `/docs/`.
//!
//! Request bodies are parsed field by field (`routes::input`) so that every bad field is
//! reported; the request schemas below document that parsing and the API tests check the
//! requests they send against them.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::auth::{TokenBody, UserBody};
use super::transactions::TransactionBody;
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
        super::balances::current, super::balances::historical, super::balances::at_time,
        super::ops::metrics, super::ops::live, super::ops::ready, openapi_json,
    ),
    components(schemas(
        Problem, FieldError, UserBody, TokenBody, TransactionBody, UserPage, TransactionPage,
        super::balances::BalancesBody, super::balances::BalanceBody, super::balances::ChangesBody,
        super::balances::ChangeBody, super::balances::ClosingBalancesBody, super::balances::ClosingBody,
        super::balances::HistoricalBody, super::balances::AtTimeBody, super::ops::HealthBody,
        super::bulk::BulkBody, super::bulk::BulkResult, BulkRequest, BulkItem, RegisterRequest, LoginRequest, RefreshRequest, UpdateUserRequest, MovementRequest, TransferRequest,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Registration, login and tokens"),
        (name = "users", description = "User management"),
        (name = "transactions", description = "Credits, debits, transfers and history"),
        (name = "balances", description = "Balances"),
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

/// A page of users.
#[derive(ToSchema)]
pub struct UserPage {
    pub items: Vec<UserBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A page of transactions, newest first.
#[derive(ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

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
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username or the email.
    pub username: String,
    pub password: String,
}

#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// At least one field. `role` only by an admin.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub email: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// `user` or `admin`.
    pub role: Option<String>,
}

/// A credit (money from the system account) or a debit (to it).
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
    pub fn render() -> OpenApiDocument {
        OpenApiDocument(
            ApiDoc::openapi()
                .to_json()
                .expect("the OpenAPI document serializes"),
        )
    }
}
