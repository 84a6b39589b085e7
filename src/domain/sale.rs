//! Sale rules and the lifecycle state machine: SCHEDULED -> ACTIVE -> ENDED.

use super::{FieldViolation, Money, Quantity, UnixMillis};

/// Where a sale is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleStatus {
    /// Waiting for its start time.
    Scheduled,
    /// Open while now is inside [start, end).
    Active,
    /// Closed for good.
    Ended,
}

/// Why a sale ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Every allocated unit was sold.
    SoldOut,
    /// The end time passed.
    TimeUp,
    /// An admin ended it.
    ByAdmin,
}

impl SaleStatus {
    /// The stable name stores and clients see: "SCHEDULED", "ACTIVE" or "ENDED".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Active => "ACTIVE",
            Self::Ended => "ENDED",
        }
    }

    /// The status named by [`SaleStatus::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Scheduled, Self::Active, Self::Ended].into_iter().find(|s| s.as_str() == name)
    }
}

impl EndReason {
    /// The stable name stores and clients see: "SOLD_OUT", "TIME_UP" or "BY_ADMIN".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoldOut => "SOLD_OUT",
            Self::TimeUp => "TIME_UP",
            Self::ByAdmin => "BY_ADMIN",
        }
    }

    /// The reason named by [`EndReason::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::SoldOut, Self::TimeUp, Self::ByAdmin].into_iter().find(|r| r.as_str() == name)
    }
}

/// What a sale promises, fixed at creation (only `start` moves, when an admin starts it early).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRules {
    /// Units put on sale.
    pub allocated: i64,
    /// Most units one buyer may hold; 0 means unlimited.
    pub per_user_limit: u32,
    /// Most units one purchase may ask for.
    pub max_per_purchase: u32,
    /// Opens at (inclusive).
    pub start: UnixMillis,
    /// Closes at (exclusive).
    pub end: UnixMillis,
    /// Price of one unit.
    pub unit_price: Money,
    /// How long a new order is HELD for payment before it expires; 0: orders are CONFIRMED at
    /// once (no holds, no waitlist).
    pub hold_seconds: u32,
    /// The sale's waiting room; `None`: buyers purchase directly.
    pub queue: Option<super::QueueRules>,
}

/// Why a purchase was refused. Each maps to one error reason of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurchaseRefusal {
    /// No such sale.
    #[error("sale not found")]
    SaleNotFound,
    /// Before the start time (or not yet started by the scheduler).
    #[error("the sale has not started")]
    NotStarted {
        /// When it opens.
        start: UnixMillis,
    },
    /// After the end.
    #[error("the sale has ended")]
    Ended {
        /// Why it ended.
        reason: EndReason,
    },
    /// The quantity is outside 1..=max_per_purchase.
    #[error("invalid quantity: {0}")]
    InvalidQuantity(FieldViolation),
    /// The buyer would hold more than the per-user limit.
    #[error("per-user limit of {limit} reached ({bought} bought)")]
    UserLimitReached {
        /// The sale's per-user limit.
        limit: u32,
        /// Units the buyer already holds or has in flight.
        bought: u32,
    },
    /// Nothing left.
    #[error("sold out")]
    SoldOut,
    /// Fewer units left than asked for.
    #[error("only {remaining} units left")]
    InsufficientStock {
        /// Units left.
        remaining: i64,
    },
    /// The idempotency key was used before with other parameters.
    #[error("idempotency key reused with different parameters")]
    IdempotencyKeyReused,
    /// JoinWaitlist on a sale without holds (no unit can come back).
    #[error("the sale has no holds, so no waitlist")]
    NoWaitlist,
    /// JoinWaitlist while units are on sale: buy them instead.
    #[error("{remaining} units are on sale: buy them instead of waiting")]
    UnitsOnSale {
        /// Units on sale.
        remaining: i64,
    },
}

/// The live facts a purchase is checked against, read atomically with the buyer's count.
#[derive(Debug, Clone, Copy)]
pub struct BuyerSnapshot {
    /// Lifecycle status.
    pub status: SaleStatus,
    /// Why it ended, when it has.
    pub end_reason: Option<EndReason>,
    /// Units a new purchase may take.
    pub remaining: i64,
    /// Units this buyer holds or has in flight.
    pub bought: u32,
}

/// Applies purchase rules 1-4 of the design in order: window, quantity, per-user limit, stock.
/// Pure: the caller holds whatever makes the check and the following write atomic.
pub fn check_purchase(
    rules: &SaleRules,
    live: BuyerSnapshot,
    now: UnixMillis,
    quantity: u32,
) -> Result<Quantity, PurchaseRefusal> {
    match live.status {
        // A sale that ended because it sold out says so: that is what its buyers need to hear.
        SaleStatus::Ended if live.end_reason == Some(EndReason::SoldOut) => return Err(PurchaseRefusal::SoldOut),
        SaleStatus::Ended => {
            return Err(PurchaseRefusal::Ended { reason: live.end_reason.unwrap_or(EndReason::TimeUp) })
        }
        SaleStatus::Scheduled => return Err(PurchaseRefusal::NotStarted { start: rules.start }),
        SaleStatus::Active if now < rules.start => return Err(PurchaseRefusal::NotStarted { start: rules.start }),
        SaleStatus::Active if now >= rules.end => return Err(PurchaseRefusal::Ended { reason: EndReason::TimeUp }),
        SaleStatus::Active => {}
    }
    let quantity = Quantity::parse(quantity, rules.max_per_purchase).map_err(PurchaseRefusal::InvalidQuantity)?;
    if rules.per_user_limit != 0 && u64::from(live.bought) + u64::from(quantity.get()) > u64::from(rules.per_user_limit)
    {
        return Err(PurchaseRefusal::UserLimitReached { limit: rules.per_user_limit, bought: live.bought });
    }
    if live.remaining <= 0 {
        return Err(PurchaseRefusal::SoldOut);
    }
    if i64::from(quantity.get()) > live.remaining {
        return Err(PurchaseRefusal::InsufficientStock { remaining: live.remaining });
    }
    Ok(quantity)
}

/// A time-driven step of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// SCHEDULED -> ACTIVE.
    Activate,
    /// -> ENDED with TIME_UP.
    TimeUp,
}

impl SaleRules {
    /// The transition due at `now` for a sale in `status`, if any.
    pub fn due_transition(&self, status: SaleStatus, now: UnixMillis) -> Option<Transition> {
        match status {
            SaleStatus::Ended => None,
            _ if now >= self.end => Some(Transition::TimeUp),
            SaleStatus::Scheduled if now >= self.start => Some(Transition::Activate),
            _ => None,
        }
    }

    /// When the next time-driven transition of a sale in `status` is due.
    pub fn next_deadline(&self, status: SaleStatus) -> Option<UnixMillis> {
        match status {
            SaleStatus::Scheduled => Some(self.start.min(self.end)),
            SaleStatus::Active => Some(self.end),
            SaleStatus::Ended => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SaleRules {
        SaleRules {
            allocated: 10,
            per_user_limit: 3,
            max_per_purchase: 2,
            start: UnixMillis(100),
            end: UnixMillis(200),
            unit_price: Money::parse(500, "USD").unwrap(),
            hold_seconds: 0,
            queue: None,
        }
    }

    fn live(remaining: i64, bought: u32) -> BuyerSnapshot {
        BuyerSnapshot { status: SaleStatus::Active, end_reason: None, remaining, bought }
    }

    #[test]
    fn window_is_start_inclusive_end_exclusive() {
        let r = rules();
        assert!(matches!(check_purchase(&r, live(10, 0), UnixMillis(99), 1), Err(PurchaseRefusal::NotStarted { .. })));
        assert!(check_purchase(&r, live(10, 0), UnixMillis(100), 1).is_ok());
        assert!(check_purchase(&r, live(10, 0), UnixMillis(199), 1).is_ok());
        assert_eq!(
            check_purchase(&r, live(10, 0), UnixMillis(200), 1),
            Err(PurchaseRefusal::Ended { reason: EndReason::TimeUp })
        );
        let scheduled = BuyerSnapshot { status: SaleStatus::Scheduled, ..live(10, 0) };
        assert!(matches!(check_purchase(&r, scheduled, UnixMillis(150), 1), Err(PurchaseRefusal::NotStarted { .. })));
        let ended = BuyerSnapshot { status: SaleStatus::Ended, end_reason: Some(EndReason::ByAdmin), ..live(5, 0) };
        assert_eq!(
            check_purchase(&r, ended, UnixMillis(150), 1),
            Err(PurchaseRefusal::Ended { reason: EndReason::ByAdmin })
        );
        let sold_out = BuyerSnapshot { status: SaleStatus::Ended, end_reason: Some(EndReason::SoldOut), ..live(0, 0) };
        assert_eq!(check_purchase(&r, sold_out, UnixMillis(150), 1), Err(PurchaseRefusal::SoldOut));
    }

    #[test]
    fn rules_apply_in_order_quantity_limit_stock() {
        let r = rules();
        let now = UnixMillis(150);
        assert!(matches!(check_purchase(&r, live(10, 0), now, 0), Err(PurchaseRefusal::InvalidQuantity(_))));
        assert!(matches!(check_purchase(&r, live(10, 0), now, 3), Err(PurchaseRefusal::InvalidQuantity(_))));
        assert_eq!(
            check_purchase(&r, live(0, 2), now, 2),
            Err(PurchaseRefusal::UserLimitReached { limit: 3, bought: 2 })
        );
        assert_eq!(check_purchase(&r, live(0, 0), now, 1), Err(PurchaseRefusal::SoldOut));
        assert_eq!(check_purchase(&r, live(1, 0), now, 2), Err(PurchaseRefusal::InsufficientStock { remaining: 1 }));
        assert_eq!(check_purchase(&r, live(2, 1), now, 2).unwrap().get(), 2);
    }

    #[test]
    fn zero_limit_means_unlimited() {
        let r = SaleRules { per_user_limit: 0, ..rules() };
        assert!(check_purchase(&r, live(10, 1_000_000), UnixMillis(150), 2).is_ok());
    }

    #[test]
    fn status_and_reason_names_round_trip() {
        for status in [SaleStatus::Scheduled, SaleStatus::Active, SaleStatus::Ended] {
            assert_eq!(SaleStatus::parse(status.as_str()), Some(status));
        }
        for reason in [EndReason::SoldOut, EndReason::TimeUp, EndReason::ByAdmin] {
            assert_eq!(EndReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(EndReason::SoldOut.as_str(), "SOLD_OUT");
        assert_eq!(SaleStatus::parse("sold"), None);
    }

    #[test]
    fn transitions_follow_the_clock() {
        let r = rules();
        assert_eq!(r.due_transition(SaleStatus::Scheduled, UnixMillis(99)), None);
        assert_eq!(r.due_transition(SaleStatus::Scheduled, UnixMillis(100)), Some(Transition::Activate));
        assert_eq!(r.due_transition(SaleStatus::Scheduled, UnixMillis(200)), Some(Transition::TimeUp));
        assert_eq!(r.due_transition(SaleStatus::Active, UnixMillis(199)), None);
        assert_eq!(r.due_transition(SaleStatus::Active, UnixMillis(200)), Some(Transition::TimeUp));
        assert_eq!(r.due_transition(SaleStatus::Ended, UnixMillis(500)), None);
        assert_eq!(r.next_deadline(SaleStatus::Scheduled), Some(UnixMillis(100)));
        assert_eq!(r.next_deadline(SaleStatus::Active), Some(UnixMillis(200)));
    }
}
