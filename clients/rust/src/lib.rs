//! A Rust client of flashsale: the API generated from `proto/` ([`pb`]) and typed helpers for
//! what buyers' apps, watchers and rehearsals do — connect, sign in, buy with an idempotency
//! key (retrying what the server says is safe to retry, with the same key), watch a sale — plus
//! token minting for rehearsals ([`mint`]). It speaks gRPC only: nothing of the server (its
//! storage drivers, its runtime) comes with it.
//!
//! ```no_run
//! # async fn buyer() -> Result<(), flashsale_client::Error> {
//! use flashsale_client::Client;
//!
//! let client = Client::connect("http://localhost:50051").await?;
//! let buyer = client.login("ann@example.com", "correct horse").await?;
//! let key = flashsale_client::new_key(); // keep it to retry this purchase
//! let bought = buyer.buy("SALE-ID", 2, &key).await?;
//! println!("order {} for {} units", bought.order.id, bought.order.quantity);
//! let mut feed = client.watch("SALE-ID").await?;
//! while let Some(snapshot) = feed.message().await? {
//!     println!("{} sold, {} left", snapshot.sold, snapshot.remaining);
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub mod mint;

/// The largest page the listings give.
const PAGE_MAX: i32 = 1000;

/// The API, generated from `proto/flashsale/v1` (clients only).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flashsale.v1");
}

use pb::admin_service_client::AdminServiceClient;
use pb::auth_service_client::AuthServiceClient;
use pb::feeds_service_client::FeedsServiceClient;
use pb::orders_service_client::OrdersServiceClient;
use pb::purchase_service_client::PurchaseServiceClient;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a URI, or no connection could be made.
    #[error("cannot reach the server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// A token is not valid HTTP header text.
    #[error("the token cannot be sent as a header")]
    BadToken,
    /// The server answered with an error.
    #[error("{0}")]
    Refused(Refusal),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self::Refused(Refusal::from(status))
    }
}

/// A refusal as the server explains it: the gRPC code, the machine-readable reason of its
/// `google.rpc.ErrorInfo` (e.g. `SOLD_OUT`, see `ErrorReason` in `common.proto`), its metadata
/// and the `google.rpc.RetryInfo` delay when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?} {reason}: {message}")]
pub struct Refusal {
    /// The gRPC status code.
    pub code: Code,
    /// The ErrorInfo reason; empty when the answer had none (a transport failure).
    pub reason: String,
    /// The status message, for people.
    pub message: String,
    /// The ErrorInfo metadata (e.g. `remaining` of INSUFFICIENT_STOCK).
    pub metadata: std::collections::HashMap<String, String>,
    /// When a retry may succeed, if the server said.
    pub retry_after: Option<Duration>,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        Self {
            code: status.code(),
            reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
            message: status.message().to_owned(),
            metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
            retry_after: details.retry_info().and_then(|r| r.retry_delay),
        }
    }
}

impl Refusal {
    /// Whether the same call may succeed later: a backend was unavailable (retry with the same
    /// idempotency key), sign-ins were at capacity, or the caller went too fast.
    pub fn retryable(&self) -> bool {
        self.code == Code::Unavailable || self.reason == "RATE_LIMITED"
    }

    /// Whether the sale has nothing left for this purchase.
    pub fn is_sold_out(&self) -> bool {
        match self.reason.as_str() {
            "SOLD_OUT" | "INSUFFICIENT_STOCK" => true,
            "SALE_ENDED" => self.metadata.get("end_reason").is_some_and(|r| r.contains("SOLD_OUT")),
            _ => false,
        }
    }
}

/// A fresh idempotency key: one per purchase intent, kept to retry that purchase.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// How [`Client::buy`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Calls in all, the first included.
    pub attempts: u32,
    /// The first pause (doubling, up to `max_pause`), unless the server says when.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 8, first_pause: Duration::from_millis(50), max_pause: Duration::from_secs(2) }
    }
}

/// A connection to a flashsale server, with or without a token. Cheap to clone: clones share
/// the connection (HTTP/2 multiplexes their calls).
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    bearer: Option<AsciiMetadataValue>,
    retry: RetryPolicy,
}

/// A purchase the server acknowledged: the order is durable.
#[derive(Debug, Clone)]
pub struct Bought {
    /// The order.
    pub order: pb::Order,
    /// True when the server answered with the first order of this key (a retry).
    pub replayed: bool,
}

impl Client {
    /// Connects to `addr` (e.g. `http://localhost:50051`).
    pub async fn connect(addr: impl Into<String>) -> Result<Self, Error> {
        let channel = Endpoint::from_shared(addr.into())?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// Connects over TLS to `addr` (e.g. `https://shop.example:50051`), trusting the
    /// certificates of `ca_pem` (PEM: the server's certificate authority, or its self-signed
    /// certificate). The server's name in `addr` must match its certificate.
    pub async fn connect_tls(addr: impl Into<String>, ca_pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        let channel = Endpoint::from_shared(addr.into())?.tls_config(tls)?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// A client on a channel made elsewhere.
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel, bearer: None, retry: RetryPolicy::default() }
    }

    /// The same connection, calling with `token` (`authorization: Bearer <token>`).
    pub fn with_token(&self, token: &str) -> Result<Self, Error> {
        let bearer = format!("Bearer {token}").parse().map_err(|_| Error::BadToken)?;
        Ok(Self { bearer: Some(bearer), ..self.clone() })
    }

    /// The same connection, retrying purchases as `retry` says.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self { retry, ..self.clone() }
    }

    /// The connection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `message` as a request, with the token if there is one.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        request
    }

    /// AuthService.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    /// AdminService (needs an admin token).
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// PurchaseService (needs a token).
    pub fn purchases(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::new(self.channel.clone())
    }

    /// OrdersService (needs an admin or fulfillment token).
    pub fn orders(&self) -> OrdersServiceClient<Channel> {
        OrdersServiceClient::new(self.channel.clone())
    }

    /// FeedsService (no token).
    pub fn feeds(&self) -> FeedsServiceClient<Channel> {
        FeedsServiceClient::new(self.channel.clone())
    }

    /// Registers a buyer account and returns a client signed in as it.
    pub async fn register(&self, email: &str, display_name: &str, password: &str) -> Result<Self, Error> {
        let request =
            pb::RegisterRequest { email: email.into(), display_name: display_name.into(), password: password.into() };
        let session = self.auth().register(request).await?.into_inner();
        self.with_token(&session.access_token)
    }

    /// Logs in and returns a client signed in as that account.
    pub async fn login(&self, email: &str, password: &str) -> Result<Self, Error> {
        let session =
            self.auth().login(pb::LoginRequest { email: email.into(), password: password.into() }).await?.into_inner();
        self.with_token(&session.access_token)
    }

    /// Buys `quantity` units of `sale_id` with the idempotency key `key`. An answer that may be
    /// retried (UNAVAILABLE, RATE_LIMITED) is retried with the same key — the server promises it
    /// never buys twice — waiting as RetryInfo says or with a growing pause, up to the retry
    /// policy's attempts; any other refusal is returned at once.
    pub async fn buy(&self, sale_id: &str, quantity: u32, key: &str) -> Result<Bought, Error> {
        self.buy_admitted(sale_id, quantity, key, "").await
    }

    /// [`Client::buy`] in a sale with a waiting room, with the admission pass
    /// ([`Client::wait_for_admission`]).
    pub async fn buy_admitted(&self, sale_id: &str, quantity: u32, key: &str, pass: &str) -> Result<Bought, Error> {
        let message = pb::PurchaseRequest {
            sale_id: sale_id.into(),
            quantity,
            idempotency_key: key.into(),
            admission_pass: pass.into(),
        };
        let mut pause = self.retry.first_pause;
        let mut attempt = 1;
        loop {
            match self.purchases().purchase(self.request(message.clone())).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let order =
                        response.order.ok_or_else(|| Status::internal("an acknowledged purchase without its order"))?;
                    return Ok(Bought { order, replayed: response.replayed });
                }
                Err(status) => {
                    let refusal = Refusal::from(status);
                    if !refusal.retryable() || attempt >= self.retry.attempts {
                        return Err(Error::Refused(refusal));
                    }
                    tokio::time::sleep(refusal.retry_after.unwrap_or(pause)).await;
                    pause = (pause * 2).min(self.retry.max_pause);
                    attempt += 1;
                }
            }
        }
    }

    /// The caller's orders, in one sale when `sale_id` is not empty: every page.
    /// Enters a sale's waiting room: the stream of the caller's place.
    pub async fn enter_queue(&self, sale_id: &str) -> Result<tonic::Streaming<pb::QueueUpdate>, Error> {
        let request = self.request(pb::EnterQueueRequest { sale_id: sale_id.into() });
        Ok(self.purchases().enter_queue(request).await?.into_inner())
    }

    /// Waits in a sale's waiting room until admitted, and returns the admission (its pass in
    /// `admission_pass`); `None` when the room closed or the admission expired first, or the
    /// stream ended. A dropped stream is entered again (the place is kept).
    pub async fn wait_for_admission(&self, sale_id: &str) -> Result<Option<pb::QueueUpdate>, Error> {
        loop {
            let mut updates = self.enter_queue(sale_id).await?;
            loop {
                match updates.message().await {
                    Ok(Some(update)) => match pb::QueueState::try_from(update.state) {
                        Ok(pb::QueueState::Admitted) => return Ok(Some(update)),
                        Ok(pb::QueueState::Closed | pb::QueueState::Expired) => return Ok(None),
                        _ => {}
                    },
                    Ok(None) => return Ok(None),
                    Err(status) if Refusal::from(status.clone()).retryable() => break,
                    Err(status) => return Err(status.into()),
                }
            }
            tokio::time::sleep(self.retry.first_pause).await;
        }
    }

    pub async fn my_orders(&self, sale_id: &str) -> Result<Vec<pb::Order>, Error> {
        let mut orders = Vec::new();
        let mut page_token = String::new();
        loop {
            let ask = pb::ListMyOrdersRequest { sale_id: sale_id.into(), page_size: PAGE_MAX, page_token };
            let page = self.purchases().list_my_orders(self.request(ask)).await?.into_inner();
            orders.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(orders);
            }
            page_token = page.next_page_token;
        }
    }

    /// Every order of a sale, oldest first, walking the pages of ListSaleOrders (admin or
    /// fulfillment token).
    pub async fn sale_orders(&self, sale_id: &str) -> Result<Vec<pb::Order>, Error> {
        let mut orders = Vec::new();
        let mut page_token = String::new();
        loop {
            let ask = pb::ListSaleOrdersRequest {
                sale_id: sale_id.into(),
                page_size: PAGE_MAX,
                page_token,
                ..Default::default()
            };
            let page = self.orders().list_sale_orders(self.request(ask)).await?.into_inner();
            orders.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(orders);
            }
            page_token = page.next_page_token;
        }
    }

    /// Follows the order events after `after_sequence` (0: from the oldest kept), of one sale
    /// when `sale_id` is not empty (admin or fulfillment token).
    pub async fn follow_orders(
        &self,
        after_sequence: u64,
        sale_id: &str,
    ) -> Result<tonic::Streaming<pb::OrderEvent>, Error> {
        let request = self.request(pb::WatchOrdersRequest { after_sequence, sale_id: sale_id.into() });
        Ok(self.orders().watch_orders(request).await?.into_inner())
    }

    /// Follows a sale: a full snapshot at once, then the newest state on each change; the
    /// stream ends after the ENDED snapshot.
    pub async fn watch(&self, sale_id: &str) -> Result<tonic::Streaming<pb::SaleSnapshot>, Error> {
        let request = pb::WatchSaleRequest { sale_id: sale_id.into() };
        Ok(self.feeds().watch_sale(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: Code, reason: &str) -> Refusal {
        let mut details = tonic_types::ErrorDetails::new();
        details.set_error_info(reason, "flashsale.v1", std::collections::HashMap::new());
        Refusal::from(Status::with_error_details(code, "refused", details))
    }

    #[test]
    fn what_may_be_retried() {
        assert!(refusal(Code::Unavailable, "BACKEND_UNAVAILABLE").retryable());
        assert!(refusal(Code::Unavailable, "SIGN_IN_BUSY").retryable());
        assert!(refusal(Code::ResourceExhausted, "RATE_LIMITED").retryable());
        assert!(!refusal(Code::ResourceExhausted, "SOLD_OUT").retryable());
        assert!(refusal(Code::ResourceExhausted, "SOLD_OUT").is_sold_out());
        assert_eq!(refusal(Code::ResourceExhausted, "SOLD_OUT").reason, "SOLD_OUT");
    }

    #[test]
    fn keys_are_fresh() {
        assert_ne!(new_key(), new_key());
    }
}
