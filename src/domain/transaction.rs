//! Transactions: kinds, statuses and the free-text fields a client may attach.

use super::user::TextErrorKind;

/// The kind of money movement. Every kind is double entry: a credit moves money from `system`
/// to a user, a debit from a user to `system`, a transfer between two users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    Credit,
    Debit,
    Transfer,
    Reversal,
    /// Money of one currency for another (DESIGN.md section 9).
    Exchange,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::Credit => "credit",
            TransactionKind::Debit => "debit",
            TransactionKind::Transfer => "transfer",
            TransactionKind::Reversal => "reversal",
            TransactionKind::Exchange => "exchange",
        }
    }

    pub fn parse(kind: &str) -> Option<TransactionKind> {
        match kind {
            "credit" => Some(TransactionKind::Credit),
            "debit" => Some(TransactionKind::Debit),
            "transfer" => Some(TransactionKind::Transfer),
            "reversal" => Some(TransactionKind::Reversal),
            "exchange" => Some(TransactionKind::Exchange),
            _ => None,
        }
    }
}

/// Where a transaction stands. Tally records business rejections as `failed` transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// A hold, not yet resolved.
    Pending,
    /// A hold that was posted (its posting is a new completed transaction).
    Posted,
    /// A hold that was voided.
    Voided,
    /// A hold whose deadline passed before it was posted or voided.
    Expired,
    Completed,
    Failed,
}

impl TransactionStatus {
    pub const ALL: [TransactionStatus; 6] = [
        TransactionStatus::Pending,
        TransactionStatus::Posted,
        TransactionStatus::Voided,
        TransactionStatus::Expired,
        TransactionStatus::Completed,
        TransactionStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransactionStatus::Pending => "pending",
            TransactionStatus::Posted => "posted",
            TransactionStatus::Voided => "voided",
            TransactionStatus::Expired => "expired",
            TransactionStatus::Completed => "completed",
            TransactionStatus::Failed => "failed",
        }
    }

    pub fn parse(status: &str) -> Option<TransactionStatus> {
        TransactionStatus::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == status)
    }
}

pub type TextError = TextErrorKind;

/// Free text describing a transaction: at most 500 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(text: &str) -> Result<Description, TextError> {
        bounded_text(
            text,
            Self::MAX_CHARS,
            "must be at most 500 characters without control characters",
        )
        .map(Description)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's own reference for a transaction (an invoice number, say): 1 to 128 characters,
/// no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference(String);

impl Reference {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(text: &str) -> Result<Reference, TextError> {
        const MESSAGE: &str = "must be 1 to 128 characters without control characters";
        match bounded_text(text, Self::MAX_CHARS, MESSAGE) {
            Ok(text) if !text.is_empty() => Ok(Reference(text)),
            _ => Err(TextErrorKind::Invalid(MESSAGE)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen key that makes a POST exactly-once (DESIGN.md invariant 4): 1 to 255 visible
/// ASCII characters, scoped to the authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(key: &str) -> Result<IdempotencyKey, TextError> {
        if key.is_empty() || key.len() > Self::MAX_LEN || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TextErrorKind::Invalid(
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(IdempotencyKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn bounded_text(text: &str, max_chars: usize, message: &'static str) -> Result<String, TextError> {
    if text.chars().count() > max_chars || text.chars().any(char::is_control) {
        return Err(TextErrorKind::Invalid(message));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_and_statuses_round_trip() {
        for kind in [
            TransactionKind::Credit,
            TransactionKind::Debit,
            TransactionKind::Transfer,
            TransactionKind::Reversal,
        ] {
            assert_eq!(TransactionKind::parse(kind.as_str()), Some(kind));
        }
        for status in TransactionStatus::ALL {
            assert_eq!(TransactionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TransactionKind::parse("Credit"), None);
    }

    #[test]
    fn text_fields() {
        assert!(Description::parse("rent for May").is_ok());
        assert!(Description::parse(&"x".repeat(501)).is_err());
        assert!(Description::parse("line\nbreak").is_err());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("INV-1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("0b7c-44").is_ok());
    }

    proptest! {
        #[test]
        fn idempotency_key_accepts_visible_ascii(key in "[!-~]{1,255}") {
            let parsed = IdempotencyKey::parse(&key).unwrap();
            prop_assert_eq!(parsed.as_str(), key.as_str());
        }
    }
}
