//! PurchaseService: buying and reading one's own orders (buyer or admin token required).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{IdempotencyKey, OrderId, SaleId};
use crate::pb;
use crate::service::App;

use super::convert::Violations;
use super::error::reason_of;
use super::{caller, RateLimits};

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
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let req = request.into_inner();
        let result = async {
            self.limits.purchase(&caller, peer)?;
            let mut v = Violations::default();
            let sale_id = v.check(SaleId::parse(&req.sale_id));
            let key = v.check(IdempotencyKey::parse(&req.idempotency_key));
            v.require(req.quantity >= 1, "quantity", "must be at least 1");
            let (sale_id, key) = v.finish((|| Some((sale_id?, key?)))())?;
            self.app.purchase(&caller, sale_id, req.quantity, key).await
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
        let caller = caller(&request)?;
        let id = OrderId::parse(&request.get_ref().order_id).map_err(crate::service::ServiceError::from)?;
        Ok(Response::new((&self.app.get_order(&caller, &id).await?).into()))
    }

    async fn list_my_orders(
        &self,
        request: Request<pb::ListMyOrdersRequest>,
    ) -> Result<Response<pb::ListMyOrdersResponse>, Status> {
        let caller = caller(&request)?;
        let sale = match request.get_ref().sale_id.as_str() {
            "" => None,
            raw => Some(SaleId::parse(raw).map_err(crate::service::ServiceError::from)?),
        };
        let orders = self.app.list_orders(&caller.user_id, sale.as_ref()).await?;
        Ok(Response::new(pb::ListMyOrdersResponse { orders: orders.iter().map(Into::into).collect() }))
    }
}
