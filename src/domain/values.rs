//! Validated values. Each `parse` is the only way in, so a value that exists is valid.

use std::fmt;

use super::FieldViolation;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

/// Units asked for in one purchase: at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    /// Accepts 1..=`max_per_purchase`.
    pub fn parse(raw: u32, max_per_purchase: u32) -> Result<Self, FieldViolation> {
        if raw == 0 {
            return Err(FieldViolation::new("quantity", "must be at least 1"));
        }
        if raw > max_per_purchase {
            return Err(FieldViolation::new(
                "quantity",
                format!("must be at most {max_per_purchase} (the sale's max per purchase)"),
            ));
        }
        Ok(Self(raw))
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A normalised (trimmed, lower-case) email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Trims and lower-cases, then checks the shape `local@domain.tld` (up to 254 characters).
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
            && !email.chars().any(char::is_whitespace)
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if valid {
            Ok(Self(email))
        } else {
            Err(FieldViolation::new("email", "is not a valid email address"))
        }
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A public name for leaderboards: 1..=64 characters, no '@', so it can never be an email.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    /// Trims, then checks length, control characters and '@'.
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let name = raw.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > 64 {
            return Err(FieldViolation::new("display_name", "must be 1 to 64 characters"));
        }
        if name.contains('@') || name.chars().any(char::is_control) {
            return Err(FieldViolation::new("display_name", "must not contain '@' or control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A clear-text password on its way to the hasher. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Accepts 8..=128 characters.
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let chars = raw.chars().count();
        if !(8..=128).contains(&chars) {
            return Err(FieldViolation::new("password", "must be 8 to 128 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The clear text, for hashing or verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A client-chosen key that makes retries of one purchase safe: 1..=128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(std::sync::Arc<str>);

impl IdempotencyKey {
    /// Checks length and characters.
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldViolation::new("idempotency_key", "must be 1 to 128 printable ASCII characters"));
        }
        Ok(Self(raw.into()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Accepts exactly three upper-case ASCII letters.
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        match raw.as_bytes() {
            [a, b, c] if raw.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(FieldViolation::new("unit_price.currency", "must be an ISO 4217 code such as USD")),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

/// An amount in integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    /// Minor units (cents); never negative.
    pub amount_minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// Checks the amount is not negative and the currency is valid.
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, FieldViolation> {
        if amount_minor < 0 {
            return Err(FieldViolation::new("unit_price.amount_minor", "must not be negative"));
        }
        Ok(Self { amount_minor, currency: Currency::parse(currency)? })
    }

    /// `self * quantity`, saturating (a unit price near i64::MAX times a quantity is refused at
    /// sale creation, so saturation never shows).
    pub fn times(self, quantity: u32) -> Self {
        Self { amount_minor: self.amount_minor.saturating_mul(i64::from(quantity)), currency: self.currency }
    }
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May purchase.
    Buyer,
    /// May purchase and administer.
    Admin,
    /// A payment service: may confirm any order, nothing else.
    Payments,
    /// A fulfillment system: may read orders (listings and the order feed), nothing else.
    Fulfillment,
}

impl Role {
    /// Accepts "buyer", "admin", "payments" or "fulfillment".
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        match raw {
            "buyer" => Ok(Self::Buyer),
            "admin" => Ok(Self::Admin),
            "payments" => Ok(Self::Payments),
            "fulfillment" => Ok(Self::Fulfillment),
            _ => Err(FieldViolation::new("role", "must be buyer, admin, payments or fulfillment")),
        }
    }

    /// "buyer", "admin", "payments" or "fulfillment".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Admin => "admin",
            Self::Payments => "payments",
            Self::Fulfillment => "fulfillment",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_is_between_one_and_the_max() {
        assert!(Quantity::parse(0, 5).is_err());
        assert_eq!(Quantity::parse(5, 5).unwrap().get(), 5);
        assert!(Quantity::parse(6, 5).is_err());
    }

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(Email::parse("  Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@example.com", "ann@example", "a b@example.com", "a@b@c.d"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_name_can_never_be_an_email() {
        assert!(DisplayName::parse("ann@example.com").is_err());
        assert!(DisplayName::parse("   ").is_err());
        assert_eq!(DisplayName::parse(" Ann ").unwrap().as_str(), "Ann");
    }

    #[test]
    fn password_is_never_debug_printed() {
        let password = Password::parse("correct horse").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
        assert!(Password::parse("short").is_err());
    }

    #[test]
    fn money_and_currency() {
        assert!(Money::parse(-1, "USD").is_err());
        assert!(Money::parse(1, "usd").is_err());
        assert!(Money::parse(1, "US").is_err());
        let price = Money::parse(250, "EUR").unwrap();
        assert_eq!(price.times(3).amount_minor, 750);
        assert_eq!(price.currency.as_str(), "EUR");
    }

    #[test]
    fn idempotency_key_is_printable_ascii() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("order-1:retry").is_ok());
    }
}
