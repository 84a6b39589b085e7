//! The application: use cases over the two backend traits, in domain types.
//!
//! - [`App::start`] takes the backends built at start-up ([`crate::backends`]), rebuilds hot
//!   state from the record and starts the background tasks (group committer, lifecycle
//!   scheduler, reconciliation with a shared hot state).
//! - `purchase.rs`: the purchase flow (reserve -> group commit -> confirm or release).
//! - `admin.rs`: products, stock and the sale lifecycle; `users.rs`: accounts and tokens.
//! - `committer.rs`: group commit; `scheduler.rs`: time-driven transitions;
//!   `reconcile.rs`: brings a shared (Redis) hot state back in line with the record.

mod admin;
mod committer;
mod holds;
mod orders;
mod purchase;
mod queue;
mod reconcile;
mod scheduler;
mod users;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::sync::Weak;

use futures::future::BoxFuture;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtKeys, TokenError};
use crate::backends::Backends;
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{
    all_confirmed, EndReason, FieldViolation, OrderRecord, PurchaseRefusal, SaleId, SaleStatus, SaleView,
};
use crate::feeds::{FeedHub, SaleSource};
use crate::passwords::{PasswordPool, PoolError};
use crate::retry::Backoff;
use crate::store::{ChangeSink, HotError, HotStore, QueueStore, RecordStore, StoreError};

pub use admin::NewSale;
use committer::Committer;
pub use holds::HoldAnswer;
pub use orders::{OrderFeed, Page, PageAsk};
pub use purchase::Purchased;
pub use queue::{QueueState, QueueUpdate};
pub use users::Session;

/// Every way a use case can fail, as clients will be told (see `grpc::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Fields failed validation.
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// No usable token.
    #[error(transparent)]
    Unauthenticated(#[from] TokenError),
    /// Unknown email or wrong password.
    #[error("wrong email or password")]
    BadCredentials,
    /// The caller's role may not do this.
    #[error("this method needs an admin token")]
    AdminRequired,
    /// The caller's role (a service's) may not call this method.
    #[error("a {} token may not call this method", .0.as_str())]
    RoleNotAllowed(crate::domain::Role),
    /// ConfirmOrder after the hold's deadline: it expired (the order as it is now).
    #[error("the hold expired; its units went back")]
    HoldExpired(Box<OrderRecord>),
    /// ConfirmOrder or CancelOrder on an order that is not held.
    #[error("the order is {}, not held", .0.as_str())]
    OrderNotHeld(crate::domain::OrderStatus),
    /// No such product.
    #[error("product not found")]
    ProductNotFound,
    /// No such sale.
    #[error("sale not found")]
    SaleNotFound,
    /// No such order for this caller.
    #[error("order not found")]
    OrderNotFound,
    /// Email already registered.
    #[error("an account with this email exists")]
    EmailTaken,
    /// The product's inventory cannot cover the allocation.
    #[error("the product's inventory holds only {inventory} units")]
    InsufficientInventory {
        /// Units in inventory.
        inventory: i64,
    },
    /// StartSale on a sale that is not scheduled.
    #[error("the sale is {0:?}, not scheduled")]
    SaleNotScheduled(SaleStatus),
    /// A purchase rule refused.
    #[error(transparent)]
    Purchase(PurchaseRefusal),
    /// Too many requests.
    #[error("too many requests; retry in {retry_after:?}")]
    RateLimited {
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// Password hashing is at capacity (its queue is full): Register and Login are refused at
    /// once rather than queued without bound.
    #[error("too many sign-ins at once; retry in {retry_after:?}")]
    SignInBusy {
        /// When a retry may find room.
        retry_after: Duration,
    },
    /// A page token this listing did not issue (altered, another listing's, other filters).
    #[error("{0}")]
    PageTokenInvalid(crate::paging::TokenProblem),
    /// WatchOrders from a cursor whose next events were pruned.
    #[error("the events after this cursor are older than the record keeps: list the orders again, then follow from the head")]
    CursorExpired {
        /// The oldest event kept (0: none).
        oldest: u64,
        /// The newest sequence written.
        head: u64,
    },
    /// WatchOrders from a cursor beyond every event written.
    #[error("no event has this sequence yet: the cursor is from another deployment")]
    CursorUnknown {
        /// The newest sequence written.
        head: u64,
    },
    /// A sale with a waiting room refused a purchase's admission pass.
    #[error("{0}")]
    Admission(crate::admission::PassProblem),
    /// EnterQueue before the room opens (`None`: the sale has no waiting room).
    #[error("{}", match .opens_at { Some(_) => "the waiting room is not open yet", None => "this sale has no waiting room: purchase directly" })]
    QueueNotOpen {
        /// When it opens.
        opens_at: Option<crate::domain::UnixMillis>,
    },
    /// A backend is down or the server is stopping; safe to retry with the same key.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or corruption: logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<FieldViolation> for ServiceError {
    fn from(violation: FieldViolation) -> Self {
        Self::InvalidArgument(vec![violation])
    }
}

impl From<PurchaseRefusal> for ServiceError {
    fn from(refusal: PurchaseRefusal) -> Self {
        match refusal {
            PurchaseRefusal::SaleNotFound => Self::SaleNotFound,
            PurchaseRefusal::InvalidQuantity(violation) => violation.into(),
            other => Self::Purchase(other),
        }
    }
}

impl From<StoreError> for ServiceError {
    /// The generic mapping; call sites turn `NotFound` and friends into their specific errors
    /// first.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(source) => Self::Unavailable(source),
            StoreError::Internal(source) => Self::Internal(source),
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::InsufficientInventory { inventory } => Self::InsufficientInventory { inventory },
            StoreError::WrongStatus(status) => Self::SaleNotScheduled(status),
            StoreError::NotFound => Self::Internal("record vanished".into()),
        }
    }
}

impl From<PoolError> for ServiceError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Busy { retry_after } => Self::SignInBusy { retry_after },
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<HotError> for ServiceError {
    fn from(error: HotError) -> Self {
        match error {
            HotError::Refused(refusal) => refusal.into(),
            HotError::Unavailable(source) => Self::Unavailable(source),
        }
    }
}

/// The running application, shared by every handler.
pub struct App {
    records: Arc<dyn RecordStore>,
    hot: Arc<dyn HotStore>,
    /// The waiting rooms' lines.
    queue: Arc<dyn QueueStore>,
    /// This node's rooms (see `queue.rs`).
    rooms: queue::Rooms,
    /// How long a waiting-room buyer with no open stream keeps their place.
    queue_grace: Duration,
    committer: Committer,
    feeds: FeedHub,
    clock: Arc<dyn Clock>,
    keys: JwtKeys,
    passwords: PasswordPool,
    token_ttl: Duration,
    /// Age after which reconciliation settles an in-flight reservation.
    orphan_after: Duration,
    /// Longest a retry waits for its key's first attempt to settle.
    in_flight_wait: Duration,
    /// Wakes the scheduler when a sale's deadlines change, or a hold due before `next_hold` is
    /// made.
    schedule_changed: Notify,
    /// The earliest hold deadline the scheduler knows of (Unix ms; `i64::MAX`: none).
    next_hold: std::sync::atomic::AtomicI64,
    /// Work that must run to its end once started, whatever happens to the request that started
    /// it (see [`App::detached`]), and the background tasks; shutdown waits for them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The application itself, for work it hands to tasks of their own (they outlive the call
    /// that started them) and for the feeds, which read sales through it.
    me: Weak<App>,
    /// Counters of the purchase path, registered once (a lookup per call costs).
    metrics: Settlements,
    /// Sales whose units in flight were last reported (std Mutex: a scrape's bookkeeping).
    reported: std::sync::Mutex<std::collections::HashSet<SaleId>>,
    /// Sales whose hot state differed from the record at the last reconciliation round, with
    /// what differed (hot sold, hot held, record sold, record held): the same difference again
    /// the next round is drift (std Mutex: reconciliation's bookkeeping).
    drift_suspects: std::sync::Mutex<std::collections::HashMap<SaleId, (i64, i64, i64, i64)>>,
    /// Sales this node is checking after the record refused an oversell: one check at a time
    /// per sale, however many purchases were refused meanwhile.
    healing: std::sync::Mutex<std::collections::HashSet<SaleId>>,
    /// The open sales as the scheduler last read them from the record (std Mutex: swapped
    /// whole), for the live gauges: a scrape reads no record.
    open_sales: std::sync::Mutex<Vec<SaleId>>,
}

/// `flashsale_settlements_total{outcome,by}`: reservations confirmed or released by the purchase
/// that made them, or by reconciliation's sweep of a dead node's.
struct Settlements {
    confirmed: metrics::Counter,
    released: metrics::Counter,
    swept_confirmed: metrics::Counter,
    swept_released: metrics::Counter,
}

impl Settlements {
    fn register() -> Self {
        let counter = |outcome: &'static str, by: &'static str| metrics::counter!("flashsale_settlements_total", "outcome" => outcome, "by" => by);
        Self {
            confirmed: counter("confirmed", "purchase"),
            released: counter("released", "purchase"),
            swept_confirmed: counter("confirmed", "sweep"),
            swept_released: counter("released", "sweep"),
        }
    }
}

impl App {
    /// Starts the application on `backends`: rebuilds hot state from the record, ensures the
    /// configured admin, and starts the background tasks (stopped by `shutdown`).
    pub async fn start(
        backends: Backends,
        keys: JwtKeys,
        settings: &Settings,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let Backends { records, hot, queue, shared } = backends;
        let tasks = TaskTracker::new();
        let passwords = PasswordPool::start(settings.password_pool).context("starting the password hashing threads")?;
        let app = Arc::new_cyclic(|me: &Weak<App>| Self {
            committer: Committer::start(records.clone()),
            feeds: FeedHub::new(me.clone(), clock.clone(), settings.feed_interval, shutdown.clone(), tasks.clone()),
            records,
            hot,
            queue,
            rooms: Default::default(),
            queue_grace: settings.queue_grace,
            clock,
            keys,
            passwords,
            token_ttl: settings.token_ttl,
            orphan_after: settings.orphan_after,
            in_flight_wait: settings.in_flight_wait,
            schedule_changed: Notify::new(),
            next_hold: std::sync::atomic::AtomicI64::new(i64::MAX),
            tasks,
            shutdown,
            me: me.clone(),
            metrics: Settlements::register(),
            reported: Default::default(),
            drift_suspects: Default::default(),
            healing: Default::default(),
            open_sales: Default::default(),
        });
        // Start-up work is not a request: nothing cancels it but the process ending, and after a
        // crash the next start does it again from the record.
        app.recover().await.context("rebuilding hot state from the record")?;
        if let Some((email, password)) = &settings.admin {
            app.ensure_admin(email, password).await.context("creating the configured admin")?;
        }
        if let Some(changes) = shared {
            // Purchases on other nodes reach this node's watchers through the shared store.
            app.tasks.spawn(changes.listen(Arc::new(NodeFeeds(Arc::downgrade(&app))), app.shutdown.clone()));
            app.reconcile().await.context("reconciling Redis with the record")?;
            app.tasks.spawn(reconcile::run(app.clone(), settings.reconcile_interval));
        }
        app.tasks.spawn(scheduler::run(app.clone()));
        if let Some(retention) = settings.order_events_retention {
            app.tasks.spawn(app.clone().prune_events(retention));
        }
        Ok(app)
    }

    /// Sets the live gauges of every open sale from its live state, shared by every node:
    /// `flashsale_units_in_flight{sale}` (reserved, not settled yet), `flashsale_units_held`,
    /// `flashsale_units_confirmed`, `flashsale_units_remaining` and `flashsale_waitlist_length`;
    /// 0 for sales reported before that are no longer open. Called when metrics are scraped:
    /// nothing on the purchase path. The open sales are those the scheduler last read from the
    /// record (at most a few seconds old, at once for sales created on this node).
    pub async fn report_live_metrics(&self) {
        let open = self.open_sales.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut now_open = std::collections::HashSet::new();
        for sale in open {
            if let Ok(Some(view)) = self.hot.view(&sale).await {
                let gauges = [
                    view.in_flight as f64,
                    view.held as f64,
                    (view.sold - view.held) as f64,
                    view.remaining as f64,
                    view.waitlist as f64,
                ];
                for (name, value) in LIVE_GAUGES.iter().zip(gauges) {
                    metrics::gauge!(*name, "sale" => sale.to_string()).set(value);
                }
                now_open.insert(sale);
            }
        }
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for gone in reported.difference(&now_open) {
            for name in LIVE_GAUGES {
                metrics::gauge!(name, "sale" => gone.to_string()).set(0.0);
            }
        }
        *reported = now_open;
    }

    /// Whether the server is shutting down (streams end).
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The service's clock.
    pub fn now(&self) -> crate::domain::UnixMillis {
        self.clock.now()
    }

    /// The token keys (for the auth interceptor).
    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    /// Waits, at most `limit`, for the work started by requests and the background tasks to
    /// finish (they stop at shutdown); true when everything finished.
    ///
    /// In order: the work started by requests finishes (purchases settle, sale ends complete)
    /// and the background tasks and feeds stop (they stop at shutdown); then the committer takes
    /// no new job, answers every queued one (durable or refused) and stops.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        self.tasks.close();
        let finished = tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_ok();
        let committed = tokio::time::timeout_at(deadline, self.committer.drain()).await.is_ok();
        finished && committed
    }

    /// Runs `work` in a task of its own and waits for its answer. A request's future is dropped
    /// at its next `.await` when the client goes away (deadline, cancel, reset stream, closed
    /// connection); work spawned here is not: dropping the request drops only the wait, and the
    /// work runs to its end. Every use case that writes more than once goes through here, so a
    /// client can never leave a change half made.
    async fn detached<T, F>(&self, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        match self.tasks.spawn(work).await {
            Ok(answer) => answer,
            Err(failed) => Err(ServiceError::Internal(Box::new(failed))),
        }
    }

    /// Loads every open sale's hot state from its durable orders (a sale found sold out ends).
    async fn recover(&self) -> Result<(), ServiceError> {
        for sale in self.records.open_sales().await? {
            self.load_sale(&sale.id).await?;
            tracing::info!(sale = %sale.id, sold = sale.sold, allocated = sale.rules.allocated, "sale restored");
        }
        Ok(())
    }

    /// Loads a sale's hot state from the record if it is not loaded (a sale created by another
    /// process, ended before this process started, or whose hot state the hot store lost). Each
    /// load starts a new generation of the sale's versions, above every version an earlier hot
    /// state published, so versions only grow across rebuilds and restarts. A sale the record
    /// shows sold out but not ended (its last unit was committed by a process that died before
    /// confirming it) is ended.
    pub(super) async fn load_sale(&self, sale_id: &SaleId) -> Result<(), ServiceError> {
        if self.hot.has_sale(sale_id).await? {
            return Ok(());
        }
        let sale = match self.records.next_generation(sale_id).await {
            Err(StoreError::NotFound) => return Err(ServiceError::SaleNotFound),
            other => other?,
        };
        let orders = self.records.orders_of_sale(sale_id).await?;
        // Reads, a generation bump that only raises future versions, then one atomic load that
        // never replaces a loaded sale: safe to stop anywhere.
        let built = self.hot.load_sale(&sale, &orders).await?;
        if sale.status != SaleStatus::Ended && all_confirmed(sale.rules.allocated, sale.sold, sale.held) {
            self.end_sold_out(sale_id).await;
        } else if built && sale.status != SaleStatus::Ended && sale.rules.hold_seconds > 0 {
            // Only the call that built the hot state gives it its line (once).
            self.restore_line(&sale.id, &orders).await?;
        }
        Ok(())
    }

    /// Puts a sale's line, as the record keeps it, back into its freshly built hot state: every
    /// place but those already served (their hold is among `orders`), first come first. The
    /// units on sale go to the line first, as they would have before the hot state was lost.
    async fn restore_line(&self, sale: &SaleId, orders: &[OrderRecord]) -> Result<(), ServiceError> {
        let served: std::collections::HashSet<&crate::domain::OrderId> = orders.iter().map(|o| &o.id).collect();
        let (line, gone): (Vec<_>, Vec<_>) =
            self.records.waitlist_of_sale(sale).await?.into_iter().partition(|e| !served.contains(&e.order_id));
        self.forget_places(sale, gone.into_iter().map(|e| e.buyer_id).collect());
        if line.is_empty() {
            return Ok(());
        }
        let handed = self.hot.restore_line(sale, &line, self.clock.now()).await?;
        tracing::info!(%sale, waiting = line.len(), served = handed.served.len(), "the sale's line restored from the record");
        self.hand_on(sale, handed);
        Ok(())
    }

    /// A hold is durable: the expiry timer wakes for its deadline if it is the earliest it knows.
    fn hold_made(&self, order: &OrderRecord) {
        let Some(deadline) = order.expires_at else { return };
        if self.next_hold.fetch_min(deadline.0, std::sync::atomic::Ordering::AcqRel) > deadline.0 {
            self.schedule_changed.notify_one();
        }
    }

    /// Confirms a durable order in the hot state (rebuilding a dropped sale first); returns
    /// whether every allocated unit is now sold. Every confirm goes through here and then
    /// through [`App::end_sold_out`]: a purchase's, and reconciliation's of a dead node's.
    async fn confirm(&self, order: &OrderRecord) -> Result<bool, ServiceError> {
        if order.status == crate::domain::OrderStatus::Held {
            self.hold_made(order);
        }
        let confirmed = match self.hot.confirm(order).await {
            // Dropped for a rebuild between commit and confirm: rebuild it now (it then holds
            // this durable order) and confirm, which changes nothing more.
            Err(HotError::Refused(PurchaseRefusal::SaleNotFound)) => {
                self.load_sale(&order.sale_id).await?;
                self.hot.confirm(order).await?
            }
            other => other?,
        };
        Ok(confirmed.sold_out)
    }

    /// The one place that ends a sale because it sold out, whoever settled its last unit: a
    /// purchase, reconciliation, start-up recovery or a rebuild. Ending is idempotent; if the
    /// record cannot be reached now, the end is retried in the background.
    ///
    /// A boxed future, not an `async fn`: ending a sale loads it first (`load_sale`), which may
    /// end it, so the two futures would contain each other.
    fn end_sold_out<'a>(&'a self, sale: &'a SaleId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self.end_sale_now(sale, EndReason::SoldOut).await {
                tracing::warn!(%sale, error = ?error, "could not end a sold-out sale; retrying in the background");
                let sale = sale.clone();
                self.retry_in_background(move |app| {
                    let sale = sale.clone();
                    Box::pin(async move { app.end_sale_now(&sale, EndReason::SoldOut).await })
                });
            }
        })
    }

    /// Runs `work` again, with a growing pause, until it succeeds or the server stops (what is
    /// left then is settled as a dead node's would be: by recovery or reconciliation). Tracked,
    /// so shutdown waits for it within its grace period.
    fn retry_in_background<F>(&self, work: F)
    where
        F: Fn(Arc<Self>) -> BoxFuture<'static, Result<(), ServiceError>> + Send + 'static,
    {
        self.in_background(work, false);
    }

    /// Runs `work` in a task of its own now, and again as [`App::retry_in_background`] does
    /// until it succeeds: work that no caller waits for.
    fn retry_in_background_now<F>(&self, work: F)
    where
        F: Fn(Arc<Self>) -> BoxFuture<'static, Result<(), ServiceError>> + Send + 'static,
    {
        self.in_background(work, true);
    }

    fn in_background<F>(&self, work: F, at_once: bool)
    where
        F: Fn(Arc<Self>) -> BoxFuture<'static, Result<(), ServiceError>> + Send + 'static,
    {
        let Some(app) = self.me.upgrade() else { return };
        self.tasks.spawn(async move {
            let mut pauses = Backoff::new(RETRY_FIRST, RETRY_MAX);
            let mut first = at_once;
            loop {
                if !std::mem::take(&mut first) {
                    tokio::select! {
                        _ = app.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pauses.next_pause()) => {}
                    }
                }
                match work(app.clone()).await {
                    Ok(()) => return,
                    Err(error) => tracing::debug!(error = ?error, "still failing; retrying"),
                }
            }
        });
    }
}

/// The per-sale gauges [`App::report_live_metrics`] sets, in its order.
const LIVE_GAUGES: [&str; 5] = [
    "flashsale_units_in_flight",
    "flashsale_units_held",
    "flashsale_units_confirmed",
    "flashsale_units_remaining",
    "flashsale_waitlist_length",
];

/// Pauses between background retries, doubling from the first up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the feeds read: a sale's live state, its hot state rebuilt from the record when the hot
/// store lost it.
#[async_trait::async_trait]
impl SaleSource for App {
    async fn current(&self, sale: &SaleId) -> Result<Option<SaleView>, ServiceError> {
        if let Some(view) = self.hot.view(sale).await? {
            return Ok(Some(self.with_line(view).await?));
        }
        match self.load_sale(sale).await {
            Err(ServiceError::SaleNotFound) => return Ok(None),
            other => other?,
        }
        let view = self
            .hot
            .view(sale)
            .await?
            .ok_or_else(|| ServiceError::Unavailable("the sale's hot state is being rebuilt".into()))?;
        Ok(Some(self.with_line(view).await?))
    }
}

/// This node's feeds, told of other nodes' changes (see [`crate::backends::ChangeSource`]).
struct NodeFeeds(Weak<App>);

impl ChangeSink for NodeFeeds {
    fn changed(&self, sale: SaleId) {
        if let Some(app) = self.0.upgrade() {
            app.feeds.touch(&sale);
        }
    }

    fn resubscribed(&self) {
        // Changes published while the subscription was down were missed: every feed re-reads.
        if let Some(app) = self.0.upgrade() {
            app.feeds.touch_all();
        }
    }

    fn followed(&self) -> Vec<SaleId> {
        self.0.upgrade().map(|app| app.feeds.sales()).unwrap_or_default()
    }
}
