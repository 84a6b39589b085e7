//! How the hot state stores an order, in `P{sale:ID}:keys`, `P{sale:ID}:pending` and
//! `P{sale:ID}:holds`: a JSON object of its own, `{"id", "buyer_id", "buyer_name", "quantity",
//! "idempotency_key", "created_at"}`, with `"status": "HELD"` and `"expires_at"` for a hold (the
//! sale and the price are the sale's, kept once in its meta). The scripts read `id`, `buyer_id`
//! and `quantity` (cjson), and write holds of their own (`reserve.lua`, `common.lua`).
//!
//! A waiting buyer, in `P{sale:ID}:waiting`, is `{"order_id", "buyer_id", "buyer_name",
//! "quantity", "joined_at"}` ([`StoredEntry`]). Everything read back goes through the domain's `parse`; a
//! value that does not parse is a malformed reply naming the field.

use serde::{Deserialize, Serialize};

use super::replies::malformed;
use crate::domain::{
    IdempotencyKey, Money, OrderId, OrderRecord, OrderStatus, SaleId, UnixMillis, UserId, WaitlistEntry,
};
use crate::store::{HotError, ReserveRequest};

/// An order as the hot state stores it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredOrder {
    id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    idempotency_key: String,
    created_at: i64,
    /// "HELD" for a hold; absent for a CONFIRMED order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// A hold's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
}

impl StoredOrder {
    /// `order` as stored.
    pub(super) fn of(order: &OrderRecord) -> Self {
        Self {
            id: order.id.to_string(),
            buyer_id: order.buyer_id.to_string(),
            buyer_name: order.buyer_name.to_string(),
            quantity: order.quantity,
            idempotency_key: order.idempotency_key.as_str().to_owned(),
            created_at: order.created_at.0,
            status: (order.status != OrderStatus::Confirmed).then(|| order.status.as_str().to_owned()),
            expires_at: order.expires_at.map(|t| t.0),
        }
    }

    /// The order `request` would make, as stored.
    pub(super) fn requested(request: &ReserveRequest) -> Self {
        Self {
            id: request.new_order_id.to_string(),
            buyer_id: request.buyer_id.to_string(),
            buyer_name: request.buyer_name.to_string(),
            quantity: request.quantity,
            idempotency_key: request.idempotency_key.as_str().to_owned(),
            created_at: request.now.0,
            status: None,
            expires_at: None,
        }
    }

    /// The stored text.
    pub(super) fn encode(&self) -> Result<String, HotError> {
        serde_json::to_string(self).map_err(|e| malformed(format!("encoding an order: {e}")))
    }

    /// An order read from the hot state.
    pub(super) fn decode(text: &str) -> Result<Self, HotError> {
        serde_json::from_str(text).map_err(|e| malformed(format!("a stored order: {e}")))
    }

    /// The order, in `sale` at `unit_price`; its values checked.
    pub(super) fn into_order(self, sale_id: &SaleId, unit_price: Money) -> Result<OrderRecord, HotError> {
        let bad = |field: &str, e: &dyn std::fmt::Display| malformed(format!("stored order {}: {field}: {e}", self.id));
        if self.quantity == 0 {
            return Err(bad("quantity", &"no units"));
        }
        let status = match &self.status {
            None => OrderStatus::Confirmed,
            Some(raw) => OrderStatus::parse(raw).ok_or_else(|| bad("status", raw))?,
        };
        Ok(OrderRecord {
            id: OrderId::parse(&self.id).map_err(|e| bad("id", &e))?,
            sale_id: sale_id.clone(),
            buyer_id: UserId::parse(&self.buyer_id).map_err(|e| bad("buyer_id", &e))?,
            buyer_name: self.buyer_name.as_str().into(),
            quantity: self.quantity,
            unit_price,
            idempotency_key: IdempotencyKey::parse(&self.idempotency_key).map_err(|e| bad("idempotency_key", &e))?,
            created_at: UnixMillis(self.created_at),
            status,
            expires_at: self.expires_at.map(UnixMillis),
            payment_reference: None,
            settled_at: None,
        })
    }
}

/// A waiting buyer as the hot state stores them.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredEntry {
    order_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    joined_at: i64,
}

impl StoredEntry {
    /// The stored text of `entry`.
    pub(super) fn encode(entry: &WaitlistEntry) -> Result<String, HotError> {
        let stored = Self {
            order_id: entry.order_id.to_string(),
            buyer_id: entry.buyer_id.to_string(),
            buyer_name: entry.buyer_name.to_string(),
            quantity: entry.quantity,
            joined_at: entry.joined_at.0,
        };
        serde_json::to_string(&stored).map_err(|e| malformed(format!("encoding a waitlist entry: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_reads_back_and_a_bad_one_is_refused() {
        let order = OrderRecord {
            id: OrderId::generate(),
            sale_id: SaleId::parse("s").unwrap(),
            buyer_id: UserId::parse("ann").unwrap(),
            buyer_name: "Ann".into(),
            quantity: 2,
            unit_price: Money::parse(5, "EUR").unwrap(),
            idempotency_key: IdempotencyKey::parse("k-1").unwrap(),
            created_at: UnixMillis(42),
            status: OrderStatus::Held,
            expires_at: Some(UnixMillis(60_042)),
            payment_reference: None,
            settled_at: None,
        };
        let text = StoredOrder::of(&order).encode().unwrap();
        let back = StoredOrder::decode(&text).unwrap().into_order(&order.sale_id, order.unit_price).unwrap();
        assert_eq!(back, order);
        let bad = text.replace("k-1", "k 1");
        assert!(StoredOrder::decode(&bad).unwrap().into_order(&order.sale_id, order.unit_price).is_err());
    }
}
