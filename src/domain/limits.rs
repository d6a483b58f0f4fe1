//! Configured limits (DESIGN.md section 8): what an operator sets per account or as a default,
//! validated here so every way in (the admin API, the configured defaults) accepts the same.

use super::{Currency, LimitKind, MONEY_BOUND_MINOR};

/// The longest window a rolling limit may have, seconds: 366 days.
pub const WINDOW_MAX_S: u32 = 366 * 24 * 3600;

/// One configured limit: `kind` on `currency` (`None`: every currency, written `*`), `value`
/// in minor units of the account's currency (a number of debits for `velocity`), and
/// `window_s` for the rolling kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    kind: LimitKind,
    currency: Option<Currency>,
    value: i64,
    window_s: Option<u32>,
}

/// Why a limit was refused; each names the field at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitSpecError {
    #[error(
        "must be one of max_per_transaction, daily_debit, rolling_debit, daily_credit, velocity"
    )]
    Kind,
    #[error("must be from 1 to 2^61 ({MONEY_BOUND_MINOR})")]
    Value,
    #[error("is required for rolling_debit and velocity")]
    WindowMissing,
    #[error("is only allowed for rolling_debit and velocity")]
    WindowNotAllowed,
    #[error("must be from 1 to {WINDOW_MAX_S} seconds (366 days)")]
    WindowRange,
}

impl LimitSpecError {
    /// The request field this error is about (`kind`, `value` or `window_s`).
    pub fn field(self) -> &'static str {
        match self {
            LimitSpecError::Kind => "kind",
            LimitSpecError::Value => "value",
            LimitSpecError::WindowMissing
            | LimitSpecError::WindowNotAllowed
            | LimitSpecError::WindowRange => "window_s",
        }
    }
}

impl LimitSpec {
    /// Errors: a kind that is not configurable (`balance_max` and `supply` come from the
    /// configuration, overdraft from `PUT /users/{id}/accounts/{currency}`), a value outside
    /// `1..=2^61`, a window on a kind without one or none on a kind with one, a window outside
    /// `1..=WINDOW_MAX_S`.
    pub fn new(
        kind: LimitKind,
        currency: Option<Currency>,
        value: i64,
        window_s: Option<i64>,
    ) -> Result<LimitSpec, LimitSpecError> {
        if !kind.is_configurable() {
            return Err(LimitSpecError::Kind);
        }
        if !(1..=MONEY_BOUND_MINOR).contains(&value) {
            return Err(LimitSpecError::Value);
        }
        let window_s = match (kind.has_window(), window_s) {
            (true, None) => return Err(LimitSpecError::WindowMissing),
            (false, Some(_)) => return Err(LimitSpecError::WindowNotAllowed),
            (false, None) => None,
            (true, Some(seconds)) => Some(
                u32::try_from(seconds)
                    .ok()
                    .filter(|s| (1..=WINDOW_MAX_S).contains(s))
                    .ok_or(LimitSpecError::WindowRange)?,
            ),
        };
        Ok(LimitSpec {
            kind,
            currency,
            value,
            window_s,
        })
    }

    pub fn kind(&self) -> LimitKind {
        self.kind
    }

    /// `None`: every currency (`*` on the wire and in the database).
    pub fn currency(&self) -> Option<Currency> {
        self.currency
    }

    /// The currency as stored: its code, or `*`.
    pub fn currency_code(&self) -> &'static str {
        self.currency.map_or("*", Currency::code)
    }

    pub fn value(&self) -> i64 {
        self.value
    }

    pub fn window_s(&self) -> Option<u32> {
        self.window_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_belong_to_the_rolling_kinds_only() {
        let usd = Some(Currency::parse("USD").unwrap());
        assert!(LimitSpec::new(LimitKind::DailyDebit, usd, 1, None).is_ok());
        assert_eq!(
            LimitSpec::new(LimitKind::DailyDebit, usd, 1, Some(60)),
            Err(LimitSpecError::WindowNotAllowed)
        );
        assert_eq!(
            LimitSpec::new(LimitKind::Velocity, None, 3, None),
            Err(LimitSpecError::WindowMissing)
        );
        assert_eq!(
            LimitSpec::new(LimitKind::RollingDebit, None, 3, Some(0)),
            Err(LimitSpecError::WindowRange)
        );
        assert_eq!(
            LimitSpec::new(
                LimitKind::RollingDebit,
                None,
                3,
                Some(i64::from(WINDOW_MAX_S) + 1)
            ),
            Err(LimitSpecError::WindowRange)
        );
        assert!(LimitSpec::new(LimitKind::RollingDebit, None, 3, Some(60)).is_ok());
    }

    #[test]
    fn values_are_positive_and_bounded() {
        for value in [0, -1, MONEY_BOUND_MINOR + 1] {
            assert_eq!(
                LimitSpec::new(LimitKind::MaxPerTransaction, None, value, None),
                Err(LimitSpecError::Value)
            );
        }
        assert_eq!(
            LimitSpec::new(LimitKind::Supply, None, 1, None),
            Err(LimitSpecError::Kind)
        );
    }
}
