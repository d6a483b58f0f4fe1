//! `POST /api/v1/auth/register`, `/login`, `/refresh`: the only routes under `/api/v1` that
//! need no access token.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::input::{parse, Fields, JsonObject};
use super::AppState;
use crate::auth::{self, JwtKeys};
use crate::domain::{Email, Password, Role, UserId, Username};
use crate::error::ApiError;
use crate::store::{self, tokens::Rotation, users::InsertUserError, users::UserRecord};

/// A user on the wire.
#[derive(Serialize)]
pub struct UserBody {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub role: &'static str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
        }
    }
}

/// The reply of login and refresh.
#[derive(Serialize)]
pub struct TokenBody {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/register").route(web::post().to(register)))
        .service(web::resource("/login").route(web::post().to(login)))
        .service(web::resource("/refresh").route(web::post().to(refresh)));
}

/// `{username, email, password}` → 201 user. Errors: 422 field errors; 409 `username_taken` or
/// `email_taken`.
async fn register(state: web::Data<AppState>, body: JsonObject) -> Result<HttpResponse, ApiError> {
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
    tracing::info!(user_id = %user.id, "user registered");
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/users/{}", user.id)))
        .json(UserBody::from(user)))
}

/// `{username, password}` (the username or the email) → 200 tokens. Errors: 401 for an unknown
/// user or a wrong password (the same reply for both).
async fn login(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body);
    let login = fields.required("username", parse::text(|text: &str| Ok(text.to_owned())));
    let password = fields.required("password", parse::text(|text: &str| Ok(text.to_owned())));
    fields.finish()?;
    let (login, password) = (
        login.expect("finish() refuses missing fields"),
        password.expect("finish() refuses missing fields"),
    );
    let client = state.pool.get().await?;
    let found = store::users::find_for_login(&client, &login).await?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let verified = auth::verify_password(password, hash)
        .await
        .map_err(|error| ApiError::Internal(error.into()))?;
    let Some(user) = user.filter(|_| verified) else {
        tracing::info!("login failed");
        return Err(ApiError::Unauthorized("invalid username or password"));
    };
    let tokens = issue_tokens(&state, &keys, &client, user.id, user.role, Uuid::now_v7()).await?;
    tracing::info!(user_id = %user.id, "login");
    Ok(HttpResponse::Ok().json(tokens))
}

/// `{refresh_token}` → 200 tokens; the presented token is revoked (rotation). Errors: 401 for an
/// unknown, expired, revoked or reused token; reuse also revokes every token of its family.
async fn refresh(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body);
    let presented = fields.required(
        "refresh_token",
        parse::text(|text: &str| Ok(text.to_owned())),
    );
    fields.finish()?;
    let presented = presented.expect("finish() refuses missing fields");
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
        Rotation::Reused => {
            tracing::warn!("refresh token reused: its family is revoked");
            Err(ApiError::Unauthorized("invalid refresh token"))
        }
        Rotation::Invalid => Err(ApiError::Unauthorized("invalid refresh token")),
    }
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
