//! How the hot state stores an order, in `P{sale:ID}:keys` and `P{sale:ID}:pending`: a JSON
//! object of its own, `{"id", "buyer_id", "buyer_name", "quantity", "idempotency_key",
//! "created_at"}` (the sale and the price are the sale's, kept once in its meta). The scripts
//! read `id` and `quantity` (cjson). Everything read back goes through the domain's `parse`; a
//! value that does not parse is a malformed reply naming the field.

use serde::{Deserialize, Serialize};

use super::replies::malformed;
use crate::domain::{IdempotencyKey, Money, OrderId, OrderRecord, SaleId, UnixMillis, UserId};
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
        Ok(OrderRecord {
            id: OrderId::parse(&self.id).map_err(|e| bad("id", &e))?,
            sale_id: sale_id.clone(),
            buyer_id: UserId::parse(&self.buyer_id).map_err(|e| bad("buyer_id", &e))?,
            buyer_name: self.buyer_name.as_str().into(),
            quantity: self.quantity,
            unit_price,
            idempotency_key: IdempotencyKey::parse(&self.idempotency_key).map_err(|e| bad("idempotency_key", &e))?,
            created_at: UnixMillis(self.created_at),
        })
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
        };
        let text = StoredOrder::of(&order).encode().unwrap();
        let back = StoredOrder::decode(&text).unwrap().into_order(&order.sale_id, order.unit_price).unwrap();
        assert_eq!(back, order);
        let bad = text.replace("k-1", "k 1");
        assert!(StoredOrder::decode(&bad).unwrap().into_order(&order.sale_id, order.unit_price).is_err());
    }
}
