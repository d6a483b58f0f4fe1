//! Webhook delivery (DESIGN.md section 10): at-least-once, from the event log, never on the
//! posting path.
//!
//! Two background tasks run on every instance (`startup::background`), every
//! `webhooks.poll_interval_ms`:
//!
//! - the **dispatcher** fans committed events out into the delivery log
//!   (`store::webhooks::dispatch`): one instance at a time (an advisory lock), one
//!   transaction that inserts a pending delivery per matching subscription and advances the
//!   cursor, so each (subscription, event) gets exactly one delivery row;
//! - the **deliverer** claims due deliveries (`FOR UPDATE SKIP LOCKED` and a lease of
//!   `webhooks.lease_ms`), POSTs them outside any transaction, at most `webhooks.concurrency`
//!   at once and each within `webhooks.timeout_ms`, then records each outcome under its lease.
//!   An instance that dies between the POST and the record leaves the delivery leased; when the
//!   lease runs out it is due again, so it is sent at least once (possibly twice: receivers
//!   de-duplicate by `Tally-Webhook-Id`).
//!
//! A 2xx delivers; anything else, a timeout or a refused connection is a failed attempt, tried
//! again after an exponential backoff bounded by `webhooks.backoff_max_ms`, at most
//! `webhooks.max_attempts` times. `webhooks.disable_after_failures` failed attempts in a row
//! disable the subscription and write a `webhook.disabled` event.
//!
//! **Where requests go.** Only `http` URLs whose host is allowed by `webhooks.allowed_hosts`
//! are accepted, and the host is checked again before every POST (the list may have changed);
//! redirects are not followed and no proxy is used, so nothing else is ever contacted. `https`
//! is refused: this build has no TLS stack (reqwest's rustls backends pull aws-lc or ring; see
//! README "Webhooks" for running a TLS-terminating relay instead).

use std::time::Instant;

use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookSettings;
use crate::store::webhooks::{self as store_hooks, AttemptOutcome, Claimed, Dispatched, Recorded};
use crate::telemetry::names;

/// The headers of every delivery.
pub const HEADER_ID: &str = "Tally-Webhook-Id";
pub const HEADER_TIMESTAMP: &str = "Tally-Webhook-Timestamp";
pub const HEADER_SIGNATURE: &str = "Tally-Webhook-Signature";

/// Longest URL a subscription may have, bytes.
pub const URL_LENGTH_MAX: usize = 2048;
/// Longest `last_error` kept in the delivery log, characters.
const ERROR_LENGTH_MAX: usize = 500;
/// Bound on the passes of one tick (each claims up to `concurrency` deliveries or fans out
/// `dispatch_batch` events).
const PASSES_PER_TICK_MAX: usize = 100;

/// One entry of `webhooks.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// A host name or IP literal, lower case (IPv6 without brackets).
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix` (not `suffix` itself).
    Below(String),
}

impl HostPattern {
    /// Parses `example.com`, `127.0.0.1`, `::1`, `[::1]` or `*.example.com`; `None` for
    /// anything else (empty, spaces, a port, a path, a bare `*`).
    pub fn parse(text: &str) -> Option<HostPattern> {
        let text = text.trim().to_ascii_lowercase();
        let (suffix, below) = match text.strip_prefix("*.") {
            Some(suffix) => (suffix.to_owned(), true),
            None => (text, false),
        };
        let host = suffix
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .map_or(suffix.clone(), str::to_owned);
        let valid = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid || (below && host.parse::<std::net::IpAddr>().is_ok()) {
            return None;
        }
        Some(if below {
            HostPattern::Below(host)
        } else {
            HostPattern::Exact(host)
        })
    }

    fn allows(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// Why a URL is refused (the message names the rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must be an absolute http URL of at most 2048 bytes")]
    Malformed,
    #[error(
        "must use http: https is not supported by this build (no TLS stack); \
         see README \"Webhooks\""
    )]
    Https,
    #[error("must use http")]
    Scheme,
    #[error("must not contain a user name or password")]
    Userinfo,
    #[error("names a host that webhooks.allowed_hosts does not allow")]
    HostNotAllowed,
}

/// Checks a subscription URL: absolute `http`, no userinfo, host allowed by `allowed`.
///
/// Errors: [`UrlError`], naming the rule broken.
pub fn check_url(text: &str, allowed: &[String]) -> Result<reqwest::Url, UrlError> {
    if text.len() > URL_LENGTH_MAX || text.trim() != text {
        return Err(UrlError::Malformed);
    }
    let url = reqwest::Url::parse(text).map_err(|_| UrlError::Malformed)?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(UrlError::Https),
        _ => return Err(UrlError::Scheme),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo);
    }
    // The parser has normalized the host: lower case, IPv4 in dotted form (`2130706433` is
    // `127.0.0.1`), IPv6 compressed in brackets.
    let host = url.host_str().ok_or(UrlError::Malformed)?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let allowed = allowed
        .iter()
        .filter_map(|pattern| HostPattern::parse(pattern))
        .any(|pattern| pattern.allows(&host));
    if !allowed {
        return Err(UrlError::HostNotAllowed);
    }
    Ok(url)
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds):
/// `v1=` and the lower-case hex HMAC-SHA256, keyed with the secret's UTF-8 bytes, of
/// `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A new signing secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// The HTTP client of the deliverer: no redirects (a 3xx is a failed attempt), no proxy, the
/// configured timeout.
///
/// Errors: the client cannot be built.
pub fn http_client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout())
        .connect_timeout(settings.timeout())
        .user_agent(concat!("Tally-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// One dispatcher pass after another until caught up (bounded). Returns the events read.
///
/// Errors: the database failed; nothing of the failed pass is recorded.
pub async fn dispatch(
    pool: &deadpool_postgres::Pool,
    settings: &WebhookSettings,
) -> anyhow::Result<usize> {
    let batch = i64::from(settings.dispatch_batch);
    let mut read = 0;
    for _ in 0..PASSES_PER_TICK_MAX {
        let mut client = pool.get().await?;
        match store_hooks::dispatch(&mut client, batch).await? {
            Dispatched::Busy => break,
            Dispatched::Advanced { events, .. } => {
                read += events;
                if (events as i64) < batch {
                    break;
                }
            }
        }
    }
    Ok(read)
}

/// One deliverer pass after another while deliveries are due (bounded). Returns the attempts
/// made.
///
/// Errors: the database failed (attempts already made are recorded or, if not, sent again
/// after their lease).
pub async fn deliver(
    pool: &deadpool_postgres::Pool,
    http: &reqwest::Client,
    settings: &WebhookSettings,
) -> anyhow::Result<usize> {
    let limit = i64::from(settings.concurrency);
    let lease_ms = i64::try_from(settings.lease_ms)?;
    let mut attempts = 0;
    for _ in 0..PASSES_PER_TICK_MAX {
        let claimed = {
            let client = pool.get().await?;
            store_hooks::claim(&client, limit, lease_ms).await?
        };
        if claimed.is_empty() {
            break;
        }
        attempts += claimed.len();
        // The POSTs run together; no connection is held meanwhile.
        let outcomes = join_all(claimed.iter().map(|claimed| send(http, settings, claimed))).await;
        let mut client = pool.get().await?;
        let disable_after = i32::try_from(settings.disable_after_failures)?;
        for (claimed, outcome) in claimed.iter().zip(outcomes) {
            let (recorded, disabled) =
                store_hooks::record_attempt(&mut client, claimed, &outcome, disable_after).await?;
            report(claimed, &outcome, recorded, disabled);
        }
        if (claimed.len() as i64) < limit {
            break;
        }
    }
    Ok(attempts)
}

/// Metrics and logs of one recorded attempt.
fn report(claimed: &Claimed, outcome: &AttemptOutcome, recorded: Recorded, disabled: bool) {
    let label = match recorded {
        Recorded::Delivered => "delivered",
        Recorded::Retrying => "failed",
        Recorded::GaveUp => "gave_up",
        Recorded::Stale => "stale",
    };
    metrics::counter!(names::WEBHOOK_DELIVERIES, "outcome" => label).increment(1);
    if recorded == Recorded::Delivered {
        let lag_s = (chrono::Utc::now() - claimed.event.created_at).as_seconds_f64();
        metrics::histogram!(names::WEBHOOK_DELIVERY_LAG_SECONDS).record(lag_s.max(0.0));
    }
    if let AttemptOutcome::Failed { error, .. } = outcome {
        tracing::info!(
            webhook = %claimed.webhook_id,
            event_id = claimed.event_id,
            attempt = claimed.attempt,
            outcome = label,
            error = %error,
            "webhook delivery failed"
        );
    }
    if disabled {
        metrics::counter!(names::WEBHOOKS_DISABLED).increment(1);
        tracing::warn!(webhook = %claimed.webhook_id, "webhook disabled after a run of failures");
    }
}

/// POSTs one claimed delivery and says how it ended (never an error: a failure is an outcome).
async fn send(
    http: &reqwest::Client,
    settings: &WebhookSettings,
    claimed: &Claimed,
) -> AttemptOutcome {
    let started = Instant::now();
    let retry_in_ms = (claimed.attempt < i32::try_from(settings.max_attempts).unwrap_or(i32::MAX))
        .then(|| {
            let attempt = u32::try_from(claimed.attempt).unwrap_or(u32::MAX);
            i64::try_from(settings.backoff(attempt).as_millis()).unwrap_or(i64::MAX)
        });
    let failed = |status_code: Option<u16>, error: String| AttemptOutcome::Failed {
        status_code,
        error: error.chars().take(ERROR_LENGTH_MAX).collect(),
        retry_in_ms,
    };
    // The list may have changed since the subscription was made.
    let url = match check_url(&claimed.url, &settings.allowed_hosts) {
        Ok(url) => url,
        Err(error) => return failed(None, format!("url {error}")),
    };
    let body = match serde_json::to_vec(&crate::routes::events::EventBody::from(
        claimed.event.clone(),
    )) {
        Ok(body) => body,
        Err(error) => return failed(None, format!("encoding the event: {error}")),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_ID, claimed.event_id.to_string())
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(
            HEADER_SIGNATURE,
            signature(&claimed.secret, timestamp, &body),
        )
        .body(body);
    match request.send().await {
        Ok(response) if response.status().is_success() => AttemptOutcome::Delivered {
            status_code: response.status().as_u16(),
        },
        Ok(response) => failed(
            Some(response.status().as_u16()),
            format!("answered {}", response.status()),
        ),
        Err(error) if error.is_timeout() => failed(
            None,
            format!("no answer within {} ms", started.elapsed().as_millis()),
        ),
        Err(error) => failed(None, error_chain(&error)),
    }
}

/// An error with its causes, `: `-separated (reqwest's own message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the dispatcher and the deliverer every `webhooks.poll_interval_ms` until aborted, and
/// keeps the pending-deliveries gauge. Failures are logged and retried next tick.
pub async fn run(pool: deadpool_postgres::Pool, settings: WebhookSettings) {
    let http = match http_client(&settings) {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(error = ?error, "webhook delivery cannot start: no HTTP client");
            return;
        }
    };
    let mut ticks = tokio::time::interval(settings.poll_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = dispatch(&pool, &settings).await {
            tracing::warn!(error = ?error, "webhook dispatch failed");
        }
        if let Err(error) = deliver(&pool, &http, &settings).await {
            tracing::warn!(error = ?error, "webhook delivery failed");
        }
        let pending = async {
            let client = pool.get().await?;
            anyhow::Ok(store_hooks::pending_count(&client).await?)
        };
        match pending.await {
            Ok(count) => metrics::gauge!(names::WEBHOOK_DELIVERIES_PENDING).set(count as f64),
            Err(error) => tracing::debug!(error = ?error, "counting pending webhook deliveries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|host| (*host).to_owned()).collect()
    }

    #[test]
    fn urls_are_checked_against_the_allowed_hosts() {
        let allowed = hosts(&["127.0.0.1", "localhost", "::1", "*.example.com"]);
        for good in [
            "http://127.0.0.1:9000/hook",
            "http://LOCALHOST/x?y=1",
            "http://[::1]:80/",
            "http://a.example.com/hook",
            "http://b.a.example.com./hook",
            // 127.0.0.1 in decimal: the parser normalizes it before the check.
            "http://2130706433/",
        ] {
            assert!(check_url(good, &allowed).is_ok(), "{good}");
        }
        for (bad, error) in [
            ("http://example.com/", UrlError::HostNotAllowed),
            ("http://evilexample.com/", UrlError::HostNotAllowed),
            ("http://10.0.0.1/", UrlError::HostNotAllowed),
            ("http://127.0.0.2/", UrlError::HostNotAllowed),
            ("https://127.0.0.1/", UrlError::Https),
            ("ftp://127.0.0.1/", UrlError::Scheme),
            ("http://user:pw@127.0.0.1/", UrlError::Userinfo),
            ("http://user@127.0.0.1/", UrlError::Userinfo),
            ("/relative", UrlError::Malformed),
            (" http://127.0.0.1/", UrlError::Malformed),
        ] {
            assert_eq!(check_url(bad, &allowed).err(), Some(error), "{bad}");
        }
    }

    #[test]
    fn host_patterns_parse() {
        assert_eq!(
            HostPattern::parse("*.Example.com"),
            Some(HostPattern::Below("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("[::1]"),
            Some(HostPattern::Exact("::1".into()))
        );
        for bad in ["", "*", "*.", "a b", "host:80", "a/b", "*.127.0.0.1"] {
            assert_eq!(HostPattern::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature("whsec_test", 1_700_000_000, b"{\"id\":1}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"id\":1}");
        assert_eq!(
            sig,
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_eq!(sig.len(), 3 + 64);
    }

    #[test]
    fn backoff_is_exponential_and_bounded() {
        let mut settings = crate::config::Settings::load(None).unwrap().webhooks;
        settings.backoff_base_ms = 100;
        settings.backoff_max_ms = 1000;
        let delays: Vec<u128> = (1..=6).map(|n| settings.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(settings.backoff(u32::MAX).as_millis(), 1000);
    }
}
