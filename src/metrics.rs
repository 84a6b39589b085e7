//! Prometheus metrics. One recorder per process; `GET /metrics` on the metrics port renders it.
//!
//! Series:
//! - `flashsale_purchases_total{outcome}`: Purchase calls by outcome (OK, REPLAYED or an error
//!   reason);
//! - `flashsale_units_in_flight{sale}`: units this node reserved and has not settled yet (zero
//!   whenever nothing is being bought: purchases settle even when their caller left);
//! - `flashsale_settlements_total{outcome,by}`: reservations confirmed or released, by the
//!   purchase that made them (`by="purchase"`) or by reconciliation's orphan sweep of a dead
//!   node's (`by="sweep"`);
//! - `flashsale_commit_batch_orders`: orders per durable write (group commit);
//! - `flashsale_record_retries_total{operation}`: MongoDB transactions retried;
//! - `flashsale_watchers{feed}`: open feed streams;
//! - `flashsale_sales_ended_total{reason}`;
//! - `flashsale_auth_pool_threads`, `flashsale_auth_refused_total`: password hashing threads,
//!   and sign-ins refused because they were all busy and the queue full.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process's recorder handle, installed on first use.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            metrics::describe_counter!("flashsale_purchases_total", "Purchase calls by outcome");
            metrics::describe_histogram!("flashsale_commit_batch_orders", "Orders per group-commit write");
            metrics::describe_histogram!("flashsale_commit_seconds", "Seconds per group-commit write of orders");
            metrics::describe_counter!("flashsale_errors_total", "Errors answered to clients, by reason");
            metrics::describe_gauge!("flashsale_watchers", "Open feed streams");
            metrics::describe_counter!("flashsale_sales_ended_total", "Sales ended, by reason");
            metrics::describe_gauge!("flashsale_units_in_flight", "Units of an open sale reserved and not yet settled");
            metrics::describe_counter!("flashsale_settlements_total", "Reservations confirmed or released");
            metrics::describe_counter!("flashsale_record_retries_total", "MongoDB transactions retried");
            metrics::describe_gauge!("flashsale_auth_pool_threads", "Password hashing threads");
            metrics::describe_counter!("flashsale_auth_refused_total", "Sign-ins refused: hashing at capacity");
            handle
        })
        .clone()
}
