//! Change notifications between nodes: every script that changes a sale publishes on the sale's
//! channel; each node runs one subscriber that turns messages into calls of its [`ChangeSink`]
//! (its feeds then re-read the sale, coalesced as usual).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::SaleId;

use super::keys::change_channel;
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

/// Subscribes to the change channels of every sale under `key_prefix` at `uri` and tells `sink`
/// of each message, until `shutdown`. After connecting, and again after every reconnection (a
/// restarted Redis, a dropped connection), it tells `sink` it resubscribed, since messages
/// published while it was not subscribed are lost. The sink runs on the listener's task: it
/// should only mark feeds dirty (as `FeedHub::touch` does), never block.
pub fn spawn_change_listener(
    uri: &str,
    key_prefix: &str,
    sink: Arc<dyn ChangeSink>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(change_listener(uri, key_prefix, sink, shutdown))
}

/// The listener of [`spawn_change_listener`], for the caller to spawn (the service tracks it
/// with its other tasks).
pub fn change_listener(
    uri: &str,
    key_prefix: &str,
    sink: Arc<dyn ChangeSink>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let uri = uri.to_owned();
    let listener = Listener { prefix: key_prefix.to_owned(), sink };
    async move {
        let client = match ::redis::Client::open(uri.as_str()) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(uri = %redact(&uri), error = %error, "invalid Redis URI; no change notifications");
                return;
            }
        };
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            match listener.listen(&client, &shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(
                    uri = %redact(&uri), error = format!("{error:#}"),
                    "Redis change notifications interrupted; resubscribing"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_pause()) => {}
            }
        }
    }
}

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
        }
        let listener = Listener { prefix: "fs*:".into(), sink: Arc::new(Nobody) };
        let sale = SaleId::parse("abc-1").unwrap();
        assert_eq!(listener.sale_of(&change_channel("fs*:", &sale)), Some(sale));
        assert_eq!(listener.sale_of("other:{sale:abc-1}:changes"), None);
        assert_eq!(listener.sale_of("fs*:{sale:a b}:changes"), None);
        assert_eq!(listener.pattern(), "fs\\*:{sale:*}:changes");
    }
}
