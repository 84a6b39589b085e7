//! Change notifications between nodes: every script that changes a sale publishes on the sale's
//! channel; each node runs one subscriber that turns messages into calls of its [`ChangeSink`]
//! (its feeds then re-read the sale, coalesced as usual).
//!
//! On one instance the subscriber takes every sale's channel with one pattern (`PSUBSCRIBE`).
//! In a Cluster, classic pub/sub would copy every message to every node of the cluster; sharded
//! pub/sub keeps a sale's channel on its slot's shard instead, but has no patterns: the
//! subscriber follows exactly the sales the sink names ([`ChangeSink::followed`], the sales this
//! node's watchers watch), subscribing and unsubscribing as that set changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::SaleId;

use super::keys::change_channel;
use super::{cluster_client, Topology};
use crate::retry::Backoff;
use crate::store::redact_uri as redact;
use crate::store::ChangeSink;

/// Pause after a failed subscription, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle subscription checks that the server is still there (a silently dropped
/// connection would otherwise never deliver another message nor close).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Subscribes to the change channels of every sale under `key_prefix` at `uri` (one instance;
/// see [`change_listener`] for a Cluster) and tells `sink` of each message, until `shutdown`.
/// After connecting, and again after every reconnection (a restarted Redis, a dropped
/// connection), it tells `sink` it resubscribed, since messages
/// published while it was not subscribed are lost. The sink runs on the listener's task: it
/// should only mark feeds dirty (as `FeedHub::touch` does), never block.
pub fn spawn_change_listener(
    uri: &str,
    key_prefix: &str,
    sink: Arc<dyn ChangeSink>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(change_listener(uri, key_prefix, Topology::Single, sink, shutdown))
}

/// The listener of [`spawn_change_listener`] on `topology`, for the caller to spawn (the
/// service tracks it with its other tasks).
pub fn change_listener(
    uri: &str,
    key_prefix: &str,
    topology: Topology,
    sink: Arc<dyn ChangeSink>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let uri = uri.to_owned();
    let listener = Listener { prefix: key_prefix.to_owned(), sink };
    async move {
        // One instance: one client for every subscription, its URI checked once.
        let single = match topology {
            Topology::Cluster => None,
            Topology::Single => match ::redis::Client::open(uri.as_str()) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::error!(uri = %redact(&uri), error = %error, "invalid Redis URI; no change notifications");
                    return;
                }
            },
        };
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            let attempt = match &single {
                Some(client) => listener.listen(client, &shutdown, &mut backoff).await,
                None => listener.follow_sharded(&uri, &shutdown, &mut backoff).await,
            };
            match attempt {
                Ok(()) => return,
                Err(error) => tracing::warn!(
                    uri = %redact(&uri), ?topology, error = format!("{error:#}"),
                    "Redis change notifications interrupted; subscribing again"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_pause()) => {}
            }
        }
    }
}

/// What a push asks of the Cluster subscriber.
enum Pushed {
    Nothing,
    /// The subscription to this sale's changes ended (asked, or its slot moved).
    Unsubscribed(SaleId),
    /// A node connection dropped: subscriptions on it are gone until a new client takes them.
    Dropped,
}

/// How often a Cluster subscriber compares the sales it follows with the sink's.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

struct Listener {
    prefix: String,
    sink: Arc<dyn ChangeSink>,
}

impl Listener {
    /// One subscription, until shutdown (`Ok`) or until the connection fails (`Err`). Resets
    /// `backoff` once subscribed.
    async fn listen(
        &self,
        client: &::redis::Client,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(self.pattern()).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe) => subscribed??,
        };
        backoff.reset();
        self.sink.resubscribed();
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = messages.next() => match message {
                    Some(message) => {
                        if let Some(sale) = self.sale_of(message.get_channel_name()) {
                            self.sink.changed(sale);
                        }
                    }
                    None => anyhow::bail!("the subscription connection closed"),
                },
                _ = ping.tick() => {
                    tokio::time::timeout(PING_TIMEOUT, sink.ping::<::redis::Value>()).await??;
                }
            }
        }
    }

    /// One Cluster connection (RESP3: subscriptions and commands share it), until shutdown
    /// (`Ok`) or until one of its node connections drops or a subscription fails (`Err`): the
    /// caller then starts over with a new client, which reads the slot map afresh (a failover
    /// moved a shard's slots to its promoted replica) and subscribes to every followed sale
    /// again. Every confirmation makes the sale's feeds re-read it, and a new connection makes
    /// every feed re-read, so nothing published while a subscription was down stays unseen.
    async fn follow_sharded(
        &self,
        uri: &str,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let (pushes, mut messages) = mpsc::unbounded_channel::<PushInfo>();
        let client = cluster_client(uri)?.use_protocol(::redis::ProtocolVersion::RESP3).push_sender(pushes).build()?;
        let mut conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            conn = tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.get_async_connection()) => conn??,
        };
        backoff.reset();
        self.sink.resubscribed();
        let mut followed: HashSet<SaleId> = HashSet::new();
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                push = messages.recv() => match push.map(|push| self.pushed(push)) {
                    Some(Pushed::Nothing) => {}
                    // The server ended a subscription (its slot moved): taken again next tick.
                    Some(Pushed::Unsubscribed(sale)) => {
                        followed.remove(&sale);
                    }
                    Some(Pushed::Dropped) => anyhow::bail!("a connection to a node of the Cluster dropped"),
                    None => anyhow::bail!("the Cluster connection closed"),
                },
                _ = tick.tick() => {
                    let wanted: HashSet<SaleId> = self.sink.followed().into_iter().collect();
                    // One sale per command: each channel is on its own sale's slot.
                    for sale in wanted.difference(&followed).cloned().collect::<Vec<_>>() {
                        let subscribe = conn.ssubscribe(change_channel(&self.prefix, &sale));
                        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe).await {
                            Ok(Ok(())) => {
                                followed.insert(sale);
                            }
                            // Its shard is failing over, or the slot map is stale: start over.
                            outcome => anyhow::bail!("could not subscribe to the changes of sale {sale}: {outcome:?}"),
                        }
                    }
                    for sale in followed.difference(&wanted).cloned().collect::<Vec<_>>() {
                        let unsubscribe = conn.sunsubscribe(change_channel(&self.prefix, &sale));
                        if let Ok(Ok(())) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, unsubscribe).await {
                            followed.remove(&sale);
                        }
                    }
                }
            }
        }
    }

    /// A push from the Cluster connection: a message, a subscription confirmed or ended, or a
    /// lost connection.
    fn pushed(&self, push: PushInfo) -> Pushed {
        let channel = || match push.data.first() {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok().and_then(|c| self.sale_of(c)),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage | PushKind::SSubscribe => {
                if let Some(sale) = channel() {
                    self.sink.changed(sale);
                }
                Pushed::Nothing
            }
            PushKind::SUnsubscribe => channel().map_or(Pushed::Nothing, Pushed::Unsubscribed),
            PushKind::Disconnection => Pushed::Dropped,
            _ => Pushed::Nothing,
        }
    }

    /// The glob matching every sale's channel under this prefix (the prefix's glob characters
    /// escaped).
    fn pattern(&self) -> String {
        let mut pattern = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("{sale:*}:changes");
        pattern
    }

    /// The sale a channel belongs to, if it is one of ours.
    fn sale_of(&self, channel: &str) -> Option<SaleId> {
        let id = channel.strip_prefix(self.prefix.as_str())?.strip_prefix("{sale:")?.strip_suffix("}:changes")?;
        let sale = SaleId::parse(id).ok()?;
        (change_channel(&self.prefix, &sale) == channel).then_some(sale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_back_to_their_sale() {
        struct Nobody;
        impl ChangeSink for Nobody {
            fn changed(&self, _: SaleId) {}
            fn resubscribed(&self) {}
            fn followed(&self) -> Vec<SaleId> {
                Vec::new()
            }
        }
        let listener = Listener { prefix: "fs*:".into(), sink: Arc::new(Nobody) };
        let sale = SaleId::parse("abc-1").unwrap();
        assert_eq!(listener.sale_of(&change_channel("fs*:", &sale)), Some(sale));
        assert_eq!(listener.sale_of("other:{sale:abc-1}:changes"), None);
        assert_eq!(listener.sale_of("fs*:{sale:a b}:changes"), None);
        assert_eq!(listener.pattern(), "fs\\*:{sale:*}:changes");
    }
}
