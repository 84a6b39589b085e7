//! Products, stock and the sale lifecycle. A use case that writes more than once (a sale's
//! creation, start and end touch the record and the hot state) runs detached
//! ([`App::detached`]); the others are one atomic write each.

use std::sync::Arc;

use crate::domain::{
    EndReason, ProductId, ProductRecord, SaleId, SaleRecord, SaleRules, SaleStatus, SaleView, UnixMillis,
};
use crate::store::StoreError;

use super::{App, ServiceError};

/// A validated CreateSale request.
#[derive(Debug, Clone)]
pub struct NewSale {
    /// The product to take units from.
    pub product_id: ProductId,
    /// Allocation, price and limits; `start` is ignored when `start_now`.
    pub rules: SaleRules,
    /// Open at once (no start time given).
    pub start_now: bool,
}

impl App {
    /// Creates a product.
    pub async fn create_product(
        &self,
        name: String,
        description: String,
        inventory: i64,
    ) -> Result<ProductRecord, ServiceError> {
        let product =
            ProductRecord { id: ProductId::generate(), name, description, inventory, created_at: self.clock.now() };
        self.records.create_product(product.clone()).await?;
        Ok(product)
    }

    /// One product.
    pub async fn get_product(&self, id: &ProductId) -> Result<ProductRecord, ServiceError> {
        self.records.get_product(id).await?.ok_or(ServiceError::ProductNotFound)
    }

    /// Adds units to a product's inventory.
    pub async fn add_stock(&self, id: &ProductId, units: i64) -> Result<ProductRecord, ServiceError> {
        match self.records.add_stock(id, units).await {
            Err(StoreError::NotFound) => Err(ServiceError::ProductNotFound),
            other => Ok(other?),
        }
    }

    /// Creates a sale, taking its units from the product's inventory.
    pub async fn create_sale(self: &Arc<Self>, new: NewSale) -> Result<SaleView, ServiceError> {
        // Detached: the record's sale and its hot state (which the scheduler follows) are two
        // writes; a caller that goes between them must not leave a sale nobody opens or ends.
        let app = self.clone();
        self.detached(async move { app.create_sale_now(new).await }).await
    }

    async fn create_sale_now(&self, new: NewSale) -> Result<SaleView, ServiceError> {
        let now = self.clock.now();
        let mut rules = new.rules;
        if new.start_now {
            rules.start = now;
        }
        if rules.end <= rules.start {
            return Err(crate::domain::FieldViolation::new("end_time", "must be after start_time").into());
        }
        if rules.end <= now {
            return Err(crate::domain::FieldViolation::new("end_time", "must be in the future").into());
        }
        let sale = SaleRecord {
            id: SaleId::generate(),
            product_id: new.product_id,
            rules,
            sold: 0,
            held: 0,
            status: if rules.start <= now { SaleStatus::Active } else { SaleStatus::Scheduled },
            end_reason: None,
            ended_at: None,
            created_at: now,
            // Its first hot state is built right below, from this record.
            generation: 1,
        };
        let sale = match self.records.create_sale(sale).await {
            Err(StoreError::NotFound) => return Err(ServiceError::ProductNotFound),
            other => other?,
        };
        self.hot.load_sale(&sale, &[]).await?;
        self.schedule_changed.notify_one();
        tracing::info!(sale = %sale.id, allocated = sale.rules.allocated, status = ?sale.status, "sale created");
        self.sale_view(&sale.id).await
    }

    /// Opens a scheduled sale now.
    pub async fn start_sale(self: &Arc<Self>, id: &SaleId) -> Result<SaleView, ServiceError> {
        // Detached: the record, then the hot state; see `create_sale`.
        let (app, id) = (self.clone(), id.clone());
        self.detached(async move { app.start_sale_now(&id).await }).await
    }

    async fn start_sale_now(&self, id: &SaleId) -> Result<SaleView, ServiceError> {
        let sale = self.records.get_sale(id).await?.ok_or(ServiceError::SaleNotFound)?;
        if sale.status != SaleStatus::Scheduled {
            return Err(ServiceError::SaleNotScheduled(sale.status));
        }
        let now = self.clock.now();
        if sale.rules.end <= now {
            return Err(ServiceError::SaleNotScheduled(sale.status));
        }
        self.activate(id, now).await?;
        self.sale_view(id).await
    }

    /// SCHEDULED -> ACTIVE in the record, then in the hot state and feeds. Callers run it
    /// detached or in a background task: two writes.
    pub(super) async fn activate(&self, id: &SaleId, start: UnixMillis) -> Result<(), ServiceError> {
        let (sale, changed) = match self.records.activate_sale(id, start).await {
            Err(StoreError::NotFound) => return Err(ServiceError::SaleNotFound),
            other => other?,
        };
        if changed {
            self.load_sale(id).await?;
            self.hot.set_status(&sale).await?;
            self.feeds.touch(id);
            self.schedule_changed.notify_one();
            tracing::info!(sale = %id, "sale started");
        }
        Ok(())
    }

    /// Ends a sale now (BY_ADMIN); ending an ended sale changes nothing.
    pub async fn end_sale(self: &Arc<Self>, id: &SaleId) -> Result<SaleView, ServiceError> {
        // Detached: the hot state stops selling, then the record ends the sale and returns the
        // unsold units; a caller that goes between them must not leave the two disagreeing.
        let (app, id) = (self.clone(), id.clone());
        self.detached(async move {
            app.end_sale_now(&id, EndReason::ByAdmin).await?;
            app.sale_view(&id).await
        })
        .await
    }

    /// Ends a sale for `reason`: the hot state stops taking purchases first, then the record
    /// ends it after every order already queued and returns the unsold units exactly once.
    /// Callers run it detached or in a background task: it writes three times.
    pub(super) async fn end_sale_now(&self, id: &SaleId, reason: EndReason) -> Result<(), ServiceError> {
        let mut sale = self.records.get_sale(id).await?.ok_or(ServiceError::SaleNotFound)?;
        if sale.status == SaleStatus::Ended {
            return Ok(());
        }
        self.load_sale(id).await?;
        let now = self.clock.now();
        sale.status = SaleStatus::Ended;
        sale.end_reason = Some(reason);
        sale.ended_at = Some(now);
        self.hot.set_status(&sale).await?;
        let (stored, changed) = self.committer.end_sale(id.clone(), reason, now).await?;
        // The record's word is final (another end may have won the race).
        self.hot.set_status(&stored).await?;
        self.feeds.touch(id);
        if changed {
            metrics::counter!("flashsale_sales_ended_total", "reason" => format!("{reason:?}")).increment(1);
            tracing::info!(sale = %id, ?reason, sold = stored.sold, returned = stored.rules.allocated - stored.sold, "sale ended");
        }
        Ok(())
    }

    /// A sale with live counters.
    pub async fn sale_view(&self, id: &SaleId) -> Result<SaleView, ServiceError> {
        if let Some(view) = self.hot.view(id).await? {
            return self.with_line(view).await;
        }
        let sale = self.records.get_sale(id).await?.ok_or(ServiceError::SaleNotFound)?;
        self.with_line(view_of_record(&sale)).await
    }

    /// Subscribes to a sale's live state (feeds).
    pub async fn watch(&self, id: &SaleId) -> Result<crate::feeds::Feed, ServiceError> {
        // The feeds' own read: the live state, rebuilt from the record when the hot store lost it.
        let view = crate::feeds::SaleSource::current(self, id).await?.ok_or(ServiceError::SaleNotFound)?;
        Ok(self.feeds.subscribe(view))
    }
}

/// A sale's view from its record alone (its hot state is not loaded).
pub(super) fn view_of_record(sale: &SaleRecord) -> SaleView {
    SaleView {
        sale_id: sale.id.clone(),
        product_id: sale.product_id.clone(),
        version: crate::domain::first_version(sale.generation),
        rules: sale.rules,
        status: sale.status,
        end_reason: sale.end_reason,
        ended_at: sale.ended_at,
        sold: sale.sold,
        held: sale.held,
        waitlist: 0,
        in_flight: 0,
        // A sale not loaded in the hot state has nothing in flight: open or ended, allocated - sold.
        remaining: sale.rules.allocated - sale.sold,
        leaderboard: Vec::new(),
        total_buyers: 0,
        created_at: sale.created_at,
        line: None,
    }
}
