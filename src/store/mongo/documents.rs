//! The documents as MongoDB stores them, and their conversion to and from the record types.
//!
//! The layout is written down here rather than derived from the record types, so a change to
//! a domain type's serde form can never silently change what is on disk:
//!
//! - every id is a string (`_id` and every cross-reference): a string compares equal in every
//!   filter, on every server;
//! - money is `{amount_minor: Int64, currency: "USD"}`, integer minor units, never a double;
//! - times are Int64 milliseconds since the Unix epoch;
//! - statuses and reasons are upper-case strings, as in the API (`ACTIVE`, `SOLD_OUT`).
//!
//! Integers are written as Int64 and read from Int32 or Int64 alike (serde widens), since
//! some servers hand small Int64 values back as Int32.

use serde::{Deserialize, Serialize};

use crate::domain::WaitlistEntry;
use crate::domain::{
    Currency, DisplayName, Email, EndReason, IdempotencyKey, Money, OrderEvent, OrderEventKind, OrderId, OrderRecord,
    OrderStatus, ProductId, ProductRecord, QueueRules, Role, SaleId, SaleRecord, SaleRules, SaleStatus, UnixMillis,
    UserId, UserRecord,
};
use crate::store::StoreError;

/// A stored value that no longer parses as its domain type: the record is corrupt.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field} in stored {collection} document {id:?}: {reason}")]
pub(super) struct CorruptDocument {
    collection: &'static str,
    id: String,
    field: &'static str,
    reason: String,
}

fn corrupt(collection: &'static str, id: &str, field: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Internal(Box::new(CorruptDocument { collection, id: id.to_owned(), field, reason: reason.to_string() }))
}

/// An amount of money.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MoneyDoc {
    amount_minor: i64,
    currency: String,
}

impl MoneyDoc {
    fn new(money: Money) -> Self {
        Self { amount_minor: money.amount_minor, currency: money.currency.as_str().to_owned() }
    }

    fn parse(&self, collection: &'static str, id: &str) -> Result<Money, StoreError> {
        let currency = Currency::parse(&self.currency).map_err(|e| corrupt(collection, id, "currency", e))?;
        Ok(Money { amount_minor: self.amount_minor, currency })
    }
}

/// `users`: one account; `email` is unique.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UserDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) email: String,
    display_name: String,
    role: String,
    password_hash: String,
    created_at: i64,
}

impl From<&UserRecord> for UserDoc {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            display_name: user.display_name.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            password_hash: user.password_hash.clone(),
            created_at: user.created_at.0,
        }
    }
}

impl TryFrom<UserDoc> for UserRecord {
    type Error = StoreError;

    fn try_from(doc: UserDoc) -> Result<Self, StoreError> {
        let bad = |field, reason: crate::domain::FieldViolation| corrupt("users", &doc.id, field, reason);
        Ok(UserRecord {
            id: UserId::parse(&doc.id).map_err(|e| bad("_id", e))?,
            email: Email::parse(&doc.email).map_err(|e| bad("email", e))?,
            display_name: DisplayName::parse(&doc.display_name).map_err(|e| bad("display_name", e))?,
            role: Role::parse(&doc.role).map_err(|e| bad("role", e))?,
            password_hash: doc.password_hash,
            created_at: UnixMillis(doc.created_at),
        })
    }
}

/// `products`: a product and the units not allocated to any sale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ProductDoc {
    #[serde(rename = "_id")]
    id: String,
    name: String,
    description: String,
    pub(super) inventory: i64,
    created_at: i64,
}

impl From<&ProductRecord> for ProductDoc {
    fn from(product: &ProductRecord) -> Self {
        Self {
            id: product.id.as_str().to_owned(),
            name: product.name.clone(),
            description: product.description.clone(),
            inventory: product.inventory,
            created_at: product.created_at.0,
        }
    }
}

impl TryFrom<ProductDoc> for ProductRecord {
    type Error = StoreError;

    fn try_from(doc: ProductDoc) -> Result<Self, StoreError> {
        Ok(ProductRecord {
            id: ProductId::parse(&doc.id).map_err(|e| corrupt("products", &doc.id, "_id", e))?,
            name: doc.name,
            description: doc.description,
            inventory: doc.inventory,
            created_at: UnixMillis(doc.created_at),
        })
    }
}

/// `sales`: a sale's rules (flat), its sold count and its lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SaleDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    product_id: String,
    pub(super) allocated: i64,
    per_user_limit: i64,
    max_per_purchase: i64,
    start_at: i64,
    end_at: i64,
    unit_price: MoneyDoc,
    /// Absent in sales stored before holds existed: 0 (no holds).
    #[serde(default)]
    hold_seconds: i64,
    /// The waiting room; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<QueueDoc>,
    /// Units in HELD or CONFIRMED orders.
    pub(super) sold: i64,
    /// Of `sold`, units in HELD orders; absent before holds existed: 0.
    #[serde(default)]
    pub(super) held: i64,
    pub(super) status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_at: Option<i64>,
    created_at: i64,
    /// Absent in sales stored before generations existed: 0.
    #[serde(default)]
    generation: i64,
}

/// A sale's waiting room.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueueDoc {
    prequeue_seconds: i64,
    admit_per_second: i64,
    max_active_buyers: i64,
    admission_seconds: i64,
}

impl SaleDoc {
    /// The product the sale's units came from.
    pub(super) fn product_id(&self) -> &str {
        &self.product_id
    }

    /// Whether the sale has ended (it takes no more orders).
    pub(super) fn is_ended(&self) -> bool {
        self.status == SaleStatus::Ended.as_str()
    }
}

impl From<&SaleRecord> for SaleDoc {
    fn from(sale: &SaleRecord) -> Self {
        Self {
            id: sale.id.as_str().to_owned(),
            product_id: sale.product_id.as_str().to_owned(),
            allocated: sale.rules.allocated,
            per_user_limit: i64::from(sale.rules.per_user_limit),
            max_per_purchase: i64::from(sale.rules.max_per_purchase),
            start_at: sale.rules.start.0,
            end_at: sale.rules.end.0,
            unit_price: MoneyDoc::new(sale.rules.unit_price),
            hold_seconds: i64::from(sale.rules.hold_seconds),
            queue: sale.rules.queue.map(|q| QueueDoc {
                prequeue_seconds: i64::from(q.prequeue_seconds),
                admit_per_second: i64::from(q.admit_per_second),
                max_active_buyers: i64::from(q.max_active_buyers),
                admission_seconds: i64::from(q.admission_seconds),
            }),
            sold: sale.sold,
            held: sale.held,
            status: sale.status.as_str().to_owned(),
            end_reason: sale.end_reason.map(|r| r.as_str().to_owned()),
            ended_at: sale.ended_at.map(|t| t.0),
            created_at: sale.created_at.0,
            generation: i64::try_from(sale.generation).unwrap_or(i64::MAX),
        }
    }
}

impl TryFrom<SaleDoc> for SaleRecord {
    type Error = StoreError;

    fn try_from(doc: SaleDoc) -> Result<Self, StoreError> {
        let id = &doc.id;
        let count = |field, value: i64| u32::try_from(value).map_err(|e| corrupt("sales", id, field, e));
        let end_reason = match &doc.end_reason {
            None => None,
            Some(raw) => Some(EndReason::parse(raw).ok_or_else(|| corrupt("sales", id, "end_reason", raw))?),
        };
        Ok(SaleRecord {
            id: SaleId::parse(id).map_err(|e| corrupt("sales", id, "_id", e))?,
            product_id: ProductId::parse(&doc.product_id).map_err(|e| corrupt("sales", id, "product_id", e))?,
            rules: SaleRules {
                allocated: doc.allocated,
                per_user_limit: count("per_user_limit", doc.per_user_limit)?,
                max_per_purchase: count("max_per_purchase", doc.max_per_purchase)?,
                start: UnixMillis(doc.start_at),
                end: UnixMillis(doc.end_at),
                unit_price: doc.unit_price.parse("sales", id)?,
                hold_seconds: count("hold_seconds", doc.hold_seconds)?,
                queue: match &doc.queue {
                    None => None,
                    Some(q) => Some(
                        QueueRules::parse(
                            count("queue.prequeue_seconds", q.prequeue_seconds)?,
                            count("queue.admit_per_second", q.admit_per_second)?,
                            count("queue.max_active_buyers", q.max_active_buyers)?,
                            count("queue.admission_seconds", q.admission_seconds)?,
                        )
                        .map_err(|e| corrupt("sales", id, "queue", e))?,
                    ),
                },
            },
            sold: doc.sold,
            held: doc.held,
            status: SaleStatus::parse(&doc.status).ok_or_else(|| corrupt("sales", id, "status", &doc.status))?,
            end_reason,
            ended_at: doc.ended_at.map(UnixMillis),
            created_at: UnixMillis(doc.created_at),
            generation: u64::try_from(doc.generation).map_err(|e| corrupt("sales", id, "generation", e))?,
        })
    }
}

/// `orders`: one durable order; (buyer_id, sale_id, idempotency_key) is unique.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OrderDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) sale_id: String,
    pub(super) buyer_id: String,
    buyer_name: String,
    quantity: i64,
    unit_price: MoneyDoc,
    pub(super) idempotency_key: String,
    created_at: i64,
    /// HELD | CONFIRMED | CANCELLED | EXPIRED; absent in orders stored before holds existed:
    /// CONFIRMED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payment_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settled_at: Option<i64>,
}

impl From<&OrderRecord> for OrderDoc {
    fn from(order: &OrderRecord) -> Self {
        Self {
            id: order.id.as_str().to_owned(),
            sale_id: order.sale_id.as_str().to_owned(),
            buyer_id: order.buyer_id.as_str().to_owned(),
            buyer_name: order.buyer_name.to_string(),
            quantity: i64::from(order.quantity),
            unit_price: MoneyDoc::new(order.unit_price),
            idempotency_key: order.idempotency_key.as_str().to_owned(),
            created_at: order.created_at.0,
            status: Some(order.status.as_str().to_owned()),
            expires_at: order.expires_at.map(|t| t.0),
            payment_reference: order.payment_reference.clone(),
            settled_at: order.settled_at.map(|t| t.0),
        }
    }
}

impl TryFrom<OrderDoc> for OrderRecord {
    type Error = StoreError;

    fn try_from(doc: OrderDoc) -> Result<Self, StoreError> {
        let id = &doc.id;
        let status = match &doc.status {
            None => OrderStatus::Confirmed,
            Some(raw) => OrderStatus::parse(raw).ok_or_else(|| corrupt("orders", id, "status", raw))?,
        };
        Ok(OrderRecord {
            id: OrderId::parse(id).map_err(|e| corrupt("orders", id, "_id", e))?,
            sale_id: SaleId::parse(&doc.sale_id).map_err(|e| corrupt("orders", id, "sale_id", e))?,
            buyer_id: UserId::parse(&doc.buyer_id).map_err(|e| corrupt("orders", id, "buyer_id", e))?,
            buyer_name: doc.buyer_name.as_str().into(),
            quantity: u32::try_from(doc.quantity).map_err(|e| corrupt("orders", id, "quantity", e))?,
            unit_price: doc.unit_price.parse("orders", id)?,
            idempotency_key: IdempotencyKey::parse(&doc.idempotency_key)
                .map_err(|e| corrupt("orders", id, "idempotency_key", e))?,
            created_at: UnixMillis(doc.created_at),
            status,
            expires_at: doc.expires_at.map(UnixMillis),
            payment_reference: doc.payment_reference,
            settled_at: doc.settled_at.map(UnixMillis),
        })
    }
}

/// `order_events`: one change of one order; `_id` is its sequence (the `counters` document
/// `order_events` holds the last one given).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EventDoc {
    #[serde(rename = "_id")]
    pub(super) sequence: i64,
    kind: String,
    /// The order's sale, for one sale's feed (index `events_by_sale`).
    sale_id: String,
    /// When it happened (Unix ms; pruning reads it, index `events_by_time`).
    at: i64,
    order: OrderDoc,
}

impl EventDoc {
    pub(super) fn new(sequence: i64, kind: OrderEventKind, order: &OrderRecord) -> Self {
        let event = OrderEvent { sequence: sequence as u64, kind, order: order.clone() };
        Self {
            sequence,
            kind: kind.as_str().to_owned(),
            sale_id: order.sale_id.as_str().to_owned(),
            at: event.at().0,
            order: OrderDoc::from(order),
        }
    }
}

impl TryFrom<EventDoc> for OrderEvent {
    type Error = StoreError;

    fn try_from(doc: EventDoc) -> Result<Self, StoreError> {
        let id = doc.sequence.to_string();
        let kind = OrderEventKind::parse(&doc.kind).ok_or_else(|| corrupt("order_events", &id, "kind", &doc.kind))?;
        let sequence = u64::try_from(doc.sequence).map_err(|e| corrupt("order_events", &id, "_id", e))?;
        Ok(OrderEvent { sequence, kind, order: OrderRecord::try_from(doc.order)? })
    }
}

/// `counters`: a named sequence (`_id` "order_events": the last event's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CounterDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) seq: i64,
}

/// `waitlist`: a buyer's place in a sale's line; `_id` is "<sale>/<buyer>" (one place each).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WaitlistDoc {
    #[serde(rename = "_id")]
    id: String,
    sale_id: String,
    order_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: i64,
    joined_at: i64,
}

impl WaitlistDoc {
    /// The document id of a buyer's place in a sale's line.
    pub(super) fn id(sale: &SaleId, buyer: &UserId) -> String {
        format!("{sale}/{buyer}")
    }

    pub(super) fn new(sale: &SaleId, entry: &WaitlistEntry) -> Self {
        Self {
            id: Self::id(sale, &entry.buyer_id),
            sale_id: sale.as_str().to_owned(),
            order_id: entry.order_id.as_str().to_owned(),
            buyer_id: entry.buyer_id.as_str().to_owned(),
            buyer_name: entry.buyer_name.to_string(),
            quantity: i64::from(entry.quantity),
            joined_at: entry.joined_at.0,
        }
    }
}

impl TryFrom<WaitlistDoc> for WaitlistEntry {
    type Error = StoreError;

    fn try_from(doc: WaitlistDoc) -> Result<Self, StoreError> {
        let id = &doc.id;
        let quantity = u32::try_from(doc.quantity).ok().filter(|q| *q > 0);
        Ok(WaitlistEntry {
            order_id: OrderId::parse(&doc.order_id).map_err(|e| corrupt("waitlist", id, "order_id", e))?,
            buyer_id: UserId::parse(&doc.buyer_id).map_err(|e| corrupt("waitlist", id, "buyer_id", e))?,
            buyer_name: doc.buyer_name.as_str().into(),
            quantity: quantity.ok_or_else(|| corrupt("waitlist", id, "quantity", doc.quantity))?,
            joined_at: UnixMillis(doc.joined_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc, Bson};

    use super::*;

    fn sale() -> SaleRecord {
        SaleRecord {
            id: SaleId::generate(),
            product_id: ProductId::generate(),
            rules: SaleRules {
                queue: None,
                allocated: 10,
                per_user_limit: 2,
                max_per_purchase: 1,
                start: UnixMillis(1_700_000_000_000),
                end: UnixMillis(1_700_000_060_000),
                unit_price: Money::parse(1999, "EUR").unwrap(),
                hold_seconds: 0,
            },
            sold: 3,
            held: 0,
            status: SaleStatus::Ended,
            end_reason: Some(EndReason::SoldOut),
            ended_at: Some(UnixMillis(1_700_000_001_000)),
            generation: 4,
            created_at: UnixMillis(1_699_999_999_999),
        }
    }

    #[test]
    fn money_and_times_are_int64_and_ids_are_strings() {
        let document = bson::to_document(&SaleDoc::from(&sale())).unwrap();
        assert!(matches!(document.get("_id"), Some(Bson::String(_))));
        assert!(matches!(document.get("product_id"), Some(Bson::String(_))));
        assert!(matches!(document.get("start_at"), Some(Bson::Int64(1_700_000_000_000))));
        assert!(matches!(document.get("sold"), Some(Bson::Int64(3))));
        let price = document.get_document("unit_price").unwrap();
        assert_eq!(price, &doc! { "amount_minor": 1999_i64, "currency": "EUR" });
        assert_eq!(document.get_str("status").unwrap(), "ENDED");
        assert_eq!(document.get_str("end_reason").unwrap(), "SOLD_OUT");
    }

    #[test]
    fn small_int64_read_back_as_int32_decodes() {
        let original = sale();
        let mut document = bson::to_document(&SaleDoc::from(&original)).unwrap();
        // What some servers return for small Int64 values.
        for field in ["allocated", "per_user_limit", "max_per_purchase", "sold"] {
            let value = document.get_i64(field).unwrap();
            document.insert(field, Bson::Int32(value as i32));
        }
        document.insert("unit_price", doc! { "amount_minor": 1999_i32, "currency": "EUR" });
        let back = SaleRecord::try_from(bson::from_document::<SaleDoc>(document).unwrap()).unwrap();
        assert_eq!(back.rules, original.rules);
        assert_eq!(
            (back.sold, back.status, back.end_reason, back.ended_at),
            (3, SaleStatus::Ended, Some(EndReason::SoldOut), original.ended_at)
        );
    }

    #[test]
    fn a_corrupt_document_is_an_internal_error_naming_the_field() {
        let mut doc = SaleDoc::from(&sale());
        doc.status = "PAUSED".into();
        match SaleRecord::try_from(doc) {
            Err(StoreError::Internal(source)) => {
                assert!(source.to_string().contains("status"), "{source}")
            }
            other => panic!("expected Internal, got {other:?}"),
        }
    }
}
