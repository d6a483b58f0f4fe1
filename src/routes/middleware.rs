//! The app's own middleware, applied in this order (outermost first; see `startup`):
//! request id → access log → CORS → security headers → per-IP rate limit on `/auth/*` →
//! bearer auth → per-user rate limit on the rest of `/api/v1` → handlers. The error handler
//! that makes every error problem+json wraps them all.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::auth::Principal;
use crate::config::RateLimitSettings;
use crate::error::ApiError;

/// `X-Request-Id`: accepted from the client when it is 1 to 128 visible ASCII characters,
/// generated (UUID v4) otherwise, and echoed on the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The request's id (or `-` outside the middleware, e.g. in unit tests).
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| "-".to_owned(), |id| id.0.clone())
}

/// The client's address as seen on the socket. Forwarded headers are not trusted: they are
/// the client's to forge, and rate limits and audit records must not be.
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|address| address.ip())
}

pub async fn request_id_layer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

/// One JSON log line per request (target `tally::access`, when `log.access` is on): request id,
/// method, route template, status, duration, client address and the authenticated user when
/// there is one. It is logged inside the request's tracing span, so it carries the trace id.
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let enabled = req
        .app_data::<web::Data<super::AppState>>()
        .is_none_or(|state| state.settings.log.access);
    let started = Instant::now();
    let response = next.call(req).await?;
    if !enabled {
        return Ok(response);
    }
    let request = response.request();
    let user_id = request
        .extensions()
        .get::<Principal>()
        .map(|principal| principal.user.to_string());
    tracing::info!(
        target: "tally::access",
        request_id = %request_id(request),
        method = %request.method(),
        route = %request.match_pattern().unwrap_or_else(|| "unmatched".to_owned()),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        client_ip = %client_ip(request).map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        user_id = user_id.as_deref().unwrap_or("-"),
        "request"
    );
    Ok(response)
}

/// Headers every API reply carries: no MIME sniffing, no framing, no referrer, and no caching
/// of account data by browsers or proxies.
pub fn api_security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::CACHE_CONTROL, "no-store"))
}

/// Headers of the interactive docs page: like the API's, plus a Content Security Policy that
/// only allows the page's own scripts and styles (Swagger UI is served from the binary).
pub fn docs_security_headers() -> actix_web::middleware::DefaultHeaders {
    page_security_headers(
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    )
}

/// Headers of a page served from the binary (the docs, the console): no MIME sniffing, no
/// framing, no referrer, and the page's Content Security Policy `policy`. Its files are not
/// account data, so they may be cached (each page says how).
pub fn page_security_headers(policy: &'static str) -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::CONTENT_SECURITY_POLICY, policy))
}

/// The two GCRA limiters (governor): per client IP for `/auth/*`, per user for the rest.
pub struct RateLimiters {
    enabled: bool,
    auth: DefaultKeyedRateLimiter<IpAddr>,
    api: DefaultKeyedRateLimiter<Uuid>,
}

impl RateLimiters {
    /// Errors: a rate or burst of zero.
    pub fn new(settings: &RateLimitSettings) -> anyhow::Result<Arc<RateLimiters>> {
        let quota = |per_second: u32, burst: u32| -> anyhow::Result<Quota> {
            let per_second = NonZeroU32::new(per_second)
                .ok_or_else(|| anyhow::anyhow!("rate limits must be positive"))?;
            let burst = NonZeroU32::new(burst)
                .ok_or_else(|| anyhow::anyhow!("rate limit bursts must be positive"))?;
            Ok(Quota::per_second(per_second).allow_burst(burst))
        };
        Ok(Arc::new(RateLimiters {
            enabled: settings.enabled,
            auth: DefaultKeyedRateLimiter::keyed(quota(
                settings.auth_per_second,
                settings.auth_burst,
            )?),
            api: DefaultKeyedRateLimiter::keyed(quota(
                settings.api_per_second,
                settings.api_burst,
            )?),
        }))
    }

    /// Forgets keys whose buckets are full again; the keyed maps grow until this runs
    /// (STACK.md). `startup` calls it periodically.
    pub fn retain_recent(&self) {
        self.auth.retain_recent();
        self.api.retain_recent();
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        enabled: bool,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        scope: &'static str,
    ) -> Result<(), ApiError> {
        if !enabled {
            return Ok(());
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(crate::telemetry::names::RATE_LIMITED, "scope" => scope).increment(1);
            ApiError::RateLimited {
                retry_after_s: retry_after_seconds(wait),
            }
        })
    }
}

/// `Retry-After` is whole seconds; never tell a client 0.
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Per client IP, for `/api/v1/auth/*`. A refusal is answered here, not returned as an `Err`:
/// an `Err` would bypass the layers outside (security headers, CORS, request id, access log).
pub async fn rate_limit_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = match (
        req.app_data::<web::Data<Arc<RateLimiters>>>(),
        client_ip(req.request()),
    ) {
        (Some(limiters), Some(ip)) => {
            RateLimiters::check(limiters.enabled, &limiters.auth, &ip, "ip").err()
        }
        _ => None,
    };
    match refused {
        Some(error) => Ok(req.error_response(error).map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// Per authenticated user, for the rest of `/api/v1` (runs after bearer auth). Answers a
/// refusal itself, like [`rate_limit_by_ip`].
pub async fn rate_limit_by_user(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let principal = req.extensions().get::<Principal>().copied();
    let refused = match (req.app_data::<web::Data<Arc<RateLimiters>>>(), principal) {
        (Some(limiters), Some(principal)) => RateLimiters::check(
            limiters.enabled,
            &limiters.api,
            &principal.user.as_uuid(),
            "user",
        )
        .err(),
        _ => None,
    };
    match refused {
        Some(error) => Ok(req.error_response(error).map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
