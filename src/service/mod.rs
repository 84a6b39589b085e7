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
mod purchase;
mod reconcile;
mod scheduler;
mod users;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtKeys, TokenError};
use crate::backends::Backends;
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{EndReason, FieldViolation, PurchaseRefusal, SaleStatus};
use crate::feeds::FeedHub;
use crate::passwords::{PasswordPool, PoolError};
use crate::store::{HotError, HotStore, RecordStore, StoreError};

pub use admin::NewSale;
use committer::Committer;
pub use purchase::Purchased;
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
    /// Wakes the scheduler when a sale's deadlines change.
    schedule_changed: Notify,
    /// Work that must run to its end once started, whatever happens to the request that started
    /// it (see [`App::detached`]), and the background tasks; shutdown waits for them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
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
        let Backends { records, hot, shared } = backends;
        let tasks = TaskTracker::new();
        let app = Arc::new(Self {
            committer: Committer::start(records.clone()),
            feeds: FeedHub::new(hot.clone(), clock.clone(), settings.feed_interval, shutdown.clone()),
            records,
            hot,
            clock,
            keys,
            passwords: PasswordPool::start(settings.password_pool).context("starting the password hashing threads")?,
            token_ttl: settings.token_ttl,
            orphan_after: settings.orphan_after,
            in_flight_wait: settings.in_flight_wait,
            schedule_changed: Notify::new(),
            tasks,
            shutdown,
        });
        // Start-up work is not a request: nothing cancels it but the process ending, and after a
        // crash the next start does it again from the record.
        app.recover().await.context("rebuilding hot state from the record")?;
        if let Some((email, password)) = &settings.admin {
            app.ensure_admin(email, password).await.context("creating the configured admin")?;
        }
        if let Some(changes) = shared {
            // Purchases on other nodes reach this node's watchers through the shared store.
            let node = Arc::downgrade(&app);
            let on_change = Arc::new(move |sale: crate::domain::SaleId| {
                if let Some(app) = node.upgrade() {
                    app.feeds.touch(&sale);
                }
            });
            changes.spawn(on_change, app.shutdown.clone());
            app.reconcile().await.context("reconciling Redis with the record")?;
            app.tasks.spawn(reconcile::run(app.clone(), settings.reconcile_interval));
        }
        app.tasks.spawn(scheduler::run(app.clone()));
        Ok(app)
    }

    /// The token keys (for the auth interceptor).
    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    /// Waits, at most `limit`, for the work started by requests and the background tasks to
    /// finish (they stop at shutdown); true when everything finished.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
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

    /// Loads every open sale's hot state from its durable orders, and ends sales that were
    /// sold out when the process stopped.
    async fn recover(&self) -> Result<(), ServiceError> {
        for sale in self.records.open_sales().await? {
            let orders = self.records.orders_of_sale(&sale.id).await?;
            self.hot.load_sale(&sale, &orders).await?;
            if sale.sold >= sale.rules.allocated {
                self.end_sale_now(&sale.id, EndReason::SoldOut).await?;
            }
            tracing::info!(sale = %sale.id, sold = sale.sold, allocated = sale.rules.allocated, "sale restored");
        }
        Ok(())
    }
}
