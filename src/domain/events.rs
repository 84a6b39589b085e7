//! Order events: each change of an order (created; with holds: confirmed, cancelled, expired),
//! numbered in the record's commit order. The record writes them in the transaction that makes
//! the change, and the order feed (WatchOrders) reads them back from a consumer's cursor.

use super::{OrderRecord, OrderStatus, UnixMillis};

/// What changed an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEventKind {
    /// Made durable (HELD in a sale with holds, CONFIRMED otherwise).
    Created,
    /// A hold was paid.
    Confirmed,
    /// A hold was cancelled.
    Cancelled,
    /// A hold reached its deadline unpaid.
    Expired,
}

impl OrderEventKind {
    const ALL: [Self; 4] = [Self::Created, Self::Confirmed, Self::Cancelled, Self::Expired];

    /// The stable name stores and clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
        }
    }

    /// The kind named by [`OrderEventKind::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The event of a hold that ended in `status`; `None` for a status no hold ends in.
    pub fn of_hold_end(status: OrderStatus) -> Option<Self> {
        match status {
            OrderStatus::Confirmed => Some(Self::Confirmed),
            OrderStatus::Cancelled => Some(Self::Cancelled),
            OrderStatus::Expired => Some(Self::Expired),
            OrderStatus::Held => None,
        }
    }
}

/// One change of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// Its place in the record's commit order: 1, 2, 3... without gaps, across every sale.
    pub sequence: u64,
    /// What happened.
    pub kind: OrderEventKind,
    /// The order as the change left it.
    pub order: OrderRecord,
}

impl OrderEvent {
    /// When it happened: the order's creation, or its settlement for a hold's end.
    pub fn at(&self) -> UnixMillis {
        match self.kind {
            OrderEventKind::Created => self.order.created_at,
            _ => self.order.settled_at.unwrap_or(self.order.created_at),
        }
    }
}

/// Events read after a cursor, with where the record's events start and end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsPage {
    /// The events after the cursor, in sequence order (of one sale when asked).
    pub events: Vec<OrderEvent>,
    /// The oldest event kept (older ones were pruned); `None` when none is kept.
    pub oldest: Option<u64>,
    /// The newest sequence ever written; 0 before the first event.
    pub head: u64,
    /// The highest sequence this read looked at (at least the cursor): a one-sale read skips
    /// other sales' events, and the next read goes on after it.
    pub scanned: u64,
}

/// Why a cursor cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorProblem {
    /// Events right after it were pruned: following it would miss them.
    Expired {
        /// The oldest event kept (0 when none is).
        oldest: u64,
        /// The newest sequence written.
        head: u64,
    },
    /// It is beyond every event written: another record's cursor.
    Unknown {
        /// The newest sequence written.
        head: u64,
    },
}

/// Whether following from `after` (the last sequence a consumer handled) misses nothing. 0 is
/// a new consumer's: it starts from the oldest event kept, whatever was pruned before.
pub fn check_cursor(after: u64, oldest: Option<u64>, head: u64) -> Result<(), CursorProblem> {
    if after > head {
        return Err(CursorProblem::Unknown { head });
    }
    if after == 0 {
        return Ok(());
    }
    let first_missing = after + 1;
    match oldest {
        // Nothing is kept: fine only if nothing came after the cursor.
        None if after < head => Err(CursorProblem::Expired { oldest: 0, head }),
        Some(oldest) if first_missing < oldest => Err(CursorProblem::Expired { oldest, head }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_followed_only_when_nothing_after_it_was_pruned() {
        // Nothing ever written.
        assert_eq!(check_cursor(0, None, 0), Ok(()));
        // Events 1..=10 kept.
        assert_eq!(check_cursor(0, Some(1), 10), Ok(()));
        assert_eq!(check_cursor(10, Some(1), 10), Ok(()));
        assert_eq!(check_cursor(11, Some(1), 10), Err(CursorProblem::Unknown { head: 10 }));
        // Events 5..=10 kept: a cursor at 4 misses nothing, at 3 it would miss 4.
        assert_eq!(check_cursor(4, Some(5), 10), Ok(()));
        assert_eq!(check_cursor(3, Some(5), 10), Err(CursorProblem::Expired { oldest: 5, head: 10 }));
        assert_eq!(check_cursor(1, Some(5), 10), Err(CursorProblem::Expired { oldest: 5, head: 10 }));
        // A new consumer starts from the oldest kept.
        assert_eq!(check_cursor(0, Some(5), 10), Ok(()));
        assert_eq!(check_cursor(0, None, 10), Ok(()));
        // Everything pruned: only a cursor at the head can go on.
        assert_eq!(check_cursor(10, None, 10), Ok(()));
        assert_eq!(check_cursor(9, None, 10), Err(CursorProblem::Expired { oldest: 0, head: 10 }));
    }

    #[test]
    fn kinds_have_stable_names() {
        for kind in OrderEventKind::ALL {
            assert_eq!(OrderEventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(OrderEventKind::of_hold_end(OrderStatus::Held), None);
        assert_eq!(OrderEventKind::of_hold_end(OrderStatus::Expired), Some(OrderEventKind::Expired));
    }
}
