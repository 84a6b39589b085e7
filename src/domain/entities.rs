//! The things the service keeps and shows: accounts, products, sales, orders and a sale's live
//! view, as plain values every layer passes around. How a store writes them is the store's own
//! format (`store/embedded/format.rs`, `store/mongo/documents.rs`, `store/redis`); these types
//! know nothing of it.

use std::sync::Arc;

use super::{
    DisplayName, Email, EndReason, IdempotencyKey, Leaderboard, LeaderboardEntry, Money, OrderId, OrderStatus,
    ProductId, Role, SaleId, SaleRules, SaleStatus, UnixMillis, UserId,
};

/// An account.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Id (`sub` of its tokens).
    pub id: UserId,
    /// Normalised email, unique.
    pub email: Email,
    /// Public name.
    pub display_name: DisplayName,
    /// Role.
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Creation time.
    pub created_at: UnixMillis,
}

/// A product.
#[derive(Debug, Clone)]
pub struct ProductRecord {
    /// Id.
    pub id: ProductId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Units not allocated to any sale.
    pub inventory: i64,
    /// Creation time.
    pub created_at: UnixMillis,
}

/// A sale.
#[derive(Debug, Clone)]
pub struct SaleRecord {
    /// Id.
    pub id: SaleId,
    /// The product the units came from.
    pub product_id: ProductId,
    /// Allocation, price, limits and window.
    pub rules: SaleRules,
    /// Units in durable orders that keep them: HELD or CONFIRMED (what the allocation bounds).
    pub sold: i64,
    /// Of `sold`, the units in HELD orders (waiting for payment).
    pub held: i64,
    /// Lifecycle status.
    pub status: SaleStatus,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// When it ended.
    pub ended_at: Option<UnixMillis>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// How many times the sale's hot state was built from the record (`RecordStore::next_generation`):
    /// each build numbers the sale's versions above every version an earlier build published.
    pub generation: u64,
}

/// The first version of a hot state built at `generation`: above every version of every earlier
/// build, which counted up from its own first version by at most 2^32 - 1 changes.
pub fn first_version(generation: u64) -> u64 {
    generation << 32
}

/// An order: a purchase made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// Id.
    pub id: OrderId,
    /// The sale.
    pub sale_id: SaleId,
    /// The buyer (token subject).
    pub buyer_id: UserId,
    /// The buyer's display name at purchase time (for leaderboards rebuilt from the record).
    pub buyer_name: Arc<str>,
    /// Units.
    pub quantity: u32,
    /// Price of one unit.
    pub unit_price: Money,
    /// The buyer's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// When the purchase was accepted.
    pub created_at: UnixMillis,
    /// HELD until paid in a sale with holds; CONFIRMED from the start otherwise.
    pub status: OrderStatus,
    /// When a HELD order expires; `None` for orders of sales without holds.
    pub expires_at: Option<UnixMillis>,
    /// The payment reference its confirm carried (ConfirmOrder).
    pub payment_reference: Option<String>,
    /// When it left HELD.
    pub settled_at: Option<UnixMillis>,
}

impl OrderRecord {
    /// When its units were bought for good: when a hold was paid, else when it was accepted
    /// (what the leaderboard's "first purchase" means).
    pub fn bought_at(&self) -> UnixMillis {
        self.settled_at.filter(|_| self.status == OrderStatus::Confirmed).unwrap_or(self.created_at)
    }
}

/// Why the record refuses one order of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitRefusal {
    /// The sale ended before the order reached the record.
    SaleEnded,
    /// The order would push sold past allocated.
    WouldOversell,
    /// An order with the same (buyer, sale, idempotency key) is already stored.
    Duplicate,
}

/// The record's answer for one order of a batch.
pub type CommitOutcome = Result<(), CommitRefusal>;

/// The record's decision for one order of a batch, the same on every record store, in this
/// order: an ended sale takes no order; no order may push the sale's units sold (`sold`: those
/// already stored, this batch's accepted ones included) past its allocation; a (buyer, sale,
/// key) stores one order (`key_taken`: stored already, or earlier in this batch).
pub fn judge_order(ended: bool, sold: i64, allocated: i64, quantity: u32, key_taken: bool) -> CommitOutcome {
    if ended {
        Err(CommitRefusal::SaleEnded)
    } else if sold + i64::from(quantity) > allocated {
        Err(CommitRefusal::WouldOversell)
    } else if key_taken {
        Err(CommitRefusal::Duplicate)
    } else {
        Ok(())
    }
}

/// The live public state of one sale, as feeds and GetSale show it.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleView {
    /// The sale.
    pub sale_id: SaleId,
    /// The product.
    pub product_id: ProductId,
    /// Increases with every change.
    pub version: u64,
    /// Rules.
    pub rules: SaleRules,
    /// Status.
    pub status: SaleStatus,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// When it ended.
    pub ended_at: Option<UnixMillis>,
    /// Units in durable HELD or CONFIRMED orders.
    pub sold: i64,
    /// Of `sold`, the units in HELD orders.
    pub held: i64,
    /// Units a new purchase may take (for an ended sale: allocated - sold, given back).
    pub remaining: i64,
    /// Buyers waiting in the sale's line.
    pub waitlist: u64,
    /// Units reserved by purchases (or given to the line) not yet durable or released.
    pub in_flight: i64,
    /// The top of the leaderboard (at most [`LEADERBOARD_MAX`] entries).
    pub leaderboard: Vec<LeaderboardEntry>,
    /// Distinct buyers.
    pub total_buyers: u64,
    /// When the sale was created.
    pub created_at: UnixMillis,
    /// The waiting room's counters (a sale with one; the hot stores leave it to the service).
    pub line: Option<super::LineCounts>,
}

/// The units a sale shows as remaining: while it is open, what a new purchase may take (`live`:
/// allocated - sold - units in flight); once it ended, the units it gave back to the product
/// (allocated - sold).
pub fn shown_remaining(status: SaleStatus, allocated: i64, sold: i64, live: i64) -> i64 {
    if status == SaleStatus::Ended {
        allocated - sold
    } else {
        live
    }
}

/// The most leaderboard entries a feed can ask for.
pub const LEADERBOARD_MAX: usize = 100;

/// A sale's counters rebuilt from its durable orders.
#[derive(Debug, Default)]
pub struct Tally {
    /// Buyers ranked by confirmed units.
    pub board: Leaderboard,
    /// Units each buyer holds (HELD or CONFIRMED), for the per-user limit.
    pub units: foldhash::HashMap<UserId, u32>,
    /// Units in HELD or CONFIRMED orders.
    pub sold: i64,
    /// Units in HELD orders.
    pub held: i64,
}

/// Rebuilds a sale's counters from its durable orders (oldest first): cancelled and expired
/// holds count for nothing, HELD ones count as sold and against the buyer's limit, and only
/// CONFIRMED ones rank on the leaderboard.
pub fn tally(orders: &[OrderRecord]) -> Tally {
    let mut tally = Tally::default();
    for order in orders.iter().filter(|o| o.status.takes_units()) {
        let units = i64::from(order.quantity);
        *tally.units.entry(order.buyer_id.clone()).or_insert(0u32) += order.quantity;
        tally.sold += units;
        if order.status == OrderStatus::Held {
            tally.held += units;
        } else {
            tally.board.record(&order.buyer_id, &order.buyer_name, units, order.bought_at());
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_judged_ended_then_oversell_then_duplicate() {
        assert_eq!(judge_order(false, 8, 10, 2, false), Ok(()));
        assert_eq!(judge_order(false, 9, 10, 2, false), Err(CommitRefusal::WouldOversell));
        assert_eq!(judge_order(true, 0, 10, 1, true), Err(CommitRefusal::SaleEnded));
        assert_eq!(judge_order(false, 10, 10, 1, true), Err(CommitRefusal::WouldOversell));
        assert_eq!(judge_order(false, 0, 10, 1, true), Err(CommitRefusal::Duplicate));
    }

    #[test]
    fn an_ended_sale_shows_what_it_gave_back() {
        assert_eq!(shown_remaining(SaleStatus::Active, 10, 3, 5), 5);
        assert_eq!(shown_remaining(SaleStatus::Ended, 10, 3, 0), 7);
    }

    #[test]
    fn tally_counts_units_per_buyer_and_ranks_them() {
        let order = |buyer: &str, quantity, at| OrderRecord {
            id: OrderId::generate(),
            sale_id: SaleId::parse("s").unwrap(),
            buyer_id: UserId::parse(buyer).unwrap(),
            buyer_name: buyer.into(),
            quantity,
            unit_price: Money::parse(1, "EUR").unwrap(),
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            created_at: UnixMillis(at),
            status: OrderStatus::Confirmed,
            expires_at: None,
            payment_reference: None,
            settled_at: None,
        };
        let held = OrderRecord { status: OrderStatus::Held, ..order("c", 2, 5) };
        let expired = OrderRecord { status: OrderStatus::Expired, ..order("c", 2, 6) };
        let tally = tally(&[held, expired, order("a", 1, 10), order("b", 2, 20), order("a", 1, 30)]);
        assert_eq!((tally.sold, tally.held), (6, 2));
        assert_eq!(tally.units[&UserId::parse("a").unwrap()], 2);
        assert_eq!(tally.units[&UserId::parse("c").unwrap()], 2);
        let top = tally.board.top(10);
        // Tied at 2 units: the earlier first purchase ranks first; the held order does not rank.
        assert_eq!(top.iter().map(|e| (e.display_name.as_ref(), e.units)).collect::<Vec<_>>(), [("a", 2), ("b", 2)]);
    }
}
