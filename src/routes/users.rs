//! `GET /api/v1/users` (admins), `GET`, `PUT` and `DELETE /api/v1/users/{id}` (the user or an
//! admin). A user may change their email and password; only an admin changes a role. Deletion
//! is soft: the user can no longer log in or receive money, and the ledger keeps their history.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::UserBody;
use super::input::{parse, Fields, JsonObject};
use super::{audit, AppState, Page};
use crate::auth::{self, Principal};
use crate::domain::{Email, Password, Role, UserId};
use crate::error::ApiError;
use crate::store::{self, users::DeleteUserError, users::UpdateUserError, users::UserChanges};

/// 409 for a demotion or deletion that would leave no active admin: someone must always be able
/// to manage users and roles.
const LAST_ADMIN: ApiError = ApiError::Conflict {
    code: "last_admin",
    detail: "this is the last admin: make another user an admin first",
};

/// Users per page when `limit` is not given, and the most allowed.
const LIST_LIMIT_DEFAULT: i64 = 50;
pub(crate) const LIST_LIMIT_MAX: i64 = 200;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("").route(web::get().to(list_users)))
        .service(
            web::resource("/{id}")
                .route(web::get().to(get_user))
                .route(web::put().to(update_user))
                .route(web::delete().to(delete_user)),
        );
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Users per page, 1 to 200 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Every user (deleted ones included, with `deleted_at`), oldest first.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_users(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    if !principal.is_admin() {
        return Err(ApiError::Forbidden("only an admin may list users"));
    }
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be from 1 to {LIST_LIMIT_MAX}"),
        ));
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let after = query
        .cursor
        .as_deref()
        .map(|cursor| {
            engine
                .decode(cursor)
                .ok()
                .and_then(|bytes| Uuid::from_slice(&bytes).ok())
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API issued"))
        })
        .transpose()?;
    let client = state.pool.get().await?;
    let mut users = store::users::list(&client, after, limit + 1).await?;
    let next_cursor = if users.len() as i64 > limit {
        users.truncate(limit as usize);
        users
            .last()
            .map(|last| engine.encode(last.id.as_uuid().as_bytes()))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: users.into_iter().map(UserBody::from).collect::<Vec<_>>(),
        next_cursor,
    }))
}

/// The caller as the database knows them now: user management acts on the current role, not
/// on the one in a token that may be up to 15 minutes old (a demoted admin is no longer one).
/// Errors: 401 when the caller was deleted.
pub(super) async fn current(state: &AppState, principal: Principal) -> Result<Principal, ApiError> {
    let client = state.pool.get().await?;
    match store::users::find_active(&client, principal.user.as_uuid()).await? {
        Some(user) => Ok(Principal {
            user: user.id,
            role: user.role,
        }),
        None => Err(ApiError::Unauthorized(
            "the user of this access token no longer exists",
        )),
    }
}

/// The user themself or an admin; anyone else gets 404, as for an unknown id.
pub(super) fn may_access(principal: Principal, id: Uuid) -> Result<(), ApiError> {
    if principal.is_admin() || principal.user.as_uuid() == id {
        Ok(())
    } else {
        Err(ApiError::NotFound("no such user"))
    }
}

/// The user: the caller themself, or anyone for an admin (deleted users too, with
/// `deleted_at`).
#[utoipa::path(
    get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_user(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let id = id.into_inner();
    may_access(principal, id)?;
    let client = state.pool.get().await?;
    match store::users::find(&client, id).await? {
        // Only admins see deleted users.
        Some(user) if user.deleted_at.is_none() || principal.is_admin() => {
            Ok(HttpResponse::Ok().json(UserBody::from(user)))
        }
        _ => Err(ApiError::NotFound("no such user")),
    }
}

/// `{email?, password?, role?}`: the user may change email and password, an admin also the
/// role (`user` or `admin`). A password change revokes the user's refresh tokens.
#[utoipa::path(
    put, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body(content = super::schemas::UpdateUserRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated user", body = UserBody),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only an admin changes a role", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email taken", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_user(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let id = id.into_inner();
    may_access(principal, id)?;
    let mut fields = Fields::new(body);
    let email = fields.optional("email", parse::text(Email::parse));
    let password = fields.optional("password", parse::text(Password::parse));
    let role = fields.optional("role", parse::text(Role::parse));
    if role == Some(Role::System) {
        fields.error("role", "must be user or admin");
    }
    let nothing = email.is_none() && password.is_none() && role.is_none();
    fields.finish()?;
    if nothing {
        return Err(ApiError::field(
            "body",
            "must change at least one of email, password, role",
        ));
    }
    if role.is_some() && !principal.is_admin() {
        return Err(ApiError::Forbidden("only an admin may change a role"));
    }
    let password_hash = match password {
        Some(password) => Some(
            auth::hash_password(password)
                .await
                .map_err(|error| ApiError::Internal(error.into()))?,
        ),
        None => None,
    };
    let mut client = state.pool.get().await?;
    let before = store::users::find(&client, id)
        .await?
        .filter(|user| user.deleted_at.is_none());
    let Some(before) = before else {
        return Err(ApiError::NotFound("no such user"));
    };
    let changes = UserChanges {
        email: email.as_ref(),
        password_hash: password_hash.as_deref(),
        role,
    };
    let user = store::users::update(&mut client, id, &changes)
        .await
        .map_err(|error| match error {
            UpdateUserError::EmailTaken => ApiError::Conflict {
                code: "email_taken",
                detail: "this email is already registered",
            },
            UpdateUserError::LastAdmin => LAST_ADMIN,
            UpdateUserError::Database(error) => error.into(),
        })?
        .ok_or(ApiError::NotFound("no such user"))?;
    let user_id = UserId::from_uuid(id);
    if password_hash.is_some() {
        store::tokens::revoke_all_for_user(&client, user_id).await?;
    }
    let entity = ("user", Some(id.to_string()));
    audit(
        &client,
        &req,
        Some(principal.user),
        entity.clone(),
        "user.updated",
        json!({
            "before": {"email": before.email, "role": before.role.as_str()},
            "after": {"email": user.email, "role": user.role.as_str()},
            "password_changed": password_hash.is_some(),
        }),
    )
    .await;
    if before.role != user.role {
        audit(
            &client,
            &req,
            Some(principal.user),
            entity,
            "user.role_changed",
            json!({"before": before.role.as_str(), "after": user.role.as_str()}),
        )
        .await;
    }
    Ok(HttpResponse::Ok().json(UserBody::from(user)))
}

/// Soft delete. Errors: 409 `balance_not_zero` while any balance of the user is not zero.
#[utoipa::path(
    delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or not yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A balance is not zero", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_user(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = current(&state, principal).await?;
    let id = id.into_inner();
    may_access(principal, id)?;
    let mut client = state.pool.get().await?;
    store::users::soft_delete(&mut client, id)
        .await
        .map_err(|error| match error {
            DeleteUserError::NotFound => ApiError::NotFound("no such user"),
            DeleteUserError::BalanceNotZero => ApiError::Conflict {
                code: "balance_not_zero",
                detail: "move the money out first: every balance must be zero to delete a user",
            },
            DeleteUserError::LastAdmin => LAST_ADMIN,
            DeleteUserError::Database(error) => error.into(),
        })?;
    audit(
        &client,
        &req,
        Some(principal.user),
        ("user", Some(id.to_string())),
        "user.deleted",
        json!({}),
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}

/// A page of users.
#[derive(utoipa::ToSchema)]
pub struct UserPage {
    pub items: Vec<UserBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
