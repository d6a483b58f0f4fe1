//! Reading request bodies and fields. Bodies are read by hand (not `web::Json`) so that every
//! failure becomes the right problem: 415 for a non-JSON content type, 413 over
//! `http.body_limit_bytes`, 400 for malformed JSON, and 422 with one entry per bad field for
//! missing, unknown or invalid fields, all reported together.

use actix_web::dev::Payload;
use actix_web::web::BytesMut;
use actix_web::{http::header, web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Amount, AmountError, Currency, TextError};
use crate::error::{ApiError, FieldError};

/// The largest body a route accepts, in bytes (`http.body_limit_bytes`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The largest bulk request body, in bytes (`bulk.body_limit_bytes`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BulkBodyLimit(pub usize);

/// A bulk request body: a JSON object read under [`BulkBodyLimit`] instead of [`BodyLimit`].
pub struct BulkJsonObject(pub Map<String, Value>);

impl FromRequest for BulkJsonObject {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<BulkJsonObject, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<BulkBodyLimit>>()
            .map_or(4 * 1024 * 1024, |limit| limit.0);
        let read = read_object(req, payload, limit);
        Box::pin(async move { read.await.map(BulkJsonObject) })
    }
}

/// A request body that is a JSON object.
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest for JsonObject {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<JsonObject, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<BodyLimit>>()
            .map_or(64 * 1024, |limit| limit.0);
        let read = read_object(req, payload, limit);
        Box::pin(async move { read.await.map(JsonObject) })
    }
}

/// Reads a JSON object body of at most `limit` bytes.
fn read_object(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> LocalBoxFuture<'static, Result<Map<String, Value>, ApiError>> {
    let content_type = req.content_type().to_ascii_lowercase();
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        if declared_length.is_some_and(|length| length > limit) {
            return Err(ApiError::PayloadTooLarge { limit_bytes: limit });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| {
                ApiError::MalformedRequest(format!("the body could not be read: {error}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit_bytes: limit });
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiError::MalformedRequest(
                "the body must be a JSON object".into(),
            )),
            Err(error) => Err(ApiError::MalformedRequest(format!(
                "the body is not valid JSON: {error}"
            ))),
        }
    })
}

/// Takes fields out of a JSON object one by one, collecting every error; `finish` reports them
/// all at once, together with any field nobody asked for.
pub struct Fields {
    object: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn new(JsonObject(object): JsonObject) -> Fields {
        Fields {
            object,
            errors: Vec::new(),
        }
    }

    /// A field that must be present and not null.
    pub fn required<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.object.remove(name) {
            None | Some(Value::Null) => {
                self.errors.push(FieldError::new(name, "is required"));
                None
            }
            Some(value) => self.parse(name, &value, parse),
        }
    }

    /// A field that may be absent or null.
    pub fn optional<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.object.remove(name) {
            None | Some(Value::Null) => None,
            Some(value) => self.parse(name, &value, parse),
        }
    }

    fn parse<T>(
        &mut self,
        name: &str,
        value: &Value,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.errors.push(FieldError::new(name, message));
                None
            }
        }
    }

    /// Records an error found across fields (e.g. a transfer to oneself).
    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(name, message));
    }

    /// Errors: 422 `validation_failed` listing every bad, missing or unknown field. After `Ok`,
    /// every `required` call of this `Fields` returned `Some`.
    pub fn finish(mut self) -> Result<(), ApiError> {
        let mut unknown: Vec<String> = self.object.keys().cloned().collect();
        unknown.sort();
        for name in unknown {
            self.errors
                .push(FieldError::new(name, "is not a known field"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Collects the errors of query parameters parsed one by one; `finish` reports them together.
#[derive(Default)]
pub struct QueryErrors(Vec<FieldError>);

impl QueryErrors {
    /// Parses an optional parameter, recording its error.
    pub fn check<T>(
        &mut self,
        name: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> Option<T> {
        match value.map(parse) {
            Some(Ok(parsed)) => Some(parsed),
            Some(Err(message)) => {
                self.push(name, message);
                None
            }
            None => None,
        }
    }

    pub fn push(&mut self, name: &str, message: &str) {
        self.0.push(FieldError::new(name, message));
    }

    /// Errors: 422 `validation_failed` naming every bad parameter.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// Deserializes an optional query parameter that must be a hyphenated UUID (see
/// [`parse::uuid`]), for `#[serde(default, deserialize_with = "...")]`.
pub fn optional_uuid<'de, D>(deserializer: D) -> Result<Option<Uuid>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse::hyphenated_uuid(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("user_id must be a UUID"))
}

/// Value parsers for [`Fields`]; each error message reads after the field name.
pub mod parse {
    use super::*;

    /// A positive JSON integer of minor units, at most [`Amount::MAX_MINOR`]. Strings,
    /// fractions and exponent forms (`1e3`) are refused: money is never a float.
    pub fn amount(value: &Value) -> Result<Amount, String> {
        let Value::Number(number) = value else {
            return Err("must be a JSON integer of minor units (e.g. 1234 for 12.34 USD)".into());
        };
        if let Some(minor) = number.as_i64() {
            return Amount::new(minor).map_err(|error| error.to_string());
        }
        if number.is_u64() {
            return Err(AmountError::TooLarge.to_string());
        }
        Err("must be a whole number of minor units, not a fraction".into())
    }

    /// A hold request, `{"timeout_s": <1 to max>}`: its timeout in seconds.
    pub fn hold(max: u32) -> impl FnOnce(&Value) -> Result<u32, String> {
        move |value| {
            let Value::Object(hold) = value else {
                return Err("must be an object: {\"timeout_s\": <seconds>}".into());
            };
            if let Some(unknown) = hold.keys().find(|key| *key != "timeout_s") {
                return Err(format!("has an unknown field `{unknown}`"));
            }
            let timeout = hold
                .get("timeout_s")
                .ok_or_else(|| "needs timeout_s".to_owned())?;
            match timeout.as_u64() {
                Some(seconds) if (1..=u64::from(max)).contains(&seconds) => {
                    Ok(u32::try_from(seconds).expect("bounded by a u32"))
                }
                _ => Err(format!(
                    "timeout_s must be a whole number of seconds from 1 to {max} (holds.timeout_s_max)"
                )),
            }
        }
    }

    pub fn currency(value: &Value) -> Result<Currency, String> {
        let Value::String(code) = value else {
            return Err("must be a string with an ISO 4217 code".into());
        };
        Currency::parse(code).map_err(|error| error.to_string())
    }

    /// A UUID in its hyphenated form (`67e55044-10b1-426f-9247-bb680e5fe0c8`), the only form
    /// the OpenAPI `uuid` format admits; `Uuid::parse_str` alone would also take the simple,
    /// braced and URN forms.
    pub fn uuid(value: &Value) -> Result<Uuid, String> {
        value
            .as_str()
            .and_then(hyphenated_uuid)
            .ok_or_else(|| "must be a UUID string".to_owned())
    }

    pub(crate) fn hyphenated_uuid(text: &str) -> Option<Uuid> {
        const HYPHENATED_LEN: usize = 36;
        (text.len() == HYPHENATED_LEN)
            .then(|| Uuid::parse_str(text).ok())
            .flatten()
    }

    /// An RFC 3339 timestamp with an offset (`2026-11-21T10:00:00Z`), exactly the OpenAPI
    /// `date-time` format (chrono also takes a space for the `T` and a leap second at any
    /// minute, which RFC 3339 sections 5.6 and 5.7 do not: a leap second is 23:59:60 UTC),
    /// whose instant, in UTC, is within years 0000 to 9999 ([`instants`]).
    pub fn rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, &'static str> {
        use chrono::Timelike;
        const MESSAGE: &str = "must be an RFC 3339 timestamp such as 2026-11-21T10:00:00Z";
        let at = chrono::DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&chrono::Utc))
            .map_err(|_| MESSAGE)?;
        let separator = text.as_bytes().get(10);
        let leap_second = text.get(17..19) == Some("60");
        if separator == Some(&b' ') || (leap_second && (at.hour(), at.minute()) != (23, 59)) {
            return Err(MESSAGE);
        }
        if !instants().contains(&at) {
            return Err("must be an instant within years 0000 to 9999 in UTC");
        }
        Ok(at)
    }

    /// The instants Tally accepts and answers with: those whose UTC form RFC 3339 can write,
    /// 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z (its years have four digits,
    /// section 5.6). An offset can carry a timestamp past them
    /// (`9999-12-31T23:59:59-23:59` is `+10000-01-01T23:58:59Z`), which could not be echoed
    /// back as RFC 3339.
    pub fn instants() -> std::ops::RangeInclusive<chrono::DateTime<chrono::Utc>> {
        let first = chrono::NaiveDate::from_ymd_opt(0, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .expect("0000-01-01T00:00:00 is a valid date and time");
        let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|day| day.and_hms_nano_opt(23, 59, 59, 999_999_999))
            .expect("9999-12-31T23:59:59.999999999 is a valid date and time");
        first.and_utc()..=last.and_utc()
    }

    /// A string checked by a domain parser. Strings with a NUL character (U+0000) are refused
    /// for every field before the domain parser sees them: PostgreSQL cannot store one in
    /// `text` or `jsonb`, so it could only end in a 500.
    pub fn text<T>(
        parse: impl FnOnce(&str) -> Result<T, TextError>,
    ) -> impl FnOnce(&Value) -> Result<T, String> {
        move |value| {
            let Value::String(text) = value else {
                return Err("must be a string".into());
            };
            if text.contains('\0') {
                return Err("must not contain a NUL character (U+0000)".into());
            }
            parse(text).map_err(|error| error.to_string())
        }
    }
}
