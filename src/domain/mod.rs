//! The pure core: identifiers and validated values, the entities every layer passes around
//! (accounts, products, sales, orders, a sale's live view), sale rules and lifecycle, the
//! record's decision on an order, leaderboard ordering. Nothing here knows about gRPC, storage
//! or the runtime.

mod entities;
mod events;
mod holds;
mod ids;
mod leaderboard;
mod queue;
mod sale;
mod values;

pub use entities::{
    first_version, judge_order, shown_remaining, tally, CommitOutcome, CommitRefusal, OrderRecord, ProductRecord,
    SaleRecord, SaleView, Tally, UserRecord, LEADERBOARD_MAX,
};
pub use events::{check_cursor, CursorProblem, EventsPage, OrderEvent, OrderEventKind};
pub use holds::{
    all_confirmed, check_join, ended_hold, hand_over, hold_counters, judge_hold, waitlist_key, Handover, HoldEnd,
    HoldRefusal, LineSnapshot, OrderStatus, WaitlistEntry, WaitlistPlace,
};
pub use ids::{OrderId, ProductId, SaleId, UserId};
pub use leaderboard::{BuyerStanding, Leaderboard, LeaderboardEntry};
pub use queue::{
    refill, shuffle_score, AdmitAsk, Line, LineCounts, Place, QueueRules, DEFAULT_ADMISSION_SECONDS, PREQUEUE_SPAN,
};
pub use sale::{check_purchase, BuyerSnapshot, EndReason, PurchaseRefusal, SaleRules, SaleStatus, Transition};
pub use values::{Currency, DisplayName, Email, IdempotencyKey, Money, Password, Quantity, Role, UnixMillis};

/// A field that failed validation: which one, and why (for `google.rpc.BadRequest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    /// The request field's name, as in the proto.
    pub field: &'static str,
    /// What is wrong with it, for humans.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self { field, description: description.into() }
    }
}
