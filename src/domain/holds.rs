//! Checkout holds and the waitlist (sales with `hold_seconds` > 0).
//!
//! An order of such a sale is acknowledged HELD with a deadline; it then ends exactly once:
//! CONFIRMED (paid before the deadline), CANCELLED (by its buyer or an admin) or EXPIRED (the
//! deadline passed). A CANCELLED or EXPIRED hold gives its units back: first to the head of the
//! sale's waitlist, as a new hold for that buyer, then to open sale. The record decides each
//! end with [`judge_hold`], in the same transaction that writes it, so of a confirm racing the
//! expiry exactly one wins on every backend.

use std::sync::Arc;

use super::BuyerSnapshot;
use super::{
    IdempotencyKey, OrderId, OrderRecord, PurchaseRefusal, Quantity, SaleRules, SaleStatus, UnixMillis, UserId,
};

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Units taken, waiting for payment until `expires_at`.
    Held,
    /// Bought for good (every order of a sale without holds is CONFIRMED from the start).
    Confirmed,
    /// A hold its buyer or an admin cancelled; its units were given back.
    Cancelled,
    /// A hold whose deadline passed unpaid; its units were given back.
    Expired,
}

impl OrderStatus {
    /// The stable name stores and clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
        }
    }

    /// The status named by [`OrderStatus::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Held, Self::Confirmed, Self::Cancelled, Self::Expired].into_iter().find(|s| s.as_str() == name)
    }

    /// Whether an order in this status keeps its units (counted as sold and against the buyer's
    /// limit).
    pub fn takes_units(self) -> bool {
        matches!(self, Self::Held | Self::Confirmed)
    }
}

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// Paid: HELD -> CONFIRMED, allowed before the deadline only.
    Confirm,
    /// HELD -> CANCELLED, at any time.
    Cancel,
    /// HELD -> EXPIRED, at or after the deadline only.
    Expire,
}

impl HoldEnd {
    /// The status the order gets.
    pub fn status(self) -> OrderStatus {
        match self {
            Self::Confirm => OrderStatus::Confirmed,
            Self::Cancel => OrderStatus::Cancelled,
            Self::Expire => OrderStatus::Expired,
        }
    }

    /// Whether the hold's units go back (to the waitlist, then to open sale).
    pub fn gives_back(self) -> bool {
        !matches!(self, Self::Confirm)
    }
}

/// Why a hold did not end as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldRefusal {
    /// The order is not HELD (any more).
    #[error("the order is {}, not held", .0.as_str())]
    NotHeld(OrderStatus),
    /// A confirm at or after the deadline.
    #[error("the hold expired")]
    Expired,
    /// An expiry before the deadline.
    #[error("the hold has not expired yet")]
    NotDue,
}

/// The record's decision on ending a hold at `at`, the same on every record store.
pub fn judge_hold(order: &OrderRecord, end: HoldEnd, at: UnixMillis) -> Result<(), HoldRefusal> {
    if order.status != OrderStatus::Held {
        return Err(HoldRefusal::NotHeld(order.status));
    }
    let expired = order.expires_at.is_some_and(|deadline| at >= deadline);
    match end {
        HoldEnd::Confirm if expired => Err(HoldRefusal::Expired),
        HoldEnd::Expire if !expired => Err(HoldRefusal::NotDue),
        _ => Ok(()),
    }
}

/// `order` after `end` at `at` (judged by [`judge_hold`] first).
pub fn ended_hold(order: &OrderRecord, end: HoldEnd, at: UnixMillis, reference: Option<&str>) -> OrderRecord {
    OrderRecord {
        status: end.status(),
        settled_at: Some(at),
        payment_reference: reference.map(str::to_owned),
        ..order.clone()
    }
}

/// What an ended hold did to a sale's counters: `(sold, held)` changes, by the rules every
/// store applies (a confirmed hold stays sold; a given-back one leaves `sold`).
pub fn hold_counters(end: HoldEnd, quantity: u32) -> (i64, i64) {
    let units = i64::from(quantity);
    if end.gives_back() {
        (-units, -units)
    } else {
        (0, -units)
    }
}

/// A sale with holds is sold out once every allocated unit is confirmed: nothing held, nothing
/// left.
pub fn all_confirmed(allocated: i64, sold: i64, held: i64) -> bool {
    held == 0 && sold >= allocated
}

impl SaleRules {
    /// The status and deadline of a new order made at `now`: HELD until `now + hold_seconds`
    /// when the sale has holds, otherwise CONFIRMED with no deadline.
    pub fn new_order_terms(&self, now: UnixMillis) -> (OrderStatus, Option<UnixMillis>) {
        if self.hold_seconds == 0 {
            (OrderStatus::Confirmed, None)
        } else {
            (OrderStatus::Held, Some(UnixMillis(now.0.saturating_add(i64::from(self.hold_seconds) * 1000))))
        }
    }
}

/// A buyer waiting in a sale's line for units given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitlistEntry {
    /// The id the buyer's hold gets when the line serves them (chosen when they join, so every
    /// store serves an entry with the same id, and a served entry's order is found by it).
    pub order_id: OrderId,
    /// The buyer.
    pub buyer_id: UserId,
    /// Their display name.
    pub buyer_name: Arc<str>,
    /// Units they wait for (all or nothing).
    pub quantity: u32,
    /// When they joined.
    pub joined_at: UnixMillis,
}

impl WaitlistEntry {
    /// The hold the line gives this buyer at `now`: a new order, HELD for the sale's hold time,
    /// with the idempotency key `waitlist-<order id>`.
    pub fn served(&self, sale: &super::SaleId, rules: &SaleRules, now: UnixMillis) -> OrderRecord {
        let (status, expires_at) = rules.new_order_terms(now);
        OrderRecord {
            id: self.order_id.clone(),
            sale_id: sale.clone(),
            buyer_id: self.buyer_id.clone(),
            buyer_name: self.buyer_name.clone(),
            quantity: self.quantity,
            unit_price: rules.unit_price,
            idempotency_key: waitlist_key(&self.order_id),
            created_at: now,
            status,
            expires_at,
            payment_reference: None,
            settled_at: None,
        }
    }
}

/// The idempotency key of the hold a waitlist entry becomes.
pub fn waitlist_key(order: &OrderId) -> IdempotencyKey {
    IdempotencyKey::parse(&format!("waitlist-{order}")).expect("an order id is printable ASCII")
}

/// A buyer's place in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitlistPlace {
    /// 1 for the head of the line.
    pub position: u64,
    /// Units they wait for.
    pub quantity: u32,
    /// Buyers in the line, them included.
    pub length: u64,
}

/// The live facts a join is checked against, read atomically with the buyer's entry.
#[derive(Debug, Clone, Copy)]
pub struct LineSnapshot {
    /// The sale's counters and the buyer's units, as a purchase sees them.
    pub buyer: BuyerSnapshot,
    /// Units that may still come back: held, or in flight.
    pub outstanding: i64,
}

/// Applies the rules of joining a sale's waitlist: the sale has holds; it is open (as for a
/// purchase); the quantity is valid; the buyer's units + quantity stay within the limit; no
/// unit is on sale (buy it instead); some units may still come back (otherwise it is sold out).
pub fn check_join(
    rules: &SaleRules,
    live: LineSnapshot,
    now: UnixMillis,
    quantity: u32,
) -> Result<Quantity, PurchaseRefusal> {
    if rules.hold_seconds == 0 {
        return Err(PurchaseRefusal::NoWaitlist);
    }
    // The purchase rules with "nothing left" set aside: they refuse exactly as a purchase would.
    let open = BuyerSnapshot { remaining: i64::from(quantity.max(1)), ..live.buyer };
    let quantity = super::check_purchase(rules, open, now, quantity)?;
    if live.buyer.remaining > 0 {
        return Err(PurchaseRefusal::UnitsOnSale { remaining: live.buyer.remaining });
    }
    if live.outstanding <= 0 {
        return Err(PurchaseRefusal::SoldOut);
    }
    Ok(quantity)
}

/// Units given back while buyers wait: the line is served from its head, each entry all or
/// nothing. Returns the entries served, in order, and the units left over; an entry that can
/// never be served (it wants more than the spare units and all that may still come back) is
/// dropped and returned in `dropped`. Left-over units return to open sale only when
/// the line is empty. Every store runs this same walk (Redis in Lua, mirroring it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// Entries served, in line order.
    pub served: Vec<WaitlistEntry>,
    /// Entries removed because they can never be served.
    pub dropped: Vec<WaitlistEntry>,
    /// Units still waiting for the head of the line.
    pub spare: i64,
    /// Units that go back to open sale.
    pub to_sale: i64,
}

/// Serves `line` (front first) with `spare` units; `outstanding` units (held or in flight,
/// before this hand-over) may still come back. Removes served and dropped entries from `line`.
pub fn hand_over(
    line: &mut std::collections::VecDeque<WaitlistEntry>,
    spare: i64,
    outstanding: i64,
    status: SaleStatus,
) -> Handover {
    let mut result = Handover { spare, ..Handover::default() };
    if status == SaleStatus::Ended {
        result.to_sale = std::mem::take(&mut result.spare);
        return result;
    }
    let mut outstanding = outstanding;
    while let Some(head) = line.front() {
        let wanted = i64::from(head.quantity);
        if wanted <= result.spare {
            result.spare -= wanted;
            outstanding += wanted;
            result.served.push(line.pop_front().expect("the head was just seen"));
        } else if result.spare + outstanding < wanted {
            result.dropped.push(line.pop_front().expect("the head was just seen"));
        } else {
            break;
        }
    }
    if line.is_empty() {
        result.to_sale = std::mem::take(&mut result.spare);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Money, SaleId};

    fn rules(hold_seconds: u32) -> SaleRules {
        SaleRules {
            queue: None,
            allocated: 4,
            per_user_limit: 2,
            max_per_purchase: 2,
            start: UnixMillis(0),
            end: UnixMillis(10_000),
            unit_price: Money::parse(100, "EUR").unwrap(),
            hold_seconds,
        }
    }

    fn order(status: OrderStatus, expires_at: i64) -> OrderRecord {
        OrderRecord {
            id: OrderId::generate(),
            sale_id: SaleId::parse("s").unwrap(),
            buyer_id: UserId::parse("ann").unwrap(),
            buyer_name: "Ann".into(),
            quantity: 1,
            unit_price: Money::parse(100, "EUR").unwrap(),
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            created_at: UnixMillis(0),
            status,
            expires_at: Some(UnixMillis(expires_at)),
            payment_reference: None,
            settled_at: None,
        }
    }

    fn entry(buyer: &str, quantity: u32) -> WaitlistEntry {
        WaitlistEntry {
            order_id: OrderId::generate(),
            buyer_id: UserId::parse(buyer).unwrap(),
            buyer_name: buyer.into(),
            quantity,
            joined_at: UnixMillis(1),
        }
    }

    #[test]
    fn a_hold_is_confirmed_before_its_deadline_and_expires_at_it() {
        let held = order(OrderStatus::Held, 500);
        assert_eq!(judge_hold(&held, HoldEnd::Confirm, UnixMillis(499)), Ok(()));
        assert_eq!(judge_hold(&held, HoldEnd::Confirm, UnixMillis(500)), Err(HoldRefusal::Expired));
        assert_eq!(judge_hold(&held, HoldEnd::Expire, UnixMillis(499)), Err(HoldRefusal::NotDue));
        assert_eq!(judge_hold(&held, HoldEnd::Expire, UnixMillis(500)), Ok(()));
        assert_eq!(judge_hold(&held, HoldEnd::Cancel, UnixMillis(10_000)), Ok(()));
        let expired = ended_hold(&held, HoldEnd::Expire, UnixMillis(500), None);
        assert_eq!(
            judge_hold(&expired, HoldEnd::Confirm, UnixMillis(1)),
            Err(HoldRefusal::NotHeld(OrderStatus::Expired))
        );
        let paid = ended_hold(&held, HoldEnd::Confirm, UnixMillis(10), Some("pay-1"));
        assert_eq!((paid.status, paid.payment_reference.as_deref()), (OrderStatus::Confirmed, Some("pay-1")));
    }

    #[test]
    fn given_back_units_leave_sold_confirmed_ones_stay() {
        assert_eq!(hold_counters(HoldEnd::Confirm, 2), (0, -2));
        assert_eq!(hold_counters(HoldEnd::Expire, 2), (-2, -2));
        assert!(all_confirmed(4, 4, 0));
        assert!(!all_confirmed(4, 4, 1));
    }

    #[test]
    fn new_orders_are_held_only_in_sales_with_holds() {
        assert_eq!(rules(0).new_order_terms(UnixMillis(5)), (OrderStatus::Confirmed, None));
        assert_eq!(rules(60).new_order_terms(UnixMillis(5)), (OrderStatus::Held, Some(UnixMillis(60_005))));
    }

    #[test]
    fn joining_needs_holds_an_empty_sale_and_units_that_may_come_back() {
        let live = |remaining, outstanding, bought| LineSnapshot {
            buyer: BuyerSnapshot { status: SaleStatus::Active, end_reason: None, remaining, bought },
            outstanding,
        };
        let now = UnixMillis(10);
        assert_eq!(check_join(&rules(0), live(0, 3, 0), now, 1), Err(PurchaseRefusal::NoWaitlist));
        assert_eq!(check_join(&rules(60), live(2, 3, 0), now, 1), Err(PurchaseRefusal::UnitsOnSale { remaining: 2 }));
        assert_eq!(check_join(&rules(60), live(0, 0, 0), now, 1), Err(PurchaseRefusal::SoldOut));
        assert_eq!(
            check_join(&rules(60), live(0, 3, 2), now, 1),
            Err(PurchaseRefusal::UserLimitReached { limit: 2, bought: 2 })
        );
        assert!(matches!(check_join(&rules(60), live(0, 3, 0), now, 3), Err(PurchaseRefusal::InvalidQuantity(_))));
        assert_eq!(check_join(&rules(60), live(0, 3, 0), now, 2).unwrap().get(), 2);
        assert!(matches!(
            check_join(&rules(60), live(0, 3, 0), UnixMillis(10_000), 1),
            Err(PurchaseRefusal::Ended { .. })
        ));
    }

    #[test]
    fn the_line_is_served_in_order_and_spare_units_wait_for_its_head() {
        let mut line: std::collections::VecDeque<_> = [entry("a", 2), entry("b", 1)].into();
        // One unit back, the head wants two, more may come: the unit waits for the head.
        let first = hand_over(&mut line, 1, 3, SaleStatus::Active);
        assert_eq!((first.served.len(), first.spare, first.to_sale), (0, 1, 0));
        // Another: the head is served, then b waits with nothing spare.
        let second = hand_over(&mut line, first.spare + 1, 2, SaleStatus::Active);
        assert_eq!(second.served.iter().map(|e| e.buyer_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!((second.spare, second.to_sale, line.len()), (0, 0, 1));
        // Two more: b takes one, the line is empty, one goes back on sale.
        let third = hand_over(&mut line, 2, 2, SaleStatus::Active);
        assert_eq!((third.served.len(), third.spare, third.to_sale), (1, 0, 1));
    }

    #[test]
    fn a_head_that_can_never_be_served_is_dropped() {
        let mut line: std::collections::VecDeque<_> = [entry("a", 2), entry("b", 1)].into();
        let result = hand_over(&mut line, 1, 0, SaleStatus::Active);
        assert_eq!(result.dropped.iter().map(|e| e.buyer_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(result.served.iter().map(|e| e.buyer_id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!((result.spare, result.to_sale), (0, 0));
    }

    #[test]
    fn a_head_that_wants_more_than_could_ever_come_back_is_dropped() {
        let mut line: std::collections::VecDeque<_> = [entry("a", 3), entry("b", 2)].into();
        // One spare, one more may come back: a (3) can never be served, b (2) waits.
        let result = hand_over(&mut line, 1, 1, SaleStatus::Active);
        assert_eq!(result.dropped.iter().map(|e| e.buyer_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!((result.served.len(), result.spare, line.len()), (0, 1, 1));
    }

    #[test]
    fn an_ended_sale_serves_nobody() {
        let mut line: std::collections::VecDeque<_> = [entry("a", 1)].into();
        let result = hand_over(&mut line, 1, 0, SaleStatus::Ended);
        assert!(result.served.is_empty());
        assert_eq!(result.to_sale, 1);
    }

    #[test]
    fn a_served_entry_becomes_a_hold_with_its_own_deadline() {
        let waiting = entry("a", 2);
        let sale = SaleId::parse("s").unwrap();
        let hold = waiting.served(&sale, &rules(30), UnixMillis(1_000));
        assert_eq!((hold.status, hold.expires_at, hold.quantity), (OrderStatus::Held, Some(UnixMillis(31_000)), 2));
        assert_eq!(hold.idempotency_key.as_str(), format!("waitlist-{}", waiting.order_id));
        assert_eq!(hold.id, waiting.order_id);
    }

    #[test]
    fn status_names_round_trip() {
        for s in [OrderStatus::Held, OrderStatus::Confirmed, OrderStatus::Cancelled, OrderStatus::Expired] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }
}
