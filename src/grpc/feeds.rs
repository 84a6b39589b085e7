//! FeedsService: WatchSale and Leaderboard streams (no token needed). Each stream follows the
//! sale's `watch` channel (see [`crate::feeds`]): the current state at once, then the newest
//! state on each change, ending after the ENDED snapshot or when the feed closes (shutdown).
//!
//! WatchSale sends the same snapshot to every watcher of a sale, so it sends bytes: each
//! published state is converted and encoded once, by the first stream that sends it, stamped
//! with the time it was published, and every other stream sends the same bytes
//! ([`super::codec`] writes them as they are). A stream's *first* snapshot is the exception: the
//! state it joins may have been published long ago (a quiet sale), and clients set their
//! countdown clocks from `server_time`, so it is encoded for that stream with the time it is
//! sent. Leaderboard messages depend on each watcher's `top_n` and are encoded per stream.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::domain::{SaleId, SaleView, UnixMillis, LEADERBOARD_MAX};
use crate::feeds::{Feed, Published};
use crate::pb;
use crate::service::{App, ServiceError};

use super::convert::{leaderboard, snapshot};

/// The FeedsService implementation.
pub struct FeedsApi {
    /// The application.
    pub app: Arc<App>,
    /// Stamps `server_time` on each WatchSale stream's first snapshot.
    pub clock: Arc<dyn Clock>,
}

type FeedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Counts open watchers in the `flashsale_watchers` gauge while alive.
struct WatcherGauge(&'static str);

impl WatcherGauge {
    fn new(feed: &'static str) -> Self {
        metrics::gauge!("flashsale_watchers", "feed" => feed).increment(1.0);
        Self(feed)
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!("flashsale_watchers", "feed" => self.0).decrement(1.0);
    }
}

/// The current state, then the newest state after each change; ends after an ENDED state, with
/// NOT_FOUND when the sale is gone for good, or when the feed closes (at shutdown, see
/// [`crate::feeds`]).
fn follow(receiver: Feed, feed: &'static str) -> impl Stream<Item = Result<Arc<Published>, Status>> + Send {
    let state = (receiver, true, WatcherGauge::new(feed));
    futures::stream::unfold(Some(state), |state| async move {
        let (mut receiver, first, gauge) = state?;
        if !first {
            receiver.changed().await.ok()?;
        }
        let published = receiver.borrow_and_update().clone();
        if published.gone {
            return Some((Err(ServiceError::SaleNotFound.into()), None));
        }
        let next = (!published.is_last()).then_some((receiver, false, gauge));
        Some((Ok(published), next))
    })
}

/// The WatchSale message for `view` at `server_time`, encoded.
fn encode_snapshot(view: &SaleView, server_time: UnixMillis) -> Bytes {
    snapshot(view, server_time).encode_to_vec().into()
}

/// The WatchSale message for a published state, stamped with its publish time: encoded by the
/// first stream that sends it, shared by the others.
fn shared_snapshot(published: &Published) -> Bytes {
    published.encoded(encode_snapshot)
}

fn sale_id(raw: &str) -> Result<SaleId, Status> {
    SaleId::parse(raw).map_err(|v| ServiceError::from(v).into())
}

#[tonic::async_trait]
impl pb::feeds_service_server::FeedsService for FeedsApi {
    /// Encoded `pb::SaleSnapshot`s (see the module's doc).
    type WatchSaleStream = FeedStream<Bytes>;
    type LeaderboardStream = FeedStream<pb::LeaderboardSnapshot>;

    async fn watch_sale(
        &self,
        request: Request<pb::WatchSaleRequest>,
    ) -> Result<Response<Self::WatchSaleStream>, Status> {
        let id = sale_id(&request.get_ref().sale_id)?;
        let receiver = self.app.watch(&id).await?;
        let clock = self.clock.clone();
        let stream = follow(receiver, "watch_sale").enumerate().map(move |(i, published)| {
            published.map(|published| match i {
                0 => encode_snapshot(&published.view, clock.now()),
                _ => shared_snapshot(&published),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> Result<Response<Self::LeaderboardStream>, Status> {
        let req = request.into_inner();
        let id = sale_id(&req.sale_id)?;
        let top_n = match req.top_n {
            0 => 10,
            n if n as usize <= LEADERBOARD_MAX => n as usize,
            _ => {
                return Err(ServiceError::from(crate::domain::FieldViolation::new(
                    "top_n",
                    format!("must be at most {LEADERBOARD_MAX}"),
                ))
                .into())
            }
        };
        let receiver = self.app.watch(&id).await?;
        // Send only when this watcher's top N or the status changed.
        let mut last: Option<pb::LeaderboardSnapshot> = None;
        let stream = follow(receiver, "leaderboard").filter_map(move |published| {
            let published = match published {
                Ok(published) => published,
                Err(status) => return futures::future::ready(Some(Err(status))),
            };
            let board = leaderboard(&published.view, top_n);
            let changed = last.as_ref().is_none_or(|prev| {
                prev.entries != board.entries || prev.status != board.status || prev.total_buyers != board.total_buyers
            });
            if changed {
                last = Some(board.clone());
            }
            futures::future::ready(changed.then_some(Ok(board)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use tonic::codec::{EncodeBody, Encoder, SingleMessageCompressionOverride};
    use tonic_prost::ProstEncoder;

    use super::*;
    use crate::domain::{EndReason, LeaderboardEntry, Money, ProductId, SaleRules, SaleStatus};
    use crate::grpc::codec::{PreEncoded, SNAPSHOT_BUFFER};

    /// An ended sale with every optional field set.
    fn view() -> SaleView {
        SaleView {
            sale_id: SaleId::generate(),
            product_id: ProductId::generate(),
            version: 42,
            rules: SaleRules {
                allocated: 500,
                per_user_limit: 3,
                max_per_purchase: 2,
                start: UnixMillis(1_893_456_000_000),
                end: UnixMillis(1_893_456_900_000),
                unit_price: Money::parse(1999, "EUR").unwrap(),
                hold_seconds: 0,
                queue: None,
            },
            status: SaleStatus::Ended,
            end_reason: Some(EndReason::SoldOut),
            ended_at: Some(UnixMillis(1_893_456_123_456)),
            sold: 500,
            held: 0,
            waitlist: 0,
            in_flight: 0,
            remaining: 0,
            leaderboard: vec![LeaderboardEntry {
                rank: 1,
                display_name: "Ann".into(),
                units: 3,
                first_purchase_at: UnixMillis(1_893_456_000_001),
            }],
            total_buyers: 250,
            created_at: UnixMillis(1_893_455_000_000),
            line: None,
        }
    }

    /// The HTTP body of a server stream of `items` sent through `encoder`: gRPC frames, as on
    /// the wire.
    async fn body<E>(encoder: E, items: Vec<E::Item>) -> Bytes
    where
        E: Encoder<Error = Status> + Send + 'static,
        E::Item: Send + 'static,
    {
        let source = stream::iter(items.into_iter().map(Ok));
        let body = EncodeBody::new_server(encoder, source, None, SingleMessageCompressionOverride::default(), None);
        axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.expect("the body")
    }

    #[tokio::test]
    async fn watch_sale_sends_what_prost_would_send_for_the_published_state() {
        let published_at = UnixMillis(1_893_456_100_250);
        let published = Published::new(view(), published_at);
        let shared = shared_snapshot(&published);
        let again = shared_snapshot(&published);
        assert_eq!(shared.as_ptr(), again.as_ptr(), "a published state is encoded once, then shared");
        assert!(shared.len() + 5 <= SNAPSHOT_BUFFER, "a snapshot and its frame header fit a stream's buffer");

        // Stamped with the publish time, byte for byte what prost's codec sends for the message.
        let expected = snapshot(&published.view, published_at);
        assert_eq!(
            body(PreEncoded, vec![shared, again]).await,
            body(ProstEncoder::default(), vec![expected.clone(), expected]).await
        );

        // A stream's first message is stamped when it is sent.
        let sent_at = UnixMillis(published_at.0 + 3_600_000);
        assert_eq!(
            body(PreEncoded, vec![encode_snapshot(&published.view, sent_at)]).await,
            body(ProstEncoder::default(), vec![snapshot(&published.view, sent_at)]).await
        );
    }
}
