//! What the embedded record writes: one JSON document per record, in a format of its own rather
//! than the serde output of whatever Rust type is handy, so that renaming a field or a variant in
//! the code can never change what an existing data directory means.
//!
//! Format 2 (written now): a flat object with `"v": 2`, names as the API spells them — status
//! `SCHEDULED` | `ACTIVE` | `ENDED`, end reason `SOLD_OUT` | `TIME_UP` | `BY_ADMIN`, role `buyer` |
//! `admin`, money as `price_minor` and an ISO 4217 `currency` string, times in Unix
//! milliseconds:
//!
//! | table | fields |
//! |---|---|
//! | `users` | `id`, `email`, `display_name`, `role`, `password_hash`, `created_at` |
//! | `products` | `id`, `name`, `description`, `inventory`, `created_at` |
//! | `sales` | `id`, `product_id`, `allocated`, `per_user_limit`, `max_per_purchase`, `start`, `end`, `price_minor`, `currency`, `hold_seconds`, `queue` (absent without a waiting room, else an object: `prequeue_seconds`, `admit_per_second`, `max_active_buyers`, `admission_seconds`), `sold` (units in HELD or CONFIRMED orders), `held`, `status`, `end_reason`, `ended_at`, `created_at`, `generation` |
//! | `waitlist` (key: sale id, buyer id) | `order_id` (the hold it becomes), `buyer_id`, `buyer_name`, `quantity`, `joined_at` |
//! | `orders` | `id`, `sale_id`, `buyer_id`, `buyer_name`, `quantity`, `price_minor`, `currency`, `idempotency_key`, `created_at`, `status` (`HELD` \| `CONFIRMED` \| `CANCELLED` \| `EXPIRED`), `expires_at`, `payment_reference`, `settled_at` |
//! | `order_events` (key: sequence, u64) | `kind` (`CREATED` \| `CONFIRMED` \| `CANCELLED` \| `EXPIRED`), `order` (the order as the change left it, as `orders` stores it) |
//!
//! Format 1 is format 2 without holds: no `hold_seconds`, `held`, order `status`, `expires_at`,
//! `payment_reference` nor `settled_at`; it reads as a sale without holds whose orders are all
//! CONFIRMED. A program that reads only format 1 refuses format 2 rather than taking held
//! orders for paid ones.
//!
//! Format 0 (data directories written before formats were versioned: no `v`) is still read: the
//! serde output of the Rust types of the time — variants as Rust names (`Active`, `SoldOut`), a
//! sale's rules nested with its price, a currency as an array of three bytes, no generation.
//! `tests/fixtures/redb-v0` is such a file, and a test serves it.
//!
//! Every value read goes through the domain's `parse`: a bad stored value is an error naming
//! the table, the key and the field, never a panic nor a silently wrong value.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{
    DisplayName, Email, EndReason, IdempotencyKey, Money, OrderEvent, OrderEventKind, OrderId, OrderRecord,
    OrderStatus, ProductId, ProductRecord, QueueRules, Role, SaleId, SaleRecord, SaleRules, SaleStatus, UnixMillis,
    UserId, UserRecord, WaitlistEntry,
};
use crate::store::StoreError;

/// The format this code writes.
const FORMAT: u8 = 2;

/// A record as one table stores it.
pub(super) trait Stored: Sized {
    /// The table's name, for errors.
    const TABLE: &'static str;
    /// The stored bytes (format 2).
    fn encode(&self) -> Result<Vec<u8>, StoreError>;
    /// The record stored under `key`, in any format this code reads.
    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError>;
}

/// A stored value that is not what its format says.
#[derive(Debug, thiserror::Error)]
#[error("{table} record {key:?}: {field}: {problem}")]
pub struct CorruptRecord {
    table: &'static str,
    key: String,
    field: &'static str,
    problem: String,
}

/// Reads values of one record, naming it in every error.
struct Reader<'a> {
    table: &'static str,
    key: &'a str,
}

impl Reader<'_> {
    fn corrupt(&self, field: &'static str, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(Box::new(CorruptRecord {
            table: self.table,
            key: self.key.to_owned(),
            field,
            problem: problem.to_string(),
        }))
    }

    fn parse<T, E: std::fmt::Display>(&self, field: &'static str, parsed: Result<T, E>) -> Result<T, StoreError> {
        parsed.map_err(|e| self.corrupt(field, e))
    }

    fn named<T>(&self, field: &'static str, raw: &str, parsed: Option<T>) -> Result<T, StoreError> {
        parsed.ok_or_else(|| self.corrupt(field, format!("unknown value {raw:?}")))
    }

    /// The document as `T`, for the format its `v` names.
    fn document<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt("(document)", e))
    }

    fn version(&self, bytes: &[u8]) -> Result<u8, StoreError> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            v: u8,
        }
        match self.document::<Version>(bytes)?.v {
            v @ (0 | 1 | FORMAT) => Ok(v),
            other => Err(self.corrupt("v", format!("format {other} is newer than this program reads"))),
        }
    }

    fn money(&self, amount_minor: i64, currency: &str) -> Result<Money, StoreError> {
        self.parse("currency", Money::parse(amount_minor, currency))
    }

    fn end_reason(
        &self,
        raw: Option<String>,
        parse: fn(&str) -> Option<EndReason>,
    ) -> Result<Option<EndReason>, StoreError> {
        raw.map(|raw| self.named("end_reason", &raw, parse(&raw))).transpose()
    }
}

fn encode<T: Serialize>(document: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(document).map_err(|e| StoreError::Internal(Box::new(e)))
}

// ---- users -------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct UserV1 {
    /// Absent in format 0.
    #[serde(default)]
    v: u8,
    id: String,
    email: String,
    display_name: String,
    role: String,
    password_hash: String,
    created_at: i64,
}

/// Format 0 has the same fields (the role was already lower-case), without `v`.
impl Stored for UserRecord {
    const TABLE: &'static str = "users";

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&UserV1 {
            v: FORMAT,
            id: self.id.to_string(),
            email: self.email.as_str().to_owned(),
            display_name: self.display_name.as_str().to_owned(),
            role: self.role.as_str().to_owned(),
            password_hash: self.password_hash.clone(),
            created_at: self.created_at.0,
        })
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let r = Reader { table: Self::TABLE, key };
        r.version(bytes)?;
        let d: UserV1 = r.document(bytes)?;
        Ok(UserRecord {
            id: r.parse("id", UserId::parse(&d.id))?,
            email: r.parse("email", Email::parse(&d.email))?,
            display_name: r.parse("display_name", DisplayName::parse(&d.display_name))?,
            role: r.parse("role", Role::parse(&d.role))?,
            password_hash: d.password_hash,
            created_at: UnixMillis(d.created_at),
        })
    }
}

// ---- products ----------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct ProductV1 {
    /// Absent in format 0.
    #[serde(default)]
    v: u8,
    id: String,
    name: String,
    description: String,
    inventory: i64,
    created_at: i64,
}

/// Format 0 has the same fields, without `v`.
impl Stored for ProductRecord {
    const TABLE: &'static str = "products";

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&ProductV1 {
            v: FORMAT,
            id: self.id.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            inventory: self.inventory,
            created_at: self.created_at.0,
        })
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let r = Reader { table: Self::TABLE, key };
        r.version(bytes)?;
        let d: ProductV1 = r.document(bytes)?;
        Ok(ProductRecord {
            id: r.parse("id", ProductId::parse(&d.id))?,
            name: d.name,
            description: d.description,
            inventory: d.inventory,
            created_at: UnixMillis(d.created_at),
        })
    }
}

// ---- sales -------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct SaleV2 {
    v: u8,
    id: String,
    product_id: String,
    allocated: i64,
    per_user_limit: u32,
    max_per_purchase: u32,
    start: i64,
    end: i64,
    price_minor: i64,
    currency: String,
    /// Absent in format 1.
    #[serde(default)]
    hold_seconds: u32,
    /// Absent without a waiting room (and in sales written before waiting rooms existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<QueueV2>,
    sold: i64,
    /// Absent in format 1.
    #[serde(default)]
    held: i64,
    status: String,
    end_reason: Option<String>,
    ended_at: Option<i64>,
    created_at: i64,
    generation: u64,
}

/// A sale's waiting room.
#[derive(Serialize, Deserialize)]
struct QueueV2 {
    prequeue_seconds: u32,
    admit_per_second: u32,
    max_active_buyers: u32,
    admission_seconds: u32,
}

/// Format 0: `rules` nested, variants as Rust names, no generation.
#[derive(Deserialize)]
struct SaleV0 {
    id: String,
    product_id: String,
    rules: RulesV0,
    sold: i64,
    status: String,
    end_reason: Option<String>,
    ended_at: Option<i64>,
    created_at: i64,
}

#[derive(Deserialize)]
struct RulesV0 {
    allocated: i64,
    per_user_limit: u32,
    max_per_purchase: u32,
    start: i64,
    end: i64,
    unit_price: MoneyV0,
}

/// Format 0's money: the currency as its three bytes.
#[derive(Deserialize)]
struct MoneyV0 {
    amount_minor: i64,
    currency: [u8; 3],
}

impl MoneyV0 {
    fn read(&self, r: &Reader<'_>) -> Result<Money, StoreError> {
        let code = std::str::from_utf8(&self.currency).map_err(|e| r.corrupt("currency", e))?;
        r.money(self.amount_minor, code)
    }
}

/// Format 0's names of statuses and end reasons (the Rust variants of the time).
fn status_v0(raw: &str) -> Option<SaleStatus> {
    match raw {
        "Scheduled" => Some(SaleStatus::Scheduled),
        "Active" => Some(SaleStatus::Active),
        "Ended" => Some(SaleStatus::Ended),
        _ => None,
    }
}

fn end_reason_v0(raw: &str) -> Option<EndReason> {
    match raw {
        "SoldOut" => Some(EndReason::SoldOut),
        "TimeUp" => Some(EndReason::TimeUp),
        "ByAdmin" => Some(EndReason::ByAdmin),
        _ => None,
    }
}

impl Stored for SaleRecord {
    const TABLE: &'static str = "sales";

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let rules = &self.rules;
        encode(&SaleV2 {
            v: FORMAT,
            id: self.id.to_string(),
            product_id: self.product_id.to_string(),
            allocated: rules.allocated,
            per_user_limit: rules.per_user_limit,
            max_per_purchase: rules.max_per_purchase,
            start: rules.start.0,
            end: rules.end.0,
            price_minor: rules.unit_price.amount_minor,
            currency: rules.unit_price.currency.as_str().to_owned(),
            hold_seconds: rules.hold_seconds,
            queue: rules.queue.map(|q| QueueV2 {
                prequeue_seconds: q.prequeue_seconds,
                admit_per_second: q.admit_per_second,
                max_active_buyers: q.max_active_buyers,
                admission_seconds: q.admission_seconds,
            }),
            sold: self.sold,
            held: self.held,
            status: self.status.as_str().to_owned(),
            end_reason: self.end_reason.map(|r| r.as_str().to_owned()),
            ended_at: self.ended_at.map(|t| t.0),
            created_at: self.created_at.0,
            generation: self.generation,
        })
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let r = Reader { table: Self::TABLE, key };
        if r.version(bytes)? == 0 {
            let d: SaleV0 = r.document(bytes)?;
            return Ok(SaleRecord {
                id: r.parse("id", SaleId::parse(&d.id))?,
                product_id: r.parse("product_id", ProductId::parse(&d.product_id))?,
                rules: SaleRules {
                    allocated: d.rules.allocated,
                    per_user_limit: d.rules.per_user_limit,
                    max_per_purchase: d.rules.max_per_purchase,
                    start: UnixMillis(d.rules.start),
                    end: UnixMillis(d.rules.end),
                    unit_price: d.rules.unit_price.read(&r)?,
                    hold_seconds: 0,
                    queue: None,
                },
                sold: d.sold,
                held: 0,
                status: r.named("status", &d.status, status_v0(&d.status))?,
                end_reason: r.end_reason(d.end_reason, end_reason_v0)?,
                ended_at: d.ended_at.map(UnixMillis),
                created_at: UnixMillis(d.created_at),
                generation: 0,
            });
        }
        let d: SaleV2 = r.document(bytes)?;
        Ok(SaleRecord {
            id: r.parse("id", SaleId::parse(&d.id))?,
            product_id: r.parse("product_id", ProductId::parse(&d.product_id))?,
            rules: SaleRules {
                allocated: d.allocated,
                per_user_limit: d.per_user_limit,
                max_per_purchase: d.max_per_purchase,
                start: UnixMillis(d.start),
                end: UnixMillis(d.end),
                unit_price: r.money(d.price_minor, &d.currency)?,
                hold_seconds: d.hold_seconds,
                queue: match d.queue {
                    None => None,
                    Some(q) => Some(r.parse(
                        "queue",
                        QueueRules::parse(
                            q.prequeue_seconds,
                            q.admit_per_second,
                            q.max_active_buyers,
                            q.admission_seconds,
                        ),
                    )?),
                },
            },
            sold: d.sold,
            held: d.held,
            status: r.named("status", &d.status, SaleStatus::parse(&d.status))?,
            end_reason: r.end_reason(d.end_reason, EndReason::parse)?,
            ended_at: d.ended_at.map(UnixMillis),
            created_at: UnixMillis(d.created_at),
            generation: d.generation,
        })
    }
}

// ---- orders ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct OrderV2 {
    v: u8,
    id: String,
    sale_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    price_minor: i64,
    currency: String,
    idempotency_key: String,
    created_at: i64,
    /// Absent in format 1 (CONFIRMED).
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    payment_reference: Option<String>,
    #[serde(default)]
    settled_at: Option<i64>,
}

/// Format 0: the price nested, its currency as three bytes.
#[derive(Deserialize)]
struct OrderV0 {
    id: String,
    sale_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    unit_price: MoneyV0,
    idempotency_key: String,
    created_at: i64,
}

impl OrderRecord {
    fn to_v2(&self) -> OrderV2 {
        OrderV2 {
            v: FORMAT,
            id: self.id.to_string(),
            sale_id: self.sale_id.to_string(),
            buyer_id: self.buyer_id.to_string(),
            buyer_name: self.buyer_name.to_string(),
            quantity: self.quantity,
            price_minor: self.unit_price.amount_minor,
            currency: self.unit_price.currency.as_str().to_owned(),
            idempotency_key: self.idempotency_key.as_str().to_owned(),
            created_at: self.created_at.0,
            status: Some(self.status.as_str().to_owned()),
            expires_at: self.expires_at.map(|t| t.0),
            payment_reference: self.payment_reference.clone(),
            settled_at: self.settled_at.map(|t| t.0),
        }
    }

    /// Format 1 and 2 (format 1 has no status: CONFIRMED).
    fn from_v2(r: &Reader<'_>, d: OrderV2) -> Result<Self, StoreError> {
        let unit_price = r.money(d.price_minor, &d.currency)?;
        Self::from_fields(r, d, unit_price)
    }

    fn from_fields(r: &Reader<'_>, d: OrderV2, unit_price: Money) -> Result<Self, StoreError> {
        let status = match d.status {
            None => OrderStatus::Confirmed,
            Some(raw) => r.named("status", &raw, OrderStatus::parse(&raw))?,
        };
        if d.quantity == 0 {
            return Err(r.corrupt("quantity", "an order of no units"));
        }
        Ok(OrderRecord {
            id: r.parse("id", OrderId::parse(&d.id))?,
            sale_id: r.parse("sale_id", SaleId::parse(&d.sale_id))?,
            buyer_id: r.parse("buyer_id", UserId::parse(&d.buyer_id))?,
            buyer_name: d.buyer_name.into(),
            quantity: d.quantity,
            unit_price,
            idempotency_key: r.parse("idempotency_key", IdempotencyKey::parse(&d.idempotency_key))?,
            created_at: UnixMillis(d.created_at),
            status,
            expires_at: d.expires_at.map(UnixMillis),
            payment_reference: d.payment_reference,
            settled_at: d.settled_at.map(UnixMillis),
        })
    }
}

impl Stored for OrderRecord {
    const TABLE: &'static str = "orders";

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&self.to_v2())
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let r = Reader { table: Self::TABLE, key };
        if r.version(bytes)? != 0 {
            return Self::from_v2(&r, r.document(bytes)?);
        }
        let d: OrderV0 = r.document(bytes)?;
        let price = d.unit_price.read(&r)?;
        let fields = OrderV2 {
            v: 0,
            id: d.id,
            sale_id: d.sale_id,
            buyer_id: d.buyer_id,
            buyer_name: d.buyer_name,
            quantity: d.quantity,
            price_minor: price.amount_minor,
            currency: price.currency.as_str().to_owned(),
            idempotency_key: d.idempotency_key,
            created_at: d.created_at,
            status: None,
            expires_at: None,
            payment_reference: None,
            settled_at: None,
        };
        Self::from_fields(&r, fields, price)
    }
}

// ---- order events ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct EventV2 {
    v: u8,
    kind: String,
    order: OrderV2,
}

/// An order event as the `order_events` table stores it (its key is the sequence).
pub(super) fn encode_event(kind: OrderEventKind, order: &OrderRecord) -> Result<Vec<u8>, StoreError> {
    encode(&EventV2 { v: FORMAT, kind: kind.as_str().to_owned(), order: order.to_v2() })
}

/// The sale of the event stored under `sequence`, read without the rest (the store's in-memory
/// index of events by sale is built from it at open).
pub(super) fn event_sale(sequence: u64, bytes: &[u8]) -> Result<SaleId, StoreError> {
    #[derive(Deserialize)]
    struct Event {
        order: Order,
    }
    #[derive(Deserialize)]
    struct Order {
        sale_id: String,
    }
    let key = sequence.to_string();
    let r = Reader { table: "order_events", key: &key };
    let event: Event = r.document(bytes)?;
    r.parse("order.sale_id", SaleId::parse(&event.order.sale_id))
}

/// The event stored under `sequence`.
pub(super) fn decode_event(sequence: u64, bytes: &[u8]) -> Result<OrderEvent, StoreError> {
    let key = sequence.to_string();
    let r = Reader { table: "order_events", key: &key };
    r.version(bytes)?;
    let d: EventV2 = r.document(bytes)?;
    let kind = r.named("kind", &d.kind, OrderEventKind::parse(&d.kind))?;
    Ok(OrderEvent { sequence, kind, order: OrderRecord::from_v2(&r, d.order)? })
}

// ---- waitlist ----------------------------------------------------------------------------------

/// A buyer's place in a sale's line (new in format 2), keyed by (sale, buyer).
#[derive(Serialize, Deserialize)]
struct WaitlistV2 {
    v: u8,
    order_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    joined_at: i64,
}

impl Stored for WaitlistEntry {
    const TABLE: &'static str = "waitlist";

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode(&WaitlistV2 {
            v: FORMAT,
            order_id: self.order_id.to_string(),
            buyer_id: self.buyer_id.to_string(),
            buyer_name: self.buyer_name.to_string(),
            quantity: self.quantity,
            joined_at: self.joined_at.0,
        })
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let r = Reader { table: Self::TABLE, key };
        r.version(bytes)?;
        let d: WaitlistV2 = r.document(bytes)?;
        if d.quantity == 0 {
            return Err(r.corrupt("quantity", "a place for no units"));
        }
        Ok(WaitlistEntry {
            order_id: r.parse("order_id", OrderId::parse(&d.order_id))?,
            buyer_id: r.parse("buyer_id", UserId::parse(&d.buyer_id))?,
            buyer_name: d.buyer_name.into(),
            quantity: d.quantity,
            joined_at: UnixMillis(d.joined_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale() -> SaleRecord {
        SaleRecord {
            id: SaleId::parse("s-1").unwrap(),
            product_id: ProductId::parse("p-1").unwrap(),
            rules: SaleRules {
                queue: None,
                allocated: 10,
                per_user_limit: 3,
                max_per_purchase: 2,
                start: UnixMillis(1_000),
                end: UnixMillis(2_000),
                unit_price: Money::parse(1999, "USD").unwrap(),
                hold_seconds: 0,
            },
            sold: 4,
            held: 0,
            status: SaleStatus::Ended,
            end_reason: Some(EndReason::SoldOut),
            ended_at: Some(UnixMillis(1_500)),
            created_at: UnixMillis(900),
            generation: 7,
        }
    }

    #[test]
    fn format_2_spells_names_as_the_api_does_and_reads_back() {
        let sale = SaleRecord { held: 2, rules: SaleRules { hold_seconds: 600, ..sale().rules }, ..sale() };
        let bytes = sale.encode().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 2);
        assert_eq!((json["hold_seconds"].as_u64(), json["held"].as_i64()), (Some(600), Some(2)));
        assert_eq!((json["status"].as_str(), json["end_reason"].as_str()), (Some("ENDED"), Some("SOLD_OUT")));
        assert_eq!(json["currency"], "USD");
        let back = SaleRecord::decode("s-1", &bytes).unwrap();
        assert_eq!(
            (back.rules, back.status, back.end_reason, back.generation, back.held),
            (sale.rules, sale.status, sale.end_reason, 7, 2)
        );
    }

    #[test]
    fn format_1_reads_as_a_sale_without_holds_and_confirmed_orders() {
        let sale = br#"{"v":1,"id":"s-1","product_id":"p-1","allocated":10,"per_user_limit":3,"max_per_purchase":2,
            "start":1000,"end":2000,"price_minor":1999,"currency":"USD","sold":4,"status":"ENDED",
            "end_reason":"SOLD_OUT","ended_at":1500,"created_at":900,"generation":7}"#;
        let back = SaleRecord::decode("s-1", sale).unwrap();
        assert_eq!((back.rules.hold_seconds, back.held, back.sold), (0, 0, 4));
        let order = br#"{"v":1,"id":"o-1","sale_id":"s-1","buyer_id":"u-1","buyer_name":"Ann","quantity":2,
            "price_minor":1999,"currency":"USD","idempotency_key":"k","created_at":950}"#;
        let back = OrderRecord::decode("o-1", order).unwrap();
        assert_eq!((back.status, back.expires_at, back.settled_at), (OrderStatus::Confirmed, None, None));
        let mut held: serde_json::Value = serde_json::from_slice(&back.encode().unwrap()).unwrap();
        held["status"] = "HELD".into();
        held["expires_at"] = 5_000.into();
        let back = OrderRecord::decode("o-1", held.to_string().as_bytes()).unwrap();
        assert_eq!((back.status, back.expires_at), (OrderStatus::Held, Some(UnixMillis(5_000))));
        held["status"] = "PAID?".into();
        assert!(OrderRecord::decode("o-1", held.to_string().as_bytes()).is_err());
    }

    #[test]
    fn format_0_is_still_read() {
        let v0 = br#"{"id":"s-1","product_id":"p-1","rules":{"allocated":10,"per_user_limit":3,"max_per_purchase":2,
            "start":1000,"end":2000,"unit_price":{"amount_minor":1999,"currency":[85,83,68]}},"sold":4,
            "status":"Ended","end_reason":"SoldOut","ended_at":1500,"created_at":900}"#;
        let back = SaleRecord::decode("s-1", v0).unwrap();
        let expected = sale();
        assert_eq!(
            (back.rules, back.status, back.end_reason, back.generation),
            (expected.rules, expected.status, expected.end_reason, 0)
        );
    }

    #[test]
    fn a_bad_stored_value_is_an_error_naming_table_key_and_field() {
        let mut json: serde_json::Value = serde_json::from_slice(&sale().encode().unwrap()).unwrap();
        json["status"] = "PAUSED".into();
        let error = SaleRecord::decode("s-1", json.to_string().as_bytes()).unwrap_err();
        let text = format!("{:?}", std::error::Error::source(&error).map(ToString::to_string));
        assert!(
            text.contains("sales") && text.contains("s-1") && text.contains("status") && text.contains("PAUSED"),
            "{text}"
        );
        json["status"] = "ACTIVE".into();
        json["currency"] = "usd".into();
        assert!(SaleRecord::decode("s-1", json.to_string().as_bytes()).is_err());
        json["currency"] = "USD".into();
        json["v"] = 9.into();
        assert!(SaleRecord::decode("s-1", json.to_string().as_bytes()).is_err(), "a newer format is refused");
    }
}
