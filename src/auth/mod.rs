//! Authentication: argon2id password hashes, HS256 access tokens (JWT), opaque refresh tokens,
//! and the bearer-token middleware that guards `/api/v1` (except `/auth/*`).

mod jwt;
mod password;

use std::future::{ready, Ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{http::header, web, FromRequest, HttpMessage, HttpRequest};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use jwt::{Claims, JwtKeys};
pub use password::{hash_password, verify_password, PasswordError};

use crate::domain::{Role, UserId};
use crate::error::ApiError;

/// The authenticated caller of a request, from a verified access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .copied()
                .ok_or(ApiError::Unauthorized("authentication required")),
        )
    }
}

/// Middleware: requires `Authorization: Bearer <access token>`, verifies it, and stores the
/// [`Principal`] in the request's extensions. Errors: 401 `unauthorized` when the header is
/// missing or malformed, or the token is invalid or expired. The 401 is answered here, not
/// returned as an `Err`, which would bypass the layers outside (security headers, CORS, request
/// id, access log).
pub async fn require_bearer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match authenticate(&req) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(error) => Ok(req.error_response(error).map_into_right_body()),
    }
}

fn authenticate(req: &ServiceRequest) -> Result<Principal, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("JwtKeys missing from app data")))?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?
        .to_str()
        .ok()
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be 'Bearer <access token>'",
        ))?;
    keys.verify(token)
        .map_err(|_| ApiError::Unauthorized("invalid or expired access token"))
}

/// A new opaque refresh token: 32 random bytes, base64url without padding (43 characters).
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a refresh token, as stored. A fast hash is right here: the token has 256 bits of
/// entropy, so there is nothing to brute-force.
pub fn refresh_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates an admin (`tally admin create`, `[bootstrap]`). Returns false when an admin with
/// this username already exists. Errors: invalid username, email or password; the username or
/// email belongs to a non-admin; the database fails.
pub async fn create_admin(
    pool: &deadpool_postgres::Pool,
    username: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<bool> {
    use crate::domain::{Email, Password, Username};
    use crate::store::users::InsertUserError;
    let username =
        Username::parse(username).map_err(|error| anyhow::anyhow!("username {error}"))?;
    let email = Email::parse(email).map_err(|error| anyhow::anyhow!("email {error}"))?;
    let password =
        Password::parse(password).map_err(|error| anyhow::anyhow!("password {error}"))?;
    let hash = hash_password(password).await?;
    let client = pool.get().await?;
    match crate::store::users::insert(
        &client,
        UserId::generate(),
        &username,
        &email,
        &hash,
        Role::Admin,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(InsertUserError::UsernameTaken) => {
            let existing = crate::store::users::find_for_login(&client, username.as_str()).await?;
            match existing {
                Some((user, _)) if user.role == Role::Admin => Ok(false),
                _ => anyhow::bail!(
                    "the username {} belongs to a user who is not an admin",
                    username.as_str()
                ),
            }
        }
        Err(InsertUserError::EmailTaken) => {
            anyhow::bail!("the email {} is already registered", email.as_str())
        }
        Err(InsertUserError::Database(error)) => Err(error.into()),
    }
}
