//! Money: an [`Amount`] of minor units in a [`Currency`]. Never a float.

use std::fmt;

/// A positive amount of money in minor units of its currency (`1234` USD is 12.34 USD).
///
/// Invariant: `1 <= minor <= Amount::MAX_MINOR`. The ceiling (10^15 minor units, ten trillion
/// dollars in cents) keeps the sum of any realistic batch far from `i64` overflow; arithmetic on
/// amounts is checked all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must be at most {max} minor units", max = Amount::MAX_MINOR)]
    TooLarge,
}

impl Amount {
    /// The largest amount one transaction can move, in minor units.
    pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

    /// Errors: [`AmountError::NotPositive`] for zero or less, [`AmountError::TooLarge`] above
    /// [`Amount::MAX_MINOR`].
    pub fn new(minor: i64) -> Result<Amount, AmountError> {
        if minor <= 0 {
            Err(AmountError::NotPositive)
        } else if minor > Self::MAX_MINOR {
            Err(AmountError::TooLarge)
        } else {
            Ok(Amount(minor))
        }
    }

    /// The amount in minor units; always positive.
    pub fn minor(self) -> i64 {
        self.0
    }

    /// The sum, or `None` when it would exceed [`Amount::MAX_MINOR`].
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0
            .checked_add(other.0)
            .and_then(|sum| Amount::new(sum).ok())
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An active ISO 4217 currency that has minor units (`USD`, `EUR`, `JPY`, ...).
///
/// The code table and exponents come from the `iso_currency` crate (ISO 4217 list). Codes
/// without an exponent (precious metals, `XXX`, fund codes) are refused: Tally only moves money
/// that has minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(iso_currency::Currency);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("must be a three-letter upper-case ISO 4217 code")]
    Malformed,
    #[error("is not a known ISO 4217 currency with minor units")]
    Unknown,
}

impl Currency {
    /// Parses an upper-case three-letter code.
    ///
    /// Errors: [`CurrencyError::Malformed`] for anything but `[A-Z]{3}`,
    /// [`CurrencyError::Unknown`] for a code that is not an ISO 4217 currency with minor units.
    pub fn parse(code: &str) -> Result<Currency, CurrencyError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CurrencyError::Malformed);
        }
        let currency = iso_currency::Currency::from_code(code).ok_or(CurrencyError::Unknown)?;
        if currency.exponent().is_none() {
            return Err(CurrencyError::Unknown);
        }
        Ok(Currency(currency))
    }

    /// Every code [`Currency::parse`] accepts, in alphabetical order: found by asking `parse`
    /// about every `[A-Z]{3}`, so that the OpenAPI document lists exactly these.
    pub fn all() -> Vec<Currency> {
        let letters = || b'A'..=b'Z';
        letters()
            .flat_map(|a| letters().flat_map(move |b| letters().map(move |c| [a, b, c])))
            .filter_map(|code| {
                Currency::parse(std::str::from_utf8(&code).expect("ASCII letters")).ok()
            })
            .collect()
    }

    /// The three-letter code, e.g. `"USD"`.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point (2 for USD, 0 for JPY, 3 for KWD).
    pub fn exponent(self) -> u16 {
        self.0
            .exponent()
            .expect("Currency::parse admits only currencies with an exponent")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amount_bounds() {
        assert_eq!(Amount::new(0), Err(AmountError::NotPositive));
        assert_eq!(Amount::new(-1), Err(AmountError::NotPositive));
        assert_eq!(Amount::new(i64::MIN), Err(AmountError::NotPositive));
        assert_eq!(
            Amount::new(Amount::MAX_MINOR + 1),
            Err(AmountError::TooLarge)
        );
        assert_eq!(Amount::new(i64::MAX), Err(AmountError::TooLarge));
        assert_eq!(Amount::new(1).map(Amount::minor), Ok(1));
        assert_eq!(
            Amount::new(Amount::MAX_MINOR).map(Amount::minor),
            Ok(Amount::MAX_MINOR)
        );
    }

    #[test]
    fn currencies() {
        assert_eq!(Currency::parse("USD").map(Currency::exponent), Ok(2));
        assert_eq!(Currency::parse("JPY").map(Currency::exponent), Ok(0));
        assert_eq!(Currency::parse("KWD").map(Currency::exponent), Ok(3));
        assert_eq!(Currency::parse("usd"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("US"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("USDD"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("ÜSD"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("ZZZ"), Err(CurrencyError::Unknown));
        assert_eq!(Currency::parse("XAU"), Err(CurrencyError::Unknown));
        let all: Vec<&str> = Currency::all().into_iter().map(Currency::code).collect();
        assert!(all.contains(&"USD") && all.contains(&"JPY") && !all.contains(&"XAU"));
        assert!(
            all.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted, no repeats"
        );
    }

    proptest! {
        #[test]
        fn amount_accepts_exactly_its_range(minor in any::<i64>()) {
            let parsed = Amount::new(minor);
            prop_assert_eq!(parsed.is_ok(), (1..=Amount::MAX_MINOR).contains(&minor));
            if let Ok(amount) = parsed {
                prop_assert_eq!(amount.minor(), minor);
            }
        }

        #[test]
        fn checked_add_never_leaves_the_range(a in 1..=Amount::MAX_MINOR, b in 1..=Amount::MAX_MINOR) {
            let (a, b) = (Amount::new(a).unwrap(), Amount::new(b).unwrap());
            match a.checked_add(b) {
                Some(sum) => prop_assert_eq!(sum.minor(), a.minor() + b.minor()),
                None => prop_assert!(a.minor() + b.minor() > Amount::MAX_MINOR),
            }
        }

        #[test]
        fn currency_parse_round_trips(code in "[A-Z]{3}") {
            if let Ok(currency) = Currency::parse(&code) {
                prop_assert_eq!(currency.code(), code.as_str());
            }
        }

        #[test]
        fn currency_refuses_anything_not_three_capitals(code in "\\PC{0,6}") {
            prop_assume!(!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())));
            prop_assert_eq!(Currency::parse(&code), Err(CurrencyError::Malformed));
        }
    }
}
