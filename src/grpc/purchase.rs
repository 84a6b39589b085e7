//! PurchaseService: buying, paying or cancelling holds, the waitlist, and reading one's own
//! orders (buyer or admin token; ConfirmOrder also takes a payments token, which may call
//! nothing else).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::domain::{IdempotencyKey, OrderId, OrderStatus, SaleId, SaleStatus};
use crate::feeds::Feed;
use crate::pb;
use crate::service::{App, ServiceError};

use super::convert::{page_ask, pb_status, queue_update, timestamp, Violations};
use super::error::reason_of;
use super::{require_buyer, require_payer, RateLimits};

/// Shortest time between two reads of one WatchMyOrders stream's orders: a busy sale changes
/// every feed interval, and each read is a query of the record.
const MY_ORDERS_PACE: Duration = Duration::from_secs(1);

fn order_id(raw: &str) -> Result<OrderId, Status> {
    OrderId::parse(raw).map_err(|v| ServiceError::from(v).into())
}

fn sale_id(raw: &str) -> Result<SaleId, Status> {
    SaleId::parse(raw).map_err(|v| ServiceError::from(v).into())
}

/// The PurchaseService implementation.
pub struct PurchaseApi {
    /// The application.
    pub app: Arc<App>,
    /// Limits per buyer and per address.
    pub limits: Arc<RateLimits>,
}

#[tonic::async_trait]
impl pb::purchase_service_server::PurchaseService for PurchaseApi {
    async fn purchase(&self, request: Request<pb::PurchaseRequest>) -> Result<Response<pb::PurchaseResponse>, Status> {
        let caller = require_buyer(&request)?;
        let peer = self.limits.client_address(&request);
        let req = request.into_inner();
        let result = async {
            self.limits.purchase(&caller, peer)?;
            let mut v = Violations::default();
            let sale_id = v.check(SaleId::parse(&req.sale_id));
            let key = v.check(IdempotencyKey::parse(&req.idempotency_key));
            v.require(req.quantity >= 1, "quantity", "must be at least 1");
            let (sale_id, key) = v.finish((|| Some((sale_id?, key?)))())?;
            self.app.purchase_with_pass(&caller, sale_id, req.quantity, key, &req.admission_pass).await
        }
        .await;
        let outcome = match &result {
            Ok(purchased) if purchased.replayed => "REPLAYED",
            Ok(_) => "OK",
            Err(error) => reason_of(error).as_str_name(),
        };
        metrics::counter!("flashsale_purchases_total", "outcome" => outcome).increment(1);
        let purchased = result?;
        Ok(Response::new(pb::PurchaseResponse { order: Some((&purchased.order).into()), replayed: purchased.replayed }))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = require_buyer(&request)?;
        let id = OrderId::parse(&request.get_ref().order_id).map_err(crate::service::ServiceError::from)?;
        Ok(Response::new((&self.app.get_order(&caller, &id).await?).into()))
    }

    async fn list_my_orders(
        &self,
        request: Request<pb::ListMyOrdersRequest>,
    ) -> Result<Response<pb::ListMyOrdersResponse>, Status> {
        let caller = require_buyer(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let sale = match req.sale_id.as_str() {
            "" => Some(None),
            raw => v.check(SaleId::parse(raw)).map(Some),
        };
        let ask = page_ask(&mut v, req.page_size, &req.page_token);
        let (sale, ask) = v.finish((|| Some((sale?, ask?)))())?;
        let page = self.app.list_my_orders(&caller.user_id, sale.as_ref(), &ask).await?;
        Ok(Response::new(pb::ListMyOrdersResponse {
            orders: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_token,
        }))
    }

    async fn confirm_order(
        &self,
        request: Request<pb::ConfirmOrderRequest>,
    ) -> Result<Response<pb::ConfirmOrderResponse>, Status> {
        let caller = require_payer(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let id = v.check(OrderId::parse(&req.order_id));
        let reference = &req.payment_reference;
        v.require(
            (1..=128).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_graphic()),
            "payment_reference",
            "must be 1 to 128 printable ASCII characters",
        );
        let id = v.finish(id)?;
        let answer = self.app.confirm_order(&caller, &id, req.payment_reference).await?;
        Ok(Response::new(pb::ConfirmOrderResponse { order: Some((&answer.order).into()), replayed: answer.replayed }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = require_buyer(&request)?;
        let id = order_id(&request.get_ref().order_id)?;
        let answer = self.app.cancel_order(&caller, &id).await?;
        Ok(Response::new(pb::CancelOrderResponse { order: Some((&answer.order).into()), replayed: answer.replayed }))
    }

    async fn join_waitlist(
        &self,
        request: Request<pb::JoinWaitlistRequest>,
    ) -> Result<Response<pb::JoinWaitlistResponse>, Status> {
        let caller = require_buyer(&request)?;
        let peer = self.limits.client_address(&request);
        let req = request.into_inner();
        // Joining is as cheap for a client as a purchase: the same limits.
        self.limits.purchase(&caller, peer)?;
        let mut v = Violations::default();
        let sale = v.check(SaleId::parse(&req.sale_id));
        v.require(req.quantity >= 1, "quantity", "must be at least 1");
        let sale = v.finish(sale)?;
        self.app.check_admission(&caller, &sale, &req.admission_pass).await?;
        let place = self.app.join_waitlist(&caller, sale, req.quantity).await?;
        Ok(Response::new(pb::JoinWaitlistResponse { place: Some(place.into()) }))
    }

    async fn leave_waitlist(
        &self,
        request: Request<pb::LeaveWaitlistRequest>,
    ) -> Result<Response<pb::LeaveWaitlistResponse>, Status> {
        let caller = require_buyer(&request)?;
        let sale = sale_id(&request.get_ref().sale_id)?;
        let left = self.app.leave_waitlist(&caller, &sale).await?;
        Ok(Response::new(pb::LeaveWaitlistResponse { left }))
    }

    type EnterQueueStream = Pin<Box<dyn Stream<Item = Result<pb::QueueUpdate, Status>> + Send>>;

    async fn enter_queue(
        &self,
        request: Request<pb::EnterQueueRequest>,
    ) -> Result<Response<Self::EnterQueueStream>, Status> {
        let caller = require_buyer(&request)?;
        let sale = sale_id(&request.get_ref().sale_id)?;
        let updates = self.app.enter_queue(&caller, &sale).await?;
        Ok(Response::new(Box::pin(updates.map(|update| Ok(queue_update(&update))))))
    }

    type WatchMyOrdersStream = Pin<Box<dyn Stream<Item = Result<pb::MyOrdersUpdate, Status>> + Send>>;

    async fn watch_my_orders(
        &self,
        request: Request<pb::WatchMyOrdersRequest>,
    ) -> Result<Response<Self::WatchMyOrdersStream>, Status> {
        let caller = require_buyer(&request)?;
        let sale = sale_id(&request.get_ref().sale_id)?;
        let feed = self.app.watch(&sale).await?;
        let watch = MyOrders { app: self.app.clone(), caller, sale, feed: Some(feed), last: None, done: false };
        Ok(Response::new(Box::pin(futures::stream::unfold(watch, MyOrders::next))))
    }
}

/// One WatchMyOrders stream: re-reads the caller's orders and place whenever the sale changes
/// (at most once per [`MY_ORDERS_PACE`]), or every pace once the sale's feed ended (held orders
/// of an ended sale still expire), and sends what differs from the last message.
struct MyOrders {
    app: Arc<App>,
    caller: Caller,
    sale: SaleId,
    /// The sale's feed while it runs; `None` once it ended or closed.
    feed: Option<Feed>,
    last: Option<pb::MyOrdersUpdate>,
    done: bool,
}

impl MyOrders {
    async fn next(mut self) -> Option<(Result<pb::MyOrdersUpdate, Status>, Self)> {
        loop {
            if self.done || self.app.is_stopping() {
                return None;
            }
            if self.last.is_some() {
                self.wait().await;
            }
            let update = match self.read().await {
                Ok(update) => update,
                Err(error) => {
                    // Not the caller's fault, and the stream can go on: try again after a pace.
                    tracing::debug!(error = ?error, "could not read a buyer's orders; trying again");
                    tokio::time::sleep(MY_ORDERS_PACE).await;
                    continue;
                }
            };
            let same = self.last.as_ref().is_some_and(|last| {
                last.orders == update.orders
                    && last.waitlist == update.waitlist
                    && last.sale_status == update.sale_status
            });
            if same {
                continue;
            }
            self.done = update.last;
            self.last = Some(update.clone());
            return Some((Ok(update), self));
        }
    }

    /// Until the sale changed (or, without a feed, a pace), and at least a pace since the last
    /// read.
    async fn wait(&mut self) {
        let paced = tokio::time::sleep(MY_ORDERS_PACE);
        if let Some(feed) = &mut self.feed {
            if feed.changed().await.is_err() || feed.borrow().is_last() {
                self.feed = None;
            }
        }
        paced.await;
    }

    async fn read(&self) -> Result<pb::MyOrdersUpdate, ServiceError> {
        let orders = self.app.list_orders(&self.caller.user_id, Some(&self.sale)).await?;
        let place = self.app.waitlist_place(&self.caller, &self.sale).await?;
        let status = self.app.sale_view(&self.sale).await?.status;
        let held = orders.iter().any(|o| o.status == OrderStatus::Held);
        Ok(pb::MyOrdersUpdate {
            sale_id: self.sale.to_string(),
            orders: orders.iter().map(Into::into).collect(),
            waitlist: place.map(Into::into),
            sale_status: pb_status(status).into(),
            server_time: Some(timestamp(self.app.now())),
            last: status == SaleStatus::Ended && !held,
        })
    }
}
