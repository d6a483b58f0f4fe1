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
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
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
    fn short_secrets_are_refused() {
        assert!(JwtKeys::new("short", 900).is_err());
    }
}
