//! `POST /api/v1/auth/register`, `/login`, `/refresh` and `/logout`: the only routes under
//! `/api/v1` that need no access token (they are rate limited per client IP instead).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::{audit, AppState};
use crate::auth::{self, JwtKeys};
use crate::domain::{Email, LoginName, Password, Role, UserId, Username};
use crate::error::{ApiError, Problem};
use crate::store::{
    self, lockout::LockoutPolicy, tokens::Rotation, users::InsertUserError, users::UserRecord,
};

/// A user on the wire.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserBody {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    /// `user` or `admin`.
    pub role: &'static str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when the user was deleted (only admins see deleted users).
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<UserRecord> for UserBody {
    fn from(user: UserRecord) -> UserBody {
        UserBody {
            id: user.id.as_uuid(),
            username: user.username,
            email: user.email,
            role: user.role.as_str(),
            created_at: user.created_at,
            updated_at: user.updated_at,
            deleted_at: user.deleted_at,
        }
    }
}

/// The reply of login and refresh.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenBody {
    /// HS256 JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque; single use: `/auth/refresh` replaces it.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/register").route(web::post().to(register)))
        .service(web::resource("/login").route(web::post().to(login)))
        .service(web::resource("/refresh").route(web::post().to(refresh)))
        .service(web::resource("/logout").route(web::post().to(logout)));
}

/// Creates a user with role `user`.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body(content = super::schemas::RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = UserBody),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`username_taken` or `email_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body);
    let username = fields.required("username", parse::text(Username::parse));
    let email = fields.required("email", parse::text(Email::parse));
    let password = fields.required("password", parse::text(Password::parse));
    fields.finish()?;
    let (username, email, password) = (
        username.expect("finish() refuses missing fields"),
        email.expect("finish() refuses missing fields"),
        password.expect("finish() refuses missing fields"),
    );
    let hash = auth::hash_password(password)
        .await
        .map_err(|error| ApiError::Internal(error.into()))?;
    let client = state.pool.get().await?;
    let user = store::users::insert(
        &client,
        UserId::generate(),
        &username,
        &email,
        &hash,
        Role::User,
    )
    .await
    .map_err(|error| match error {
        InsertUserError::UsernameTaken => ApiError::Conflict {
            code: "username_taken",
            detail: "this username is already registered",
        },
        InsertUserError::EmailTaken => ApiError::Conflict {
            code: "email_taken",
            detail: "this email is already registered",
        },
        InsertUserError::Database(error) => error.into(),
    })?;
    audit(
        &client,
        &req,
        Some(user.id),
        ("user", Some(user.id.to_string())),
        "user.registered",
        json!({}),
    )
    .await;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/users/{}", user.id)))
        .json(UserBody::from(user)))
}

/// `username` may be the username or the email. After `auth.lockout_threshold` failures within
/// `auth.lockout_window_s` the name is locked for `auth.lockout_duration_s` (429
/// `login_locked`), whether or not such a user exists.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body(content = super::schemas::LoginRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Tokens", body = TokenBody),
        (status = 401, description = "Invalid username or password", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` or `login_locked`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body);
    let login = fields.required("username", parse::text(LoginName::parse));
    let password = fields.required("password", parse::text(|text: &str| Ok(text.to_owned())));
    fields.finish()?;
    let (login, password) = (
        login
            .expect("finish() refuses missing fields")
            .as_str()
            .to_owned(),
        password.expect("finish() refuses missing fields"),
    );
    let client = state.pool.get().await?;
    let found = store::users::find_for_login(&client, &login).await?;
    // Failures count per account: its username and its email share one counter, so trying
    // both does not double an attacker's guesses. Unknown names count on their own.
    let lock_key = found
        .as_ref()
        .map_or_else(|| login.clone(), |(user, _)| user.username.clone());
    if let Some(until) = store::lockout::locked_until(&client, &lock_key).await? {
        metrics::counter!(crate::telemetry::names::LOGIN_LOCKOUTS).increment(1);
        return Err(ApiError::LoginLocked {
            retry_after_s: seconds_until(until),
        });
    }
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let verified = auth::verify_password(password, hash)
        .await
        .map_err(|error| ApiError::Internal(error.into()))?;
    let Some(user) = user.filter(|_| verified) else {
        let policy = LockoutPolicy {
            threshold: state.settings.auth.lockout_threshold,
            window_s: state.settings.auth.lockout_window_s,
            duration_s: state.settings.auth.lockout_duration_s,
        };
        let locked = store::lockout::record_failure(&client, &lock_key, policy).await?;
        audit(
            &client,
            &req,
            None,
            ("login", Some(login.to_lowercase())),
            "login.failed",
            json!({}),
        )
        .await;
        if let Some(until) = locked {
            audit(
                &client,
                &req,
                None,
                ("login", Some(login.to_lowercase())),
                "login.locked",
                json!({"until": until}),
            )
            .await;
        }
        return Err(ApiError::Unauthorized("invalid username or password"));
    };
    store::lockout::clear(&client, &lock_key).await?;
    let tokens = issue_tokens(&state, &keys, &client, user.id, user.role, Uuid::now_v7()).await?;
    audit(
        &client,
        &req,
        Some(user.id),
        ("user", Some(user.id.to_string())),
        "login.succeeded",
        json!({}),
    )
    .await;
    Ok(HttpResponse::Ok().json(tokens))
}

fn seconds_until(until: DateTime<Utc>) -> u64 {
    u64::try_from((until - Utc::now()).num_seconds())
        .unwrap_or(0)
        .max(1)
}

/// Rotates a refresh token: the presented one is revoked and a new pair is issued. Presenting
/// an already rotated token revokes its whole family (reuse detection).
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body(content = super::schemas::RefreshRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "New tokens", body = TokenBody),
        (status = 401, description = "Unknown, expired, revoked or reused token", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let presented = refresh_token_field(body)?;
    let new_token = auth::new_refresh_token();
    let mut client = state.pool.get().await?;
    let rotation = store::tokens::rotate(
        &mut client,
        &auth::refresh_token_hash(&presented),
        &auth::refresh_token_hash(&new_token),
        refresh_expiry(&state),
    )
    .await?;
    match rotation {
        Rotation::Rotated { user, role } => {
            let access_token = keys.issue(user, role).map_err(ApiError::Internal)?;
            Ok(HttpResponse::Ok().json(TokenBody {
                access_token,
                refresh_token: new_token,
                token_type: "Bearer",
                expires_in: keys.access_token_ttl_s,
            }))
        }
        Rotation::Reused { user } => {
            tracing::warn!(user_id = %user, "refresh token reused: its family is revoked");
            audit(
                &client,
                &req,
                Some(user),
                ("user", Some(user.to_string())),
                "refresh_token.reused",
                json!({}),
            )
            .await;
            Err(ApiError::Unauthorized("invalid refresh token"))
        }
        Rotation::Invalid => Err(ApiError::Unauthorized("invalid refresh token")),
    }
}

/// Revokes the presented refresh token and every token rotated from the same login. Always 204,
/// so it reveals nothing about the token.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    request_body(content = super::schemas::RefreshRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let presented = refresh_token_field(body)?;
    let client = state.pool.get().await?;
    if let Some(user) =
        store::tokens::revoke_family(&client, &auth::refresh_token_hash(&presented)).await?
    {
        audit(
            &client,
            &req,
            Some(user),
            ("user", Some(user.to_string())),
            "logout",
            json!({}),
        )
        .await;
    }
    Ok(HttpResponse::NoContent().finish())
}

fn refresh_token_field(body: JsonObject) -> Result<String, ApiError> {
    let mut fields = Fields::new(body);
    let presented = fields.required(
        "refresh_token",
        parse::text(|text: &str| Ok(text.to_owned())),
    );
    fields.finish()?;
    Ok(presented.expect("finish() refuses missing fields"))
}

fn refresh_expiry(state: &AppState) -> DateTime<Utc> {
    let ttl = i64::try_from(state.settings.auth.refresh_token_ttl_s).unwrap_or(i64::MAX / 2);
    Utc::now() + chrono::Duration::seconds(ttl)
}

async fn issue_tokens(
    state: &AppState,
    keys: &JwtKeys,
    client: &deadpool_postgres::Client,
    user: UserId,
    role: Role,
    family: Uuid,
) -> Result<TokenBody, ApiError> {
    let access_token = keys.issue(user, role).map_err(ApiError::Internal)?;
    let refresh_token = auth::new_refresh_token();
    store::tokens::insert(
        client,
        user,
        family,
        &auth::refresh_token_hash(&refresh_token),
        refresh_expiry(state),
    )
    .await?;
    Ok(TokenBody {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: keys.access_token_ttl_s,
    })
}
