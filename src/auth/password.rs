//! Password hashing with argon2id (RFC 9106) at the argon2 crate's defaults (m = 19 MiB, t = 2,
//! p = 1: the OWASP password storage recommendation). Hashing is CPU-bound, so it runs on the
//! blocking thread pool, never on an HTTP worker.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the blocking pool is gone")]
    Join,
}

/// Hashes computed at once, at most: one per core. Each takes 19 MiB and tens of milliseconds of
/// CPU, so a burst of registrations or logins queues here instead of taking every core and
/// hundreds of megabytes.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))
    })
}

/// The PHC string (`$argon2id$v=19$...`) of `password` with a fresh random salt.
pub async fn hash_password(password: Password) -> Result<String, PasswordError> {
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|_| PasswordError::Join)?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| PasswordError::Hash(error.to_string()))
    })
    .await
    .map_err(|_| PasswordError::Join)?
}

/// Whether `password` matches `phc_hash`. With `None` (unknown user) it verifies against a fixed
/// dummy hash and returns false, so that response time does not reveal which usernames exist.
pub async fn verify_password(
    password: String,
    phc_hash: Option<String>,
) -> Result<bool, PasswordError> {
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|_| PasswordError::Join)?;
    tokio::task::spawn_blocking(move || {
        let known = phc_hash.is_some();
        let hash = phc_hash.unwrap_or_else(|| dummy_hash().to_owned());
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok();
        known && matches
    })
    .await
    .map_err(|_| PasswordError::Join)
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"tally-dummy-password")
            .map(|hash| hash.to_string())
            .expect("hashing a constant with default parameters succeeds")
    })
}
