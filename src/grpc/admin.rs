//! AdminService: products, stock and sales (admin token required).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{DisplayName, FieldViolation, ProductId, QueueRules, Role, SaleId, SaleRules, UnixMillis};
use crate::pb;
use crate::service::{App, NewSale};

use super::convert::{millis, money, page_ask, Violations};
use super::require_admin;

/// The AdminService implementation.
pub struct AdminApi {
    /// The application.
    pub app: Arc<App>,
}

fn product_id(raw: &str) -> Result<ProductId, Status> {
    ProductId::parse(raw).map_err(|v| crate::service::ServiceError::from(v).into())
}

fn sale_id(raw: &str) -> Result<SaleId, Status> {
    SaleId::parse(raw).map_err(|v| crate::service::ServiceError::from(v).into())
}

/// The longest hold a sale may set: a day.
const MAX_HOLD_SECONDS: u32 = 86_400;
/// Service tokens: 30 days unless asked otherwise, a year at most.
const SERVICE_TOKEN_TTL: u32 = 30 * 86_400;
const SERVICE_TOKEN_MAX_TTL: u32 = 365 * 86_400;

impl TryFrom<pb::CreateSaleRequest> for NewSale {
    type Error = crate::service::ServiceError;

    fn try_from(req: pb::CreateSaleRequest) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let product_id = v.check(ProductId::parse(&req.product_id));
        v.require(req.allocated >= 1, "allocated", "must be at least 1");
        v.require(req.max_per_purchase >= 1, "max_per_purchase", "must be at least 1");
        v.require(req.hold_seconds <= MAX_HOLD_SECONDS, "hold_seconds", "must be at most 86400 (a day)");
        let unit_price = v.check(money(req.unit_price.as_ref()));
        if let Some(price) = unit_price {
            let total = price.amount_minor.checked_mul(i64::from(req.max_per_purchase.max(req.per_user_limit)));
            v.require(total.is_some(), "unit_price.amount_minor", "is too large");
        }
        let start_now = req.start_time.is_none();
        let start = match &req.start_time {
            Some(at) => v.check(millis("start_time", Some(at))),
            None => Some(UnixMillis(0)),
        };
        let end = v.check(millis("end_time", req.end_time.as_ref()));
        let queue = match req.queue {
            None => Some(None),
            Some(q) => v
                .check(QueueRules::parse(
                    q.prequeue_seconds,
                    q.admit_per_second,
                    q.max_active_buyers,
                    q.admission_seconds,
                ))
                .map(Some),
        };
        let parsed = (|| Some((product_id?, unit_price?, start?, end?, queue?)))();
        let (product_id, unit_price, start, end, queue) = v.finish(parsed)?;
        Ok(NewSale {
            product_id,
            rules: SaleRules {
                allocated: req.allocated,
                per_user_limit: req.per_user_limit,
                max_per_purchase: req.max_per_purchase,
                start,
                end,
                unit_price,
                hold_seconds: req.hold_seconds,
                queue,
            },
            start_now,
        })
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let name = req.name.trim().to_owned();
        v.require((1..=200).contains(&name.chars().count()), "name", "must be 1 to 200 characters");
        v.require(req.description.chars().count() <= 2000, "description", "must be at most 2000 characters");
        v.require(req.initial_inventory >= 0, "initial_inventory", "must not be negative");
        v.finish(Some(()))?;
        let product = self.app.create_product(name, req.description, req.initial_inventory).await?;
        Ok(Response::new((&product).into()))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let ask = page_ask(&mut v, req.page_size, &req.page_token);
        let page = self.app.list_products(&v.finish(ask)?).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_token,
        }))
    }

    async fn get_product(&self, request: Request<pb::GetProductRequest>) -> Result<Response<pb::Product>, Status> {
        require_admin(&request)?;
        let id = product_id(&request.get_ref().product_id)?;
        Ok(Response::new((&self.app.get_product(&id).await?).into()))
    }

    async fn add_stock(&self, request: Request<pb::AddStockRequest>) -> Result<Response<pb::Product>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let id = v.check(ProductId::parse(&req.product_id));
        v.require(req.units >= 1, "units", "must be at least 1");
        let id = v.finish(id)?;
        Ok(Response::new((&self.app.add_stock(&id, req.units).await?).into()))
    }

    async fn create_sale(&self, request: Request<pb::CreateSaleRequest>) -> Result<Response<pb::Sale>, Status> {
        require_admin(&request)?;
        let new = NewSale::try_from(request.into_inner())?;
        Ok(Response::new((&self.app.create_sale(new).await?).into()))
    }

    async fn start_sale(&self, request: Request<pb::StartSaleRequest>) -> Result<Response<pb::Sale>, Status> {
        require_admin(&request)?;
        let id = sale_id(&request.get_ref().sale_id)?;
        Ok(Response::new((&self.app.start_sale(&id).await?).into()))
    }

    async fn end_sale(&self, request: Request<pb::EndSaleRequest>) -> Result<Response<pb::Sale>, Status> {
        require_admin(&request)?;
        let id = sale_id(&request.get_ref().sale_id)?;
        Ok(Response::new((&self.app.end_sale(&id).await?).into()))
    }

    async fn get_sale(&self, request: Request<pb::GetSaleRequest>) -> Result<Response<pb::Sale>, Status> {
        require_admin(&request)?;
        let id = sale_id(&request.get_ref().sale_id)?;
        Ok(Response::new((&self.app.sale_view(&id).await?).into()))
    }

    async fn list_sales(
        &self,
        request: Request<pb::ListSalesRequest>,
    ) -> Result<Response<pb::ListSalesResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let product = match req.product_id.as_str() {
            "" => Some(None),
            raw => v.check(ProductId::parse(raw)).map(Some),
        };
        let ask = page_ask(&mut v, req.page_size, &req.page_token);
        let (product, ask) = v.finish((|| Some((product?, ask?)))())?;
        let page = self.app.list_sales(product.as_ref(), &ask).await?;
        Ok(Response::new(pb::ListSalesResponse {
            sales: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_token,
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let role = match pb::Role::try_from(req.role) {
            Ok(pb::Role::Payments) => Some(Role::Payments),
            Ok(pb::Role::Fulfillment) => Some(Role::Fulfillment),
            _ => None,
        };
        v.require(role.is_some(), "role", "must be ROLE_PAYMENTS or ROLE_FULFILLMENT");
        let name = v.check(DisplayName::parse(&req.name).map_err(|e| FieldViolation::new("name", e.description)));
        v.require(req.ttl_seconds <= SERVICE_TOKEN_MAX_TTL, "ttl_seconds", "must be at most 31536000 (a year)");
        let (name, role) = v.finish((|| Some((name?, role?)))())?;
        let ttl = match req.ttl_seconds {
            0 => SERVICE_TOKEN_TTL,
            seconds => seconds,
        };
        let (token, expires_at) = self.app.service_token(role, &name, std::time::Duration::from_secs(u64::from(ttl)));
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token: token,
            expires_at: Some(super::convert::timestamp(expires_at)),
        }))
    }
}
