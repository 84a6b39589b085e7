//! Chooses and builds the backends from the settings, once, at start-up: the durable record
//! (MongoDB when `MONGODB_URI` is set, else redb in the data directory) and the hot path (Redis
//! when `REDIS_URI` is set, else in process). The service receives them built
//! ([`crate::service::App::start`]) and never looks at the settings to pick one; tests hand it
//! their own (wrapped to pause or fail at a chosen step).

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::embedded::{MemoryHot, MemoryQueue, RedbRecords};
use crate::store::redis::Topology;
use crate::store::{ChangeSink, HotStore, QueueStore, RecordStore};

/// The two backends the service runs on, and where other nodes' changes come from.
pub struct Backends {
    /// The durable record.
    pub records: Arc<dyn RecordStore>,
    /// The hot path.
    pub hot: Arc<dyn HotStore>,
    /// The waiting rooms (with the hot state: in process, or in Redis).
    pub queue: Arc<dyn QueueStore>,
    /// Set when the hot state is shared with other nodes (Redis): their changes arrive here, and
    /// the node reconciles the shared state with the record.
    pub shared: Option<ChangeSource>,
}

/// Change notifications of a shared hot state (Redis pub/sub).
#[derive(Debug, Clone)]
pub struct ChangeSource {
    uri: String,
    prefix: String,
    topology: Topology,
}

impl ChangeSource {
    /// Redis at `uri` (one instance, or a Cluster's seeds), keys under `prefix`.
    pub fn redis(uri: &str, prefix: &str, topology: Topology) -> Self {
        Self { uri: uri.to_owned(), prefix: prefix.to_owned(), topology }
    }

    /// Tells `sink` of every change another node makes, until `shutdown` (the caller spawns it).
    pub fn listen(
        &self,
        sink: Arc<dyn ChangeSink>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::store::redis::change_listener(&self.uri, &self.prefix, self.topology, sink, shutdown)
    }
}

impl Backends {
    /// The backends the settings name.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let records: Arc<dyn RecordStore> = match &settings.mongodb_uri {
            Some(uri) => {
                if settings.jwt_secret.is_none() {
                    tracing::warn!("MONGODB_URI without JWT_SECRET: each node signs with its own generated secret, so tokens from one node fail on another");
                }
                let records = crate::store::mongo::connect(uri, &settings.mongodb_database)
                    .await
                    .context("opening the MongoDB record (MONGODB_URI)")?;
                tracing::info!(database = %settings.mongodb_database, "durable record: MongoDB");
                Arc::new(records)
            }
            None => {
                let records = RedbRecords::open(&settings.data_dir).context("opening the embedded record")?;
                tracing::info!(data_dir = %settings.data_dir.display(), "durable record: embedded (redb)");
                Arc::new(records)
            }
        };
        let (hot, queue, shared): (Arc<dyn HotStore>, Arc<dyn QueueStore>, _) = match &settings.redis_uri {
            Some(uri) => {
                let topology = Topology::of(uri, settings.redis_cluster);
                let hot = crate::store::redis::connect_to(uri, &settings.redis_key_prefix, topology)
                    .await
                    .context("opening the Redis hot store (REDIS_URI)")?;
                tracing::info!(prefix = %settings.redis_key_prefix, ?topology, "hot path: Redis");
                let hot = Arc::new(hot);
                (hot.clone(), hot, Some(ChangeSource::redis(uri, &settings.redis_key_prefix, topology)))
            }
            None => (Arc::new(MemoryHot::default()), Arc::new(MemoryQueue::default()), None),
        };
        Ok(Self { records, hot, queue, shared })
    }
}
