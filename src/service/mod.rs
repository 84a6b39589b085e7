//! The application: use cases over the two backend traits, in domain types.
//!
//! - [`App::open`] opens the backends, rebuilds hot state from the record and starts the
//!   background tasks (group committer, lifecycle scheduler).
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

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{JwtKeys, TokenError};
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{EndReason, FieldViolation, PurchaseRefusal, SaleStatus};
use crate::feeds::FeedHub;
use crate::store::embedded::{MemoryHot, RedbRecords};
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
    token_ttl: Duration,
    /// Age after which reconciliation settles an in-flight reservation.
    orphan_after: Duration,
    /// Wakes the scheduler when a sale's deadlines change.
    schedule_changed: Notify,
    shutdown: CancellationToken,
}

impl App {
    /// Opens the embedded backend in `settings.data_dir`, rebuilds hot state, ensures the
    /// configured admin, and starts the background tasks (stopped by `shutdown`).
    pub async fn open(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let secret = crate::auth::load_or_create_secret(settings.jwt_secret.as_deref(), &settings.data_dir)?;
        let records = open_records(settings).await?;
        let hot = open_hot(settings).await?;
        let app = Arc::new(Self {
            committer: Committer::start(records.clone()),
            feeds: FeedHub::new(hot.clone(), clock.clone(), settings.feed_interval, shutdown.clone()),
            records,
            hot,
            clock,
            keys: JwtKeys::new(&secret),
            token_ttl: settings.token_ttl,
            orphan_after: settings.orphan_after,
            schedule_changed: Notify::new(),
            shutdown,
        });
        app.recover().await.context("rebuilding hot state from the record")?;
        if let Some((email, password)) = &settings.admin {
            app.ensure_admin(email, password).await.context("creating the configured admin")?;
        }
        if let Some(uri) = &settings.redis_uri {
            // Purchases on other nodes reach this node's watchers through Redis pub/sub.
            let node = Arc::downgrade(&app);
            let on_change = Arc::new(move |sale: crate::domain::SaleId| {
                if let Some(app) = node.upgrade() {
                    app.feeds.touch(&sale);
                }
            });
            crate::store::redis::spawn_change_listener(
                uri,
                &settings.redis_key_prefix,
                on_change,
                app.shutdown.clone(),
            );
            app.reconcile().await.context("reconciling Redis with the record")?;
            tokio::spawn(reconcile::run(app.clone(), settings.reconcile_interval));
        }
        tokio::spawn(scheduler::run(app.clone()));
        Ok(app)
    }

    /// The token keys (for the auth interceptor).
    pub fn keys(&self) -> &JwtKeys {
        &self.keys
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

/// The durable record: MongoDB when `MONGODB_URI` is set, else redb in the data directory.
async fn open_records(settings: &Settings) -> anyhow::Result<Arc<dyn RecordStore>> {
    match &settings.mongodb_uri {
        Some(uri) => {
            if settings.jwt_secret.is_none() {
                tracing::warn!("MONGODB_URI without JWT_SECRET: each node signs with its own generated secret, so tokens from one node fail on another");
            }
            let records = crate::store::mongo::connect(uri, &settings.mongodb_database)
                .await
                .context("opening the MongoDB record (MONGODB_URI)")?;
            tracing::info!(database = %settings.mongodb_database, "durable record: MongoDB");
            Ok(Arc::new(records))
        }
        None => {
            let records = RedbRecords::open(&settings.data_dir).context("opening the embedded record")?;
            tracing::info!(data_dir = %settings.data_dir.display(), "durable record: embedded (redb)");
            Ok(Arc::new(records))
        }
    }
}

/// The hot path: Redis when `REDIS_URI` is set, else in process.
async fn open_hot(settings: &Settings) -> anyhow::Result<Arc<dyn HotStore>> {
    match &settings.redis_uri {
        Some(uri) => {
            let hot = crate::store::redis::connect(uri, &settings.redis_key_prefix)
                .await
                .context("opening the Redis hot store (REDIS_URI)")?;
            tracing::info!(prefix = %settings.redis_key_prefix, "hot path: Redis");
            Ok(Arc::new(hot))
        }
        None => Ok(Arc::new(MemoryHot::default())),
    }
}
