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
//! [`embedded`] implements both in one process: the hot state in memory, the record in redb.
//! [`redis`] (one Lua script per operation, keys hash-tagged per sale) and [`mongo`]
//! (multi-document transactions) are the production backends shared by many nodes.

pub mod embedded;
pub mod mongo;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    DisplayName, Email, EndReason, IdempotencyKey, Leaderboard, LeaderboardEntry, Money, OrderId, ProductId,
    PurchaseRefusal, Role, SaleId, SaleRules, SaleStatus, UnixMillis, UserId,
};

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A stored product.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A stored sale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaleRecord {
    /// Id.
    pub id: SaleId,
    /// The product the units came from.
    pub product_id: ProductId,
    /// Allocation, price, limits and window.
    pub rules: SaleRules,
    /// Units in durable orders.
    pub sold: i64,
    /// Lifecycle status.
    pub status: SaleStatus,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// When it ended.
    pub ended_at: Option<UnixMillis>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// How many times the sale's hot state was built from the record ([`RecordStore::next_generation`]):
    /// each build numbers the sale's versions above every version an earlier build published.
    #[serde(default)]
    pub generation: u64,
}

/// The first version of a hot state built at `generation`: above every version of every earlier
/// build, which counted up from its own first version by at most 2^32 - 1 changes.
pub fn first_version(generation: u64) -> u64 {
    generation << 32
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Id.
    pub id: OrderId,
    /// The sale.
    pub sale_id: SaleId,
    /// The buyer (token subject).
    pub buyer_id: UserId,
    /// The buyer's display name at purchase time (for leaderboards rebuilt from the record).
    pub buyer_name: std::sync::Arc<str>,
    /// Units.
    pub quantity: u32,
    /// Price of one unit.
    pub unit_price: Money,
    /// The buyer's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// When the purchase was accepted.
    pub created_at: UnixMillis,
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

/// Why the record refused one order of a batch.
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
    /// Every product, oldest first.
    async fn list_products(&self) -> Result<Vec<ProductRecord>, StoreError>;
    /// One product.
    async fn get_product(&self, id: &ProductId) -> Result<Option<ProductRecord>, StoreError>;
    /// Adds units to a product's inventory; returns the product after.
    async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, StoreError>;

    /// Stores a new sale and takes its allocation from the product's inventory, atomically.
    async fn create_sale(&self, sale: SaleRecord) -> Result<SaleRecord, StoreError>;
    /// One sale.
    async fn get_sale(&self, id: &SaleId) -> Result<Option<SaleRecord>, StoreError>;
    /// Sales, newest first, optionally of one product.
    async fn list_sales(&self, product: Option<&ProductId>) -> Result<Vec<SaleRecord>, StoreError>;
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
    /// Every order of a sale, oldest first (to rebuild hot state).
    async fn orders_of_sale(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, StoreError>;
    /// The order a buyer made in a sale with an idempotency key.
    async fn order_by_key(
        &self,
        buyer: &UserId,
        sale: &SaleId,
        key: &IdempotencyKey,
    ) -> Result<Option<OrderRecord>, StoreError>;
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
    /// Units in durable orders.
    pub sold: i64,
    /// Units a new purchase may take (for an ended sale: allocated - sold, given back).
    pub remaining: i64,
    /// The top of the leaderboard (at most [`LEADERBOARD_MAX`] entries).
    pub leaderboard: Vec<LeaderboardEntry>,
    /// Distinct buyers.
    pub total_buyers: u64,
}

/// The most leaderboard entries a feed can ask for.
pub const LEADERBOARD_MAX: usize = 100;

/// What a confirm tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Every allocated unit is now sold durably: the sale should end SOLD_OUT.
    pub sold_out: bool,
}

/// The hot path.
#[async_trait]
pub trait HotStore: Send + Sync + 'static {
    /// Builds a sale's hot state from its record and durable orders, unless it is loaded. Its
    /// version starts at [`first_version`] of the record's generation.
    async fn load_sale(&self, sale: &SaleRecord, orders: &[OrderRecord]) -> Result<(), HotError>;
    /// Whether the sale's hot state is present.
    async fn has_sale(&self, sale: &SaleId) -> Result<bool, HotError>;
    /// Checks every purchase rule and the idempotency key, and reserves, atomically.
    /// `Refused(SaleNotFound)` when the sale's hot state is absent.
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, HotError>;
    /// The order is durable: count it as sold, credit the leaderboard, settle its key.
    async fn confirm(&self, order: &OrderRecord) -> Result<Confirmed, HotError>;
    /// The order will not be durable: give its units back and free its key.
    async fn release(&self, order: &OrderRecord) -> Result<(), HotError>;
    /// Waits until an in-flight order is confirmed or released, however long that takes (the
    /// caller bounds the wait).
    async fn wait_settled(&self, order: &OrderRecord) -> Result<Settled, HotError>;
    /// Records a status change (and the start, which StartSale moves).
    async fn set_status(&self, sale: &SaleRecord) -> Result<(), HotError>;
    /// The sale's live state with the top of its leaderboard.
    async fn view(&self, sale: &SaleId) -> Result<Option<SaleView>, HotError>;
    /// Every loaded sale that is not ended: (id, rules, status), for the scheduler.
    async fn open_sales(&self) -> Result<Vec<(SaleId, SaleRules, SaleStatus)>, HotError>;
    /// Reservations of a sale not yet confirmed or released, oldest first (reconciliation:
    /// one whose node died is either in the record, and is confirmed, or is released).
    async fn in_flight(&self, sale: &SaleId) -> Result<Vec<OrderRecord>, HotError>;
    /// Drops a sale's hot state; its next use rebuilds it from the record. Reconciliation
    /// uses it when the hot state drifted from the record (e.g. Redis restored an old file).
    async fn forget_sale(&self, sale: &SaleId) -> Result<(), HotError>;
}

/// Told of the changes other nodes make to a shared hot state (Redis pub/sub).
pub trait ChangeSink: Send + Sync + 'static {
    /// Another node changed this sale. Called on the listener's task: mark, never block.
    fn changed(&self, sale: SaleId);
    /// The subscription was (re)established: changes made while it was down were missed.
    fn resubscribed(&self);
}

/// Rebuilds a leaderboard and per-buyer units from durable orders (oldest first).
pub fn tally(orders: &[OrderRecord]) -> (Leaderboard, foldhash::HashMap<UserId, u32>, i64) {
    let mut board = Leaderboard::default();
    let mut units = foldhash::HashMap::default();
    let mut sold = 0;
    for order in orders {
        board.record(&order.buyer_id, &order.buyer_name, i64::from(order.quantity), order.created_at);
        *units.entry(order.buyer_id.clone()).or_insert(0u32) += order.quantity;
        sold += i64::from(order.quantity);
    }
    (board, units, sold)
}
