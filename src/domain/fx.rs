//! Currency exchange arithmetic (DESIGN.md section 9): a [`Rate`] and the [`Conversion`] of a
//! source amount into a target currency, exact and in the house's favour.
//!
//! Rounding (TigerBeetle's currency-exchange recipe, PEERS.md section 5): the spread is taken
//! first, in the source currency, rounded **up** to a whole minor unit; the rest is converted
//! at the rate and the target amount is rounded **down**. So the house never pays out a
//! fraction of a minor unit it did not receive, and the customer's loss to rounding is below one
//! minor unit of each currency. The arithmetic is exact: the rate is a `rust_decimal::Decimal`
//! (mantissa and scale), and the product is formed in `i128` (never a float, never a rounded
//! decimal product, which could round up across a whole unit).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::{Amount, Currency};

/// An exchange rate: how many major units of the target currency one major unit of the source
/// buys (`EUR/USD 1.0842`: 1 EUR buys 1.0842 USD).
///
/// Invariant: `0 < rate <= Rate::MAX`, at most [`Rate::MAX_SCALE`] decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(Decimal);

/// Why a rate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("must be a decimal number written as a string, such as \"1.0842\"")]
    Malformed,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must be at most 1000000 with at most 12 decimal places")]
    OutOfRange,
}

impl Rate {
    /// The largest rate (10^6: more than any pair of ISO 4217 currencies has needed).
    pub const MAX: i64 = 1_000_000;
    /// The most decimal places a rate may carry.
    pub const MAX_SCALE: u32 = 12;

    /// Parses a plain decimal string (`"1.0842"`; no sign, exponent or spaces).
    ///
    /// Errors: [`RateError::Malformed`], [`RateError::NotPositive`], [`RateError::OutOfRange`].
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || (text.contains('.') && fraction.is_empty()) {
            return Err(RateError::Malformed);
        }
        if !digits(fraction) {
            return Err(RateError::Malformed);
        }
        if fraction.len() > Self::MAX_SCALE as usize || whole.trim_start_matches('0').len() > 7 {
            return Err(RateError::OutOfRange);
        }
        let value = Decimal::from_str(text).map_err(|_| RateError::Malformed)?;
        Rate::new(value)
    }

    /// Errors: as [`Rate::parse`] for a value out of range.
    pub fn new(value: Decimal) -> Result<Rate, RateError> {
        if value <= Decimal::ZERO {
            return Err(RateError::NotPositive);
        }
        if value > Decimal::from(Self::MAX) || value.normalize().scale() > Self::MAX_SCALE {
            return Err(RateError::OutOfRange);
        }
        Ok(Rate(value.normalize()))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The spread the house keeps on an exchange, in basis points of the source amount
/// (`fx.spread_bps`; 25 is 0.25 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpreadBps(u32);

impl SpreadBps {
    /// The most a spread may be: 10 % (1000 bps).
    pub const MAX: u32 = 1_000;

    pub fn new(bps: u32) -> Option<SpreadBps> {
        (bps <= Self::MAX).then_some(SpreadBps(bps))
    }

    pub fn bps(self) -> u32 {
        self.0
    }
}

/// What an exchange of a source amount moves, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// Taken from the customer in the source currency.
    pub source: Amount,
    /// The spread, kept by the `fees` account in the source currency: `ceil(source × bps /
    /// 10 000)`; may be 0.
    pub fee: i64,
    /// Paid in the target currency: `floor((source - fee) × rate × 10^(e_target - e_source))`.
    pub target: Amount,
}

/// Why an amount cannot be exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error(
        "is too small: after the spread it buys less than one minor unit of the target currency"
    )]
    TooSmall,
    #[error("would buy more than the largest amount one transaction can move")]
    TooLarge,
}

/// Converts `source` minor units of `from` into `to` at `rate`, keeping `spread`.
///
/// Errors: [`ConversionError::TooSmall`] when the target rounds down to 0 (or the spread takes
/// everything); [`ConversionError::TooLarge`] when it exceeds [`Amount::MAX_MINOR`].
pub fn convert(
    source: Amount,
    from: Currency,
    to: Currency,
    rate: Rate,
    spread: SpreadBps,
) -> Result<Conversion, ConversionError> {
    let minor = i128::from(source.minor());
    let fee = ceil_div(minor * i128::from(spread.bps()), 10_000);
    let net = minor - fee;
    let target = target_minor(net, from, to, rate).ok_or(ConversionError::TooLarge)?;
    if net <= 0 || target == 0 {
        return Err(ConversionError::TooSmall);
    }
    let target = i64::try_from(target)
        .ok()
        .and_then(|target| Amount::new(target).ok())
        .ok_or(ConversionError::TooLarge)?;
    Ok(Conversion {
        source,
        fee: i64::try_from(fee).expect("the fee is at most the source amount"),
        target,
    })
}

/// `ceil(numerator / denominator)` for a non-negative numerator and a positive denominator.
fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    (numerator + denominator - 1) / denominator
}

/// `floor(net × rate × 10^(e_to - e_from))`, exact in `i128`; `None` on overflow (impossible
/// for amounts and rates in range: 10^15 × 10^18 × 10^4 < 2^127).
pub fn target_minor(net: i128, from: Currency, to: Currency, rate: Rate) -> Option<i128> {
    let (mantissa, scale) = (rate.0.mantissa(), rate.0.scale());
    let shift = i32::from(to.exponent()) - i32::from(from.exponent());
    let mut numerator = net.checked_mul(mantissa)?;
    let mut denominator = 10_i128.checked_pow(scale)?;
    if shift >= 0 {
        numerator = numerator.checked_mul(10_i128.checked_pow(shift.unsigned_abs())?)?;
    } else {
        denominator = denominator.checked_mul(10_i128.checked_pow(shift.unsigned_abs())?)?;
    }
    Some(numerator.div_euclid(denominator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn rate(text: &str) -> Rate {
        Rate::parse(text).unwrap()
    }

    #[test]
    fn rates_parse_only_plain_positive_decimals() {
        assert_eq!(rate("1.0842").to_string(), "1.0842");
        assert_eq!(rate("1.50").to_string(), "1.5");
        assert_eq!(rate("0.000000000001").to_string(), "0.000000000001");
        assert_eq!(rate("1000000").to_string(), "1000000");
        for malformed in [
            "", ".5", "1.", "1e3", "-1", "+1", " 1", "1,5", "NaN", "1.2.3", "abc",
        ] {
            assert_eq!(
                Rate::parse(malformed),
                Err(RateError::Malformed),
                "{malformed:?}"
            );
        }
        for zero in ["0", "0.0", "000.000"] {
            assert_eq!(Rate::parse(zero), Err(RateError::NotPositive), "{zero:?}");
        }
        for out in [
            "1000000.1",
            "0.0000000000001",
            "99999999999999999999999999999",
        ] {
            assert_eq!(Rate::parse(out), Err(RateError::OutOfRange), "{out:?}");
        }
    }

    #[test]
    fn exponents_are_respected() {
        let none = SpreadBps::new(0).unwrap();
        let ten = Amount::new(10_000).unwrap();
        // 100.00 EUR at 1.0842 is 108.42 USD.
        let usd = convert(ten, currency("EUR"), currency("USD"), rate("1.0842"), none).unwrap();
        assert_eq!(usd.target.minor(), 10_842);
        // 100.00 USD at 151.237 is 15123 JPY (rounded down from 15123.7).
        let jpy = convert(ten, currency("USD"), currency("JPY"), rate("151.237"), none).unwrap();
        assert_eq!(jpy.target.minor(), 15_123);
        // 10000 JPY at 0.002481 is 24.810 BHD (3 decimals).
        let bhd = convert(
            ten,
            currency("JPY"),
            currency("BHD"),
            rate("0.002481"),
            none,
        )
        .unwrap();
        assert_eq!(bhd.target.minor(), 24_810);
        // 1 JPY at 0.0066 USD is 0.66 cent: nothing, refused.
        assert_eq!(
            convert(
                Amount::new(1).unwrap(),
                currency("JPY"),
                currency("USD"),
                rate("0.0066"),
                none
            ),
            Err(ConversionError::TooSmall)
        );
    }

    #[test]
    fn the_spread_is_rounded_up_and_taken_first() {
        let spread = SpreadBps::new(25).unwrap();
        let eur = currency("EUR");
        let conversion = convert(
            Amount::new(10_001).unwrap(),
            eur,
            currency("USD"),
            rate("1"),
            spread,
        )
        .unwrap();
        // 10001 × 0.0025 = 25.0025, rounded up to 26.
        assert_eq!(conversion.fee, 26);
        assert_eq!(conversion.target.minor(), 10_001 - 26);
    }

    proptest! {
        /// The house never loses a minor unit: the customer pays exactly `source`, the fee is
        /// at least the exact spread and less than it plus one unit, and the target is the
        /// exact converted value rounded down (never above it, less than one unit below).
        #[test]
        fn rounding_always_favours_the_house(
            source in 1..=Amount::MAX_MINOR,
            mantissa in 1_i64..=1_000_000_000_000,
            scale in 0_u32..=12,
            bps in 0_u32..=SpreadBps::MAX,
            pair in prop::sample::select(vec![("EUR", "USD"), ("USD", "JPY"), ("JPY", "BHD"), ("BHD", "JPY"), ("KWD", "JPY"), ("USD", "EUR")]),
        ) {
            let Ok(rate) = Rate::new(Decimal::new(mantissa, scale)) else {
                return Ok(());
            };
            let (from, to) = (currency(pair.0), currency(pair.1));
            let spread = SpreadBps::new(bps).unwrap();
            let amount = Amount::new(source).unwrap();
            match convert(amount, from, to, rate, spread) {
                Ok(conversion) => {
                    let (s, f, t) = (
                        i128::from(source),
                        i128::from(conversion.fee),
                        i128::from(conversion.target.minor()),
                    );
                    // fee = ceil(s × bps / 10^4): f × 10^4 ≥ s × bps > (f - 1) × 10^4.
                    prop_assert!(f * 10_000 >= s * i128::from(bps));
                    prop_assert!((f - 1) * 10_000 < s * i128::from(bps));
                    // target = floor(net × rate × 10^shift), checked by cross-multiplying.
                    let net = s - f;
                    let value = rate.value();
                    let (m, k) = (value.mantissa(), value.scale());
                    let shift = i32::from(to.exponent()) - i32::from(from.exponent());
                    let (lhs, unit) = if shift >= 0 {
                        (net * m * 10_i128.pow(shift as u32), 10_i128.pow(k))
                    } else {
                        (net * m, 10_i128.pow(k) * 10_i128.pow((-shift) as u32))
                    };
                    prop_assert!(t * unit <= lhs, "paid more than the exact value");
                    prop_assert!((t + 1) * unit > lhs, "kept a whole unit or more");
                    prop_assert!(t >= 1);
                }
                Err(ConversionError::TooSmall) => {
                    let exact = target_minor(
                        i128::from(source) - ceil_div(i128::from(source) * i128::from(bps), 10_000),
                        from, to, rate).unwrap();
                    prop_assert_eq!(exact.max(0), 0);
                }
                Err(ConversionError::TooLarge) => {
                    let exact = target_minor(i128::from(source), from, to, rate).unwrap();
                    prop_assert!(exact > i128::from(Amount::MAX_MINOR));
                }
            }
        }
    }
}
