//! Opaque identifiers. New ids are UUIDv7 strings (time-ordered, unique across nodes), so
//! sorting ids sorts by creation time.
//!
//! An id is an `Arc<str>`: a purchase hands its sale, buyer and order ids to the hot state,
//! the group committer, the record and the feed, and each of those copies is a reference
//! count, not an allocation.

use std::fmt;
use std::sync::Arc;

use super::FieldViolation;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// A fresh, unique id.
            pub fn generate() -> Self {
                let mut text = uuid::Uuid::encode_buffer();
                Self(Arc::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text)))
            }

            /// Accepts 1..=64 characters of `[A-Za-z0-9_-]`.
            pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
                check_id(raw, $field).map(|()| Self(Arc::from(raw)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn check_id(raw: &str, field: &'static str) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(FieldViolation::new(field, "is not a valid id"));
    }
    Ok(())
}

id_type!(
    /// Identifies a user; the `sub` claim of their tokens.
    UserId, "user_id"
);
id_type!(
    /// Identifies a product.
    ProductId, "product_id"
);
id_type!(
    /// Identifies a sale.
    SaleId, "sale_id"
);
id_type!(
    /// Identifies an order.
    OrderId, "order_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_creation() {
        let a = SaleId::generate();
        let b = SaleId::generate();
        assert_eq!(SaleId::parse(a.as_str()).unwrap(), a);
        assert!(a < b);
    }

    #[test]
    fn rejects_empty_long_and_odd_ids() {
        assert!(SaleId::parse("").is_err());
        assert!(SaleId::parse(&"a".repeat(65)).is_err());
        assert!(SaleId::parse("a b").is_err());
        assert!(SaleId::parse("{sale:1}").is_err());
    }
}
