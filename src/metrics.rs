//! Prometheus metrics. One recorder per process; `GET /metrics` on the metrics port renders it.
//!
//! Series: `flashsale_purchases_total{outcome}` (OK, REPLAYED or an error reason),
//! `flashsale_commit_batch_orders` (orders per durable write), `flashsale_watchers{feed}`,
//! `flashsale_sales_ended_total{reason}`.

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
            metrics::describe_gauge!("flashsale_watchers", "Open feed streams");
            metrics::describe_counter!("flashsale_sales_ended_total", "Sales ended, by reason");
            handle
        })
        .clone()
}
