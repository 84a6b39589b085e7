//! Backends. Two traits split the work the way a many-node deployment needs it:
//!
//! - [`HotStore`]: the hot path of one sale (remaining stock, per-buyer units, idempotency keys,
//!   leaderboard). `reserve` applies every purchase rule and reserves in one atomic step (a
//!   per-sale mutex in process; one Lua script in Redis). Reservations are then confirmed once
//!   the order is durable, or released.
//! - [`RecordStore`]: the durable record (users, products, inventory, sales, orders). Orders
//!   arrive in batches (group commit), and the record refuses any order that would push a sale's
//!   sold count past its allocation or that arrives after the sale ended, whatever the hot state
//!   believes.
//!
//! - [`QueueStore`]: the waiting rooms of sales with `queue` on (one line per sale, shared by
//!   every node in Redis), see [`crate::domain::Line`].
//!
//! [`embedded`] implements both in one process: the hot state in memory, the record in redb.
//! [`redis`] (one Lua script per step of a purchase, keys hash-tagged per sale) and [`mongo`]
//! (multi-document transactions) are the production backends shared by many nodes.

pub mod embedded;
pub mod mongo;
pub mod redis;

use async_trait::async_trait;

use crate::domain::{
    AdmitAsk, CommitOutcome, Email, EndReason, EventsPage, HoldEnd, HoldRefusal, IdempotencyKey, LineCounts, OrderId,
    OrderRecord, OrderStatus, Place, ProductId, ProductRecord, PurchaseRefusal, SaleId, SaleRecord, SaleStatus,
    SaleView, UnixMillis, UserId, UserRecord, WaitlistEntry, WaitlistPlace,
};

/// What ending a hold did in the record: the order after the change, or why nothing changed
/// with the order as it stands.
pub type HoldOutcome = Result<OrderRecord, (HoldRefusal, OrderRecord)>;

/// One hold to end (`RecordStore::end_holds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldChange {
    /// The order.
    pub id: OrderId,
    /// How it ends.
    pub end: HoldEnd,
    /// When (the domain's `judge_hold` decides with it).
    pub at: UnixMillis,
    /// A confirm's payment reference.
    pub reference: Option<String>,
}

/// Which orders a listing wants (`RecordStore::orders_page`). Orders are listed by id, which
/// grows with creation time (UUIDv7), so a page ends at an id and the next starts after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only this sale's.
    pub sale: Option<SaleId>,
    /// Only this buyer's.
    pub buyer: Option<UserId>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only orders created at or after this time.
    pub created_after: Option<UnixMillis>,
}

impl OrderFilter {
    /// Whether `order` passes.
    pub fn admits(&self, order: &OrderRecord) -> bool {
        self.sale.as_ref().is_none_or(|s| *s == order.sale_id)
            && self.buyer.as_ref().is_none_or(|b| *b == order.buyer_id)
            && self.status.is_none_or(|s| s == order.status)
            && self.created_after.is_none_or(|t| order.created_at >= t)
    }
}

/// `uri` with any `user:password@` replaced by `***@`, for messages and logs (Redis and
/// MongoDB URIs alike; only the authority is looked at, so a password holding '@' or a path
/// holding '@' shows nothing it should not). A comma-separated list (a Redis Cluster's seeds)
/// is redacted URI by URI.
pub fn redact_uri(uri: &str) -> String {
    uri.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &uri[..scheme_end], &rest[at..]),
        None => uri.to_owned(),
    }
}

/// Failures of the record store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named product or sale does not exist.
    #[error("not found")]
    NotFound,
    /// An account with that email exists.
    #[error("email already registered")]
    EmailTaken,
    /// The product's inventory is smaller than the allocation asked for.
    #[error("insufficient inventory ({inventory} units)")]
    InsufficientInventory {
        /// Units in inventory.
        inventory: i64,
    },
    /// The sale is not in the status the operation needs.
    #[error("sale is {0:?}")]
    WrongStatus(SaleStatus),
    /// The backend cannot be reached; the operation may be retried.
    #[error("backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else (corruption, bugs).
    #[error("store failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The durable record.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Stores a new account. `EmailTaken` if the email exists.
    async fn create_user(&self, user: UserRecord) -> Result<(), StoreError>;
    /// Stores an account, replacing any with the same email (keeps the existing id).
    async fn upsert_user_by_email(&self, user: UserRecord) -> Result<UserRecord, StoreError>;
    /// The account with that email.
    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError>;

    /// Stores a new product.
    async fn create_product(&self, product: ProductRecord) -> Result<(), StoreError>;
    /// At most `limit` products with ids above `after`, oldest first.
    async fn products_page(&self, after: Option<&ProductId>, limit: usize) -> Result<Vec<ProductRecord>, StoreError>;
    /// One product.
    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError>;
    /// Adds units to a product's inventory; returns the product after.
    async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, StoreError>;

    /// Stores a new sale and takes its allocation from the product's inventory, atomically.
    async fn create_sale(&self, sale: SaleRecord) -> Result<SaleRecord, StoreError>;
    /// One sale.
    async fn get_sale(&self, id: &SaleId) -> Result<Option<SaleRecord>, StoreError>;
    /// At most `limit` sales with ids below `before`, newest first, optionally of one product.
    async fn sales_page(
        &self,
        product: Option<&ProductId>,
        before: Option<&SaleId>,
        limit: usize,
    ) -> Result<Vec<SaleRecord>, StoreError>;
    /// Sales not yet ended (for recovery and the scheduler).
    async fn open_sales(&self) -> Result<Vec<SaleRecord>, StoreError>;
    /// SCHEDULED -> ACTIVE with the given start. Returns the sale and whether it changed; a sale
    /// already ACTIVE is returned unchanged, an ENDED one is `WrongStatus`.
    async fn activate_sale(&self, id: &SaleId, start: UnixMillis) -> Result<(SaleRecord, bool), StoreError>;
    /// Raises the sale's generation by one and returns the sale with it: called before its hot
    /// state is built from the record, so that versions keep growing across rebuilds and restarts.
    async fn next_generation(&self, id: &SaleId) -> Result<SaleRecord, StoreError>;
    /// Ends a sale and returns its unsold units (allocated - sold) to the product's inventory,
    /// in one transaction. Ending an ended sale changes nothing (`false`), so units return once.
    async fn end_sale(&self, id: &SaleId, reason: EndReason, at: UnixMillis) -> Result<(SaleRecord, bool), StoreError>;

    /// Makes a batch of orders durable in one write, refusing per order what would oversell or
    /// arrives after the end. `Err` means the batch is not known to be durable: usually nothing
    /// was written, but when a commit's outcome stays unknown (MongoDB unreachable) it may be.
    /// Callers release such reservations; a retry with the same key then meets `Duplicate` and
    /// returns the stored order, and reconciliation re-counts the hot state from the record.
    async fn commit_orders(&self, batch: &[OrderRecord]) -> Result<Vec<CommitOutcome>, StoreError>;
    /// One order.
    async fn get_order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError>;
    /// A buyer's orders, oldest first, optionally in one sale.
    async fn orders_of_buyer(&self, buyer: &UserId, sale: Option<&SaleId>) -> Result<Vec<OrderRecord>, StoreError>;
    /// At most `limit` orders `filter` admits with ids above `after`, oldest first (by id).
    async fn orders_page(
        &self,
        filter: &OrderFilter,
        after: Option<&OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;
    /// How many orders `filter` admits (`filter.sale` is set).
    async fn count_orders(&self, filter: &OrderFilter) -> Result<u64, StoreError>;
    /// Every order of a sale, oldest first (to rebuild hot state).
    async fn orders_of_sale(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, StoreError>;
    /// The order a buyer made in a sale with an idempotency key.
    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError>;

    /// Ends HELD orders as each change asks, where the domain's `judge_hold` allows it, in one
    /// transaction with their sales' counters (`held` down; `sold` down too when the units go
    /// back) and, for a sale that has ended, the product's inventory (given-back units return
    /// to it then). In batch order: a later change of the same order sees the earlier one.
    /// Conditional on each order still being HELD when written, so of several nodes or racing
    /// calls exactly one ends a hold. `None` for an order that does not exist. Hold ends go
    /// through the group committer like orders: a burst of payments or expiries is a few
    /// transactions, not one per hold contending for the same sale.
    async fn end_holds(&self, batch: &[HoldChange]) -> Result<Vec<Option<HoldOutcome>>, StoreError>;

    /// [`RecordStore::end_holds`] of one change; `NotFound` when there is no such order.
    async fn end_hold(
        &self,
        id: &OrderId,
        end: HoldEnd,
        at: UnixMillis,
        reference: Option<&str>,
    ) -> Result<HoldOutcome, StoreError> {
        let change = HoldChange { id: id.clone(), end, at, reference: reference.map(str::to_owned) };
        self.end_holds(&[change]).await?.pop().flatten().ok_or(StoreError::NotFound)
    }
    /// HELD orders of every sale, earliest deadline first, at most `limit` (the expiry timer).
    async fn earliest_holds(&self, limit: usize) -> Result<Vec<OrderRecord>, StoreError>;

    /// Keeps a buyer's place in a sale's line, so that the line outlives the hot state (a
    /// restart, a rebuild). A buyer with a place keeps the first one stored.
    async fn save_waitlist_entry(&self, sale: &SaleId, entry: &WaitlistEntry) -> Result<(), StoreError>;
    /// Forgets these buyers' places in a sale's line (they left, were served or dropped).
    async fn remove_waitlist_entries(&self, sale: &SaleId, buyers: &[UserId]) -> Result<(), StoreError>;
    /// A sale's line as stored, first come first.
    async fn waitlist_of_sale(&self, sale: &SaleId) -> Result<Vec<WaitlistEntry>, StoreError>;

    /// At most `limit` order events with sequences above `after`, in sequence order, of one sale
    /// or of all; with the oldest sequence kept and the newest written. `commit_orders` writes
    /// a CREATED event for each order it stores, and `end_holds` an event for each hold it ends,
    /// in the same transaction, numbered in commit order without gaps.
    async fn order_events(&self, after: u64, sale: Option<&SaleId>, limit: usize) -> Result<EventsPage, StoreError>;
    /// Deletes the events that happened before `before`, but never the newest (it carries the
    /// sequence on in stores that number from their last event). Returns how many went.
    async fn prune_order_events(&self, before: UnixMillis) -> Result<u64, StoreError>;
}

/// What a purchase asks the hot store to reserve.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// The sale.
    pub sale_id: SaleId,
    /// The buyer (token subject).
    pub buyer_id: UserId,
    /// The buyer's display name.
    pub buyer_name: std::sync::Arc<str>,
    /// Units asked for (checked against the sale's rules inside the atomic step).
    pub quantity: u32,
    /// The buyer's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// Id the new order gets if this is not a retry.
    pub new_order_id: OrderId,
    /// The time the purchase is judged at.
    pub now: UnixMillis,
}

/// What `reserve` did.
#[derive(Debug, Clone)]
pub enum Reservation {
    /// Units were reserved for this new order; confirm or release it.
    New(OrderRecord),
    /// A retry: the key was used before with the same parameters.
    Existing {
        /// The first order.
        order: OrderRecord,
        /// True once the first order is durable; false while it is in flight.
        settled: bool,
    },
}

/// How an in-flight order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It is durable.
    Confirmed,
    /// It was released (its commit failed); the key is free again.
    Released,
}

/// Failures of the hot store.
#[derive(Debug, thiserror::Error)]
pub enum HotError {
    /// A purchase rule refused.
    #[error(transparent)]
    Refused(#[from] PurchaseRefusal),
    /// The backend cannot be reached.
    #[error("hot store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What a confirm tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Every allocated unit is now sold durably (and, with holds, confirmed): the sale should
    /// end SOLD_OUT.
    pub sold_out: bool,
}

/// What units given back did (a released reservation, an ended hold, a buyer leaving the line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handed {
    /// New holds for the buyers at the head of the line, reserved (in flight): the caller makes
    /// them durable and confirms them as it does a purchase's.
    pub served: Vec<OrderRecord>,
    /// Buyers taken out of the line because their quantity can never be served.
    pub dropped: Vec<UserId>,
}

/// What settling an ended hold in the hot state did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldSettled {
    /// Where its units went, when they went back.
    pub handed: Handed,
    /// Every allocated unit is now confirmed: the sale should end SOLD_OUT.
    pub sold_out: bool,
}

/// A buyer asking for a place in a sale's line.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The sale.
    pub sale_id: SaleId,
    /// The entry (its `order_id` is fresh; a buyer already in line keeps their entry).
    pub entry: crate::domain::WaitlistEntry,
    /// The time the join is judged at.
    pub now: UnixMillis,
}

/// The hot path.
#[async_trait]
pub trait HotStore: Send + Sync + 'static {
    /// Builds a sale's hot state from its record and durable orders, unless it is loaded. Its
    /// version starts at [`crate::domain::first_version`] of the record's generation.
    /// True when this call built it (false: it was loaded already, and is left as it is).
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<bool, HotError>;
    /// Whether the sale's hot state is present.
    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError>;
    /// Checks every purchase rule and the idempotency key, and reserves, atomically.
    /// `Refused(SaleNotFound)` when the sale's hot state is absent.
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError>;
    /// The order is durable: count it as sold, credit the leaderboard, settle its key.
    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError>;
    /// The order will not be durable: give its units back (to the waitlist first, as holds
    /// starting at `now`) and free its key.
    async fn release(&self, order: &OrderRecord, now: UnixMillis) -> Result<Handed, HotError>;
    /// Waits until an in-flight order is confirmed or released, however long that takes (the
    /// caller bounds the wait).
    async fn wait_settled(&self, order: &OrderRecord) -> Result<Settled, HotError>;
    /// Records a status change (and the start, which StartSale moves).
    async fn set_status(&self, sale: &SaleRecord) -> Result<(), HotError>;
    /// The sale's live state with the top of its leaderboard.
    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError>;
    /// Reservations of a sale not yet confirmed or released, oldest first (reconciliation:
    /// one whose node died is either in the record, and is confirmed, or is released).
    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError>;
    /// Drops a sale's hot state; its next use rebuilds it from the record. Reconciliation
    /// uses it when the hot state drifted from the record (e.g. Redis restored an old file).
    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError>;

    /// A hold ended in the record (`order` as it is now): counts it as confirmed, or gives its
    /// units back (to the waitlist first, as holds starting at `now`). Only a hold the hot state
    /// holds is settled, so settling twice changes nothing.
    async fn end_hold(&self, order: &OrderRecord, now: UnixMillis) -> Result<HoldSettled, HotError>;
    /// Puts a buyer in the sale's line (rules of the domain's `check_join`), or returns the
    /// place they have.
    async fn join_waitlist(&self, request: &JoinRequest) -> Result<WaitlistPlace, HotError>;
    /// Takes a buyer out of the line; the line moves up (spare units may then serve its new
    /// head). `None` when they were not in it.
    async fn leave_waitlist(&self, sale: &SaleId, buyer: &UserId, now: UnixMillis) -> Result<Option<Handed>, HotError>;
    /// A buyer's place in the line, if they are in it.
    async fn waitlist_place(&self, sale: &SaleId, buyer: &UserId) -> Result<Option<WaitlistPlace>, HotError>;
    /// Puts a line kept by the record back into a sale just built from the record, unless the
    /// sale's line has buyers already. The units on sale then go to the line first (as they did
    /// before the hot state was lost: a line waits only when nothing is on sale).
    async fn restore_line(&self, sale: &SaleId, line: &[WaitlistEntry], now: UnixMillis) -> Result<Handed, HotError>;
}

/// A buyer entering a waiting room.
#[derive(Debug, Clone)]
pub struct EnterAsk {
    /// The buyer.
    pub buyer: UserId,
    /// When.
    pub now: UnixMillis,
    /// Their shuffle key when they arrive before the start (the pre-queue); `None` after it.
    pub prequeue_score: Option<u64>,
}

/// The waiting rooms. Every method is one atomic step on the line (a mutex in process, one
/// script in Redis), so any number of nodes may call any of them at once.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// The buyer enters (or re-enters) the sale's room: see [`crate::domain::Line::enter`].
    async fn enter(&self, sale: &SaleId, ask: &EnterAsk) -> Result<Place, HotError>;
    /// One admission round: see [`crate::domain::Line::admit`]. Rounds of several nodes share
    /// the bucket and the cap, so the room admits at its rate however many nodes run rounds.
    async fn admit(&self, sale: &SaleId, ask: &AdmitAsk) -> Result<LineCounts, HotError>;
    /// These buyers (their streams are open on this node) were seen at `now`.
    async fn touch(&self, sale: &SaleId, buyers: &[UserId], now: UnixMillis) -> Result<(), HotError>;
    /// The buyer's admission stops counting against the cap (they bought).
    async fn done(&self, sale: &SaleId, buyer: &UserId) -> Result<(), HotError>;
    /// The room's counters (zero for a room nobody entered).
    async fn counts(&self, sale: &SaleId) -> Result<LineCounts, HotError>;
    /// The sale ended: its room may go (Redis keeps it an hour, for late readers).
    async fn close(&self, sale: &SaleId) -> Result<(), HotError>;
}

/// Told of the changes other nodes make to a shared hot state (Redis pub/sub).
pub trait ChangeSink: Send + Sync + 'static {
    /// Another node changed this sale. Called on the listener's task: mark, never block.
    fn changed(&self, sale: SaleId);
    /// The subscription was (re)established: changes made while it was down were missed.
    fn resubscribed(&self);
    /// The sales whose changes this node wants (on a Redis Cluster, where the listener
    /// subscribes sale by sale): those its watchers follow.
    fn followed(&self) -> Vec<SaleId>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact_uri("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact_uri("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_uri("mongodb://ann:s3cret@db1:27017,db2/?replicaSet=rs0"),
            "mongodb://***@db1:27017,db2/?replicaSet=rs0"
        );
        assert_eq!(
            redact_uri("mongodb+srv://ann:p@ss@cluster.example.com/app"),
            "mongodb+srv://***@cluster.example.com/app"
        );
        assert_eq!(redact_uri("mongodb://127.0.0.1:27017/?w=majority"), "mongodb://127.0.0.1:27017/?w=majority");
        assert_eq!(redact_uri("not a uri"), "not a uri");
        assert_eq!(redact_uri("redis://:pw1@a:7000,redis://:pw2@b:7001/"), "redis://***@a:7000,redis://***@b:7001/");
    }
}
