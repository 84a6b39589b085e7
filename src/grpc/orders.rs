//! OrdersService: a sale's orders, paged, and the order feed (admin or fulfillment token).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::domain::SaleId;
use crate::pb;
use crate::service::App;

use super::convert::{millis, order_status, page_ask, Violations};
use super::require_order_reader;

/// The OrdersService implementation.
pub struct OrdersApi {
    /// The application.
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl pb::orders_service_server::OrdersService for OrdersApi {
    async fn list_sale_orders(
        &self,
        request: Request<pb::ListSaleOrdersRequest>,
    ) -> Result<Response<pb::ListSaleOrdersResponse>, Status> {
        require_order_reader(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let sale = v.check(SaleId::parse(&req.sale_id));
        let ask = page_ask(&mut v, req.page_size, &req.page_token);
        let status = order_status(&mut v, req.status);
        let created_after = match &req.created_after {
            None => Some(None),
            Some(at) => v.check(millis("created_after", Some(at))).map(Some),
        };
        let (sale, ask, status, created_after) = v.finish((|| Some((sale?, ask?, status?, created_after?)))())?;
        let (page, total) = self.app.list_sale_orders(&sale, status, created_after, &ask).await?;
        Ok(Response::new(pb::ListSaleOrdersResponse {
            orders: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_token,
            total_size: total.map_or(0, |n| n as i64),
        }))
    }

    type WatchOrdersStream = Pin<Box<dyn Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

    async fn watch_orders(
        &self,
        request: Request<pb::WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        require_order_reader(&request)?;
        let req = request.into_inner();
        let sale = match req.sale_id.as_str() {
            "" => None,
            raw => Some(SaleId::parse(raw).map_err(crate::service::ServiceError::from)?),
        };
        let feed = self.app.follow_orders(req.after_sequence, sale).await?;
        // An error (the consumer lagged past the retention) ends the stream.
        let stream = futures::stream::unfold(Some(feed), |feed| async move {
            let mut feed = feed?;
            match feed.next().await? {
                Ok(event) => Some((Ok((&event).into()), Some(feed))),
                Err(error) => Some((Err(error.into()), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
