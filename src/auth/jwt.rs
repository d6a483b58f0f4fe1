//! HS256 access tokens (RFC 7519). Claims: `sub` (user id), `role`, `iat`, `exp` (seconds since
//! the epoch). Only HS256 is accepted; `alg: none` and other algorithms are refused.

use base64::Engine;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Principal;
use crate::domain::{Role, UserId};

/// The claims Tally signs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: Uuid,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
}

/// The signing key and the rules tokens are checked against.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The live feed's tickets are signed with a key of their own, derived from the secret, so
    /// that a ticket is never an access token and an access token never a ticket.
    ticket_encoding: EncodingKey,
    ticket_decoding: DecodingKey,
    ticket_validation: Validation,
    /// Lifetime of an access token, seconds.
    pub access_token_ttl_s: u64,
}

impl JwtKeys {
    /// Keys from `secret`; an empty secret generates a random 256-bit key and logs a warning
    /// (tokens then die with the process). Errors: a secret shorter than 32 bytes (RFC 7518
    /// section 3.2 requires a key at least as long as the hash output).
    pub fn new(secret: &str, access_token_ttl_s: u64) -> anyhow::Result<JwtKeys> {
        let secret = if secret.is_empty() {
            tracing::warn!("auth.jwt_secret is not set: using a random key; set TALLY__AUTH__JWT_SECRET in production");
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        } else {
            anyhow::ensure!(
                secret.len() >= 32,
                "auth.jwt_secret must be at least 32 bytes"
            );
            secret.to_owned()
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let ticket_key = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            hasher.update(b"tally.ws-ticket\0");
            hasher.update(secret.as_bytes());
            hasher.finalize()
        };
        // Expiry is checked against the app's clock (`verify_ticket`), not the system's.
        let mut ticket_validation = Validation::new(Algorithm::HS256);
        ticket_validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        ticket_validation.validate_exp = false;
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ticket_encoding: EncodingKey::from_secret(&ticket_key),
            ticket_decoding: DecodingKey::from_secret(&ticket_key),
            ticket_validation,
            access_token_ttl_s,
        })
    }

    /// A signed access token for `user`, valid for `access_token_ttl_s` from now.
    pub fn issue(&self, user: UserId, role: Role) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.access_token_ttl_s).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: user.as_uuid(),
            role: role.as_str().to_owned(),
            iat: now,
            exp: now + ttl,
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies signature, algorithm and expiry. Errors on anything else, including a `system`
    /// role (the system user never authenticates).
    pub fn verify(&self, token: &str) -> anyhow::Result<Principal> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation)?.claims;
        // Not yet valid: Tally's tokens carry no `nbf`, so a future `iat` is the same attack.
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
        anyhow::ensure!(
            claims.iat <= chrono::Utc::now().timestamp() + leeway,
            "the token is issued in the future"
        );
        let role = Role::parse(&claims.role).map_err(|_| anyhow::anyhow!("unknown role"))?;
        anyhow::ensure!(role != Role::System, "the system user cannot authenticate");
        Ok(Principal {
            user: UserId::from_uuid(claims.sub),
            role,
        })
    }
}

impl JwtKeys {
    /// A ticket for the live feed (`POST /api/v1/ws/ticket`): `principal` for `ttl_s` seconds
    /// from `now` (the app's clock). Signed, so any instance with the same secret accepts it;
    /// with a key of its own, so it is not an access token. Returns the ticket and its expiry.
    pub fn issue_ticket(
        &self,
        principal: Principal,
        now: chrono::DateTime<chrono::Utc>,
        ttl_s: u64,
    ) -> anyhow::Result<(String, chrono::DateTime<chrono::Utc>)> {
        let expires_at = now + chrono::TimeDelta::seconds(i64::try_from(ttl_s)?);
        let claims = Claims {
            sub: principal.user.as_uuid(),
            role: principal.role.as_str().to_owned(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let ticket = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.ticket_encoding,
        )?;
        Ok((ticket, expires_at))
    }

    /// Verifies a ticket's signature and that it has not expired at `now` (the app's clock).
    /// Errors on anything else, and on an access token.
    pub fn verify_ticket(
        &self,
        ticket: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Principal> {
        let claims =
            decode::<Claims>(ticket, &self.ticket_decoding, &self.ticket_validation)?.claims;
        let now = now.timestamp();
        anyhow::ensure!(now < claims.exp, "the ticket has expired");
        anyhow::ensure!(claims.iat <= now + 5, "the ticket is issued in the future");
        let role = Role::parse(&claims.role).map_err(|_| anyhow::anyhow!("unknown role"))?;
        anyhow::ensure!(role != Role::System, "the system user cannot authenticate");
        Ok(Principal {
            user: UserId::from_uuid(claims.sub),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_tampering_fails() {
        let keys = JwtKeys::new(&"k".repeat(32), 900).unwrap();
        let user = UserId::generate();
        let token = keys.issue(user, Role::User).unwrap();
        assert_eq!(
            keys.verify(&token).unwrap(),
            Principal {
                user,
                role: Role::User
            }
        );

        let other = JwtKeys::new(&"o".repeat(32), 900).unwrap();
        assert!(
            other.verify(&token).is_err(),
            "a token signed with another key is refused"
        );

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(engine.decode(&parts[1]).unwrap())
            .unwrap()
            .replace("\"user\"", "\"admin\"");
        parts[1] = engine.encode(payload);
        assert!(
            keys.verify(&parts.join(".")).is_err(),
            "a tampered role is refused"
        );

        let none_header = engine.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", token.split('.').nth(1).unwrap());
        assert!(keys.verify(&unsigned).is_err(), "alg none is refused");
    }

    #[test]
    fn expired_tokens_fail() {
        let keys = JwtKeys::new(&"k".repeat(32), 900).unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7(),
            role: "user".into(),
            iat: now - 1000,
            exp: now - 100,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn tickets_expire_by_the_given_clock_and_are_not_access_tokens() {
        let keys = JwtKeys::new(&"k".repeat(32), 900).unwrap();
        let principal = Principal {
            user: UserId::generate(),
            role: Role::User,
        };
        let now = chrono::Utc::now();
        let (ticket, expires_at) = keys.issue_ticket(principal, now, 30).unwrap();
        assert_eq!(expires_at, now + chrono::TimeDelta::seconds(30));
        assert_eq!(keys.verify_ticket(&ticket, now).unwrap(), principal);
        assert!(keys
            .verify_ticket(&ticket, now + chrono::TimeDelta::seconds(30))
            .is_err());
        assert!(
            keys.verify(&ticket).is_err(),
            "a ticket is not an access token"
        );
        let token = keys.issue(principal.user, principal.role).unwrap();
        assert!(keys.verify_ticket(&token, now).is_err(), "nor the reverse");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtKeys::new("short", 900).is_err());
    }
}
