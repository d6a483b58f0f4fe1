//! Users: ids, names, emails, passwords and roles.

use std::fmt;

use uuid::Uuid;

/// The reserved `system` user: the counterparty of every credit and debit (double entry). Created
/// by the first migration with this fixed id; it has no password and cannot log in.
pub const SYSTEM_USER_ID: UserId = UserId(Uuid::nil());

/// The reserved `fees` user: the house account that keeps the spread of every exchange
/// (DESIGN.md section 9), one balance per currency. Created by migration V9 with this fixed id
/// and role `system`: it has no password and cannot log in, and it is never named as a party
/// of a request.
pub const FEES_USER_ID: UserId = UserId(Uuid::from_u128(1));

/// A user's id (a UUID; v7 for users created by Tally, nil for `system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Uuid);

impl UserId {
    /// A new time-ordered id.
    pub fn generate() -> UserId {
        UserId(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> UserId {
        UserId(id)
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }

    pub fn is_system(self) -> bool {
        self == SYSTEM_USER_ID
    }

    /// `system` or `fees`: the ledger's own accounts, which no request names as a party.
    pub fn is_reserved(self) -> bool {
        self == SYSTEM_USER_ID || self == FEES_USER_ID
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a user may do. `system` is the ledger's own counterparty and never authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    User,
    Admin,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    /// Errors: any string but `user`, `admin` or `system`. The message offers only `user` and
    /// `admin`: `system` is read from the database, never accepted from a client.
    pub fn parse(role: &str) -> Result<Role, TextErrorKind> {
        match role {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            "system" => Ok(Role::System),
            _ => Err(TextErrorKind::Invalid("must be user or admin")),
        }
    }
}

/// Why a piece of text was refused; the message reads after the field name
/// ("username must be ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextErrorKind {
    #[error("{0}")]
    Invalid(&'static str),
}

/// A login name: 3 to 32 characters from `[A-Za-z0-9_.-]`, starting with a letter or digit.
/// Unique regardless of case (enforced by the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(name: &str) -> Result<Username, TextErrorKind> {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if !(3..=32).contains(&name.len()) || !valid_chars || !starts_well {
            return Err(TextErrorKind::Invalid(
                "must be 3 to 32 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
            ));
        }
        Ok(Username(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only; whether it receives mail is not Tally's business.
/// The shape is the common subset of RFC 5321 and RFC 5322 that every `email` format checker
/// accepts: a dot-atom local part of at most 64 characters (`atext` runs joined by single
/// dots), `@`, and a host name of at least two labels (1 to 63 letters, digits or inner
/// hyphens each; at most 253 characters), at most 254 characters in all, ASCII only. The
/// OpenAPI document states the same rule as [`Email::PATTERN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The longest address, in characters (RFC 5321 section 4.5.3.1.3: a 256-octet path
    /// minus its angle brackets).
    pub const MAX_CHARS: usize = 254;

    /// [`Email::parse`]'s rule as an ECMA-262 regular expression (with [`Email::MAX_CHARS`]).
    pub const PATTERN: &'static str = concat!(
        "^(?=[^@]{1,64}@)(?=[^@]+@.{1,253}$)",
        "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*",
        "@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    );

    pub fn parse(email: &str) -> Result<Email, TextErrorKind> {
        let invalid = TextErrorKind::Invalid("must be an email address like name@example.com");
        if email.len() > Self::MAX_CHARS || !email.is_ascii() {
            return Err(invalid);
        }
        let Some((local, host)) = email.split_once('@') else {
            return Err(invalid);
        };
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        let local_ok = (1..=64).contains(&local.len())
            && local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(atext));
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        let host_ok =
            host.len() <= 253 && host.split('.').count() >= 2 && host.split('.').all(label_ok);
        if !local_ok || !host_ok {
            return Err(invalid);
        }
        Ok(Email(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user logs in with: their username or their email, so 1 to 254 characters (an email's
/// limit) without control characters. Anything longer or stranger names no account; it is
/// refused before it reaches the database, where the failed-login counter is keyed by it (and a
/// key of a few kilobytes would not fit its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginName(String);

impl LoginName {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(login: &str) -> Result<LoginName, TextErrorKind> {
        let chars = login.chars().count();
        if !(1..=Self::MAX_CHARS).contains(&chars) || login.chars().any(char::is_control) {
            return Err(TextErrorKind::Invalid(
                "must be a username or an email: 1 to 254 characters without control characters",
            ));
        }
        Ok(LoginName(login.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password in clear text, only on its way to the hasher: 8 to 128 characters (NIST SP 800-63B
/// section 5.1.1.2 asks for at least 8 and for allowing at least 64). Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(password: &str) -> Result<Password, TextErrorKind> {
        if !(8..=128).contains(&password.chars().count()) {
            return Err(TextErrorKind::Invalid("must be 8 to 128 characters"));
        }
        Ok(Password(password.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a.b-c_9").is_ok());
        assert!(Username::parse("al").is_err());
        assert!(Username::parse("_alice").is_err());
        assert!(Username::parse("alice smith").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn emails() {
        assert!(Email::parse("alice@example.com").is_ok());
        assert!(Email::parse("alice@example").is_err());
        assert!(Email::parse("@example.com").is_err());
        assert!(Email::parse("alice@@example.com").is_err());
        assert!(Email::parse("alice @example.com").is_err());
        assert!(Email::parse("alice@example..com").is_err());
        assert!(Email::parse("o'hara+tag@mail-1.example.com").is_ok());
        assert!(Email::parse("a.b@example.com").is_ok());
        assert!(Email::parse(".a@example.com").is_err());
        assert!(Email::parse("a..b@example.com").is_err());
        assert!(Email::parse("a(b)@example.com").is_err());
        assert!(Email::parse("alice@-example.com").is_err());
        assert!(Email::parse("alice@example-.com").is_err());
        assert!(Email::parse("älice@example.com").is_err());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(64))).is_ok());
        assert!(Email::parse(&format!("a@{}.com", "b".repeat(64))).is_err());
    }

    #[test]
    fn login_names() {
        assert!(LoginName::parse("alice").is_ok());
        assert!(LoginName::parse("alice@example.com").is_ok());
        assert!(LoginName::parse("").is_err());
        assert!(LoginName::parse("ali\0ce").is_err());
        assert!(LoginName::parse(&"a".repeat(254)).is_ok());
        assert!(LoginName::parse(&"a".repeat(255)).is_err());
    }

    #[test]
    fn passwords_are_not_printed() {
        let password = Password::parse("correct horse").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
        assert!(Password::parse("short").is_err());
    }

    proptest! {
        #[test]
        fn username_never_accepts_a_forbidden_char(name in "[a-z]{3}[ @/\\\\:]{1}[a-z]{0,4}") {
            prop_assert!(Username::parse(&name).is_err());
        }

        #[test]
        fn email_parse_keeps_the_text(local in "[a-z0-9]{1,10}(\\.[a-z0-9_+-]{1,10}){0,2}", domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let text = format!("{local}@{domain}");
            let parsed = Email::parse(&text).unwrap();
            prop_assert_eq!(parsed.as_str(), text.as_str());
        }
    }
}
