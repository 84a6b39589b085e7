//! The purchase engine. `concurrency` workers take attempts from a shared counter; attempt `j`
//! is made by buyer `j % buyers` with its own idempotency key and a pre-drawn quantity. An
//! attempt answered UNAVAILABLE or RATE_LIMITED is retried with the same key (the server
//! promises that this never buys twice). Every attempt leaves one [`AttemptRecord`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::pb;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic_types::StatusExt;

use crate::setup::{retryable, Buyer};
use crate::target::{authed, Pool};

/// What to run.
pub struct RushPlan {
    /// The sale to buy from.
    pub sale_id: String,
    /// Who buys; attempt `j` is made by `buyers[j % buyers.len()]`.
    pub buyers: Arc<Vec<Buyer>>,
    /// Quantity of each attempt; its length is the number of attempts.
    pub quantities: Vec<u32>,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Cap on attempts started per second; 0 = none.
    pub rate: u32,
    /// Retries of one attempt after UNAVAILABLE or RATE_LIMITED.
    pub max_retries: u32,
    /// Prefix of the idempotency keys (unique per run).
    pub key_prefix: String,
}

/// `attempts` quantities drawn uniformly from `min..=max`, reproducible with a seed.
pub fn draw_quantities(attempts: usize, min: u32, max: u32, seed: Option<u64>) -> Vec<u32> {
    let mut rng = match seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    let (min, max) = (min.min(max), max.max(min));
    (0..attempts).map(|_| rng.random_range(min..=max)).collect()
}

/// A refusal as the server explained it (`google.rpc.ErrorInfo`, `google.rpc.RetryInfo`).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The gRPC status code.
    pub code: Code,
    /// The ErrorInfo reason, e.g. `SOLD_OUT`; empty when the status carried none.
    pub reason: String,
    /// `remaining` metadata of INSUFFICIENT_STOCK.
    pub remaining: Option<i64>,
    /// `end_reason` metadata of SALE_ENDED.
    pub end_reason: Option<String>,
    /// RetryInfo's delay, when given.
    pub retry_delay: Option<Duration>,
    /// The status message.
    pub message: String,
}

impl Refusal {
    /// Reads the details of `status`.
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let meta = |key: &str| info.and_then(|i| i.metadata.get(key).cloned());
        Self {
            code: status.code(),
            reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
            remaining: meta("remaining").and_then(|r| r.parse().ok()),
            end_reason: meta("end_reason"),
            retry_delay: details.retry_info().and_then(|r| r.retry_delay),
            message: status.message().to_owned(),
        }
    }

    /// The stock ran out: SOLD_OUT, INSUFFICIENT_STOCK, or SALE_ENDED because it sold out.
    pub fn is_stock(&self) -> bool {
        match self.reason.as_str() {
            "SOLD_OUT" | "INSUFFICIENT_STOCK" => true,
            "SALE_ENDED" => self.end_reason.as_deref().is_some_and(|r| r.contains("SOLD_OUT")),
            _ => false,
        }
    }

    /// The buyer reached the per-user limit.
    pub fn is_limit(&self) -> bool {
        self.reason == "USER_LIMIT_REACHED"
    }

    /// A short label: the reason, or the code when there is none.
    pub fn label(&self) -> String {
        if self.reason.is_empty() {
            format!("{:?}", self.code)
        } else {
            self.reason.clone()
        }
    }

    /// How long to wait before retry number `attempt`: RetryInfo's delay, else exponential
    /// backoff from 10 ms up to 1 s.
    pub fn retry_after(&self, attempt: u32) -> Duration {
        self.retry_delay.unwrap_or_else(|| Duration::from_millis(10u64 << attempt.min(7)).min(Duration::from_secs(1)))
    }
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The server acknowledged an order (durable).
    Acked {
        /// The order's id.
        order_id: String,
        /// Units in the order.
        quantity: u32,
        /// The answer was a replay of an earlier call with the same key.
        replayed: bool,
    },
    /// The server refused it for good.
    Refused(Refusal),
    /// Still UNAVAILABLE or RATE_LIMITED after every retry, or a transport failure.
    Failed(Refusal),
}

/// One attempt: who, how many, when, how it ended. Times are offsets from the rush's epoch.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Index of the buyer in the plan.
    pub buyer: u32,
    /// Units asked for.
    pub quantity: u32,
    /// When the first call was sent.
    pub start: Duration,
    /// When the final answer arrived.
    pub end: Duration,
    /// Calls made (1 + retries).
    pub calls: u32,
    /// The final answer.
    pub outcome: Outcome,
}

impl AttemptRecord {
    /// From the first call to the final answer.
    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    /// Units of an acknowledged order, 0 otherwise.
    pub fn acked_units(&self) -> u32 {
        match &self.outcome {
            Outcome::Acked { quantity, .. } => *quantity,
            _ => 0,
        }
    }
}

/// A finished rush.
pub struct RushResult {
    /// Every attempt, in no particular order.
    pub records: Vec<AttemptRecord>,
    /// The instant all offsets count from.
    pub epoch: Instant,
    /// From the first attempt's start to the last answer.
    pub elapsed: Duration,
    /// CPU used during the rush, where it could be read.
    pub cpu: CpuUse,
}

/// CPU time used during a rush.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// By the server process (its pid must be known).
    pub server: Option<Duration>,
    /// By loadgen itself.
    pub loadgen: Option<Duration>,
}

/// Runs the plan; `epoch` is the instant record offsets count from (shared with watchers).
pub async fn run(pool: Arc<Pool>, plan: RushPlan, epoch: Instant, progress: &ProgressBar) -> RushResult {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (pool, plan, next, progress) = (pool.clone(), plan.clone(), next.clone(), progress.clone());
            tokio::spawn(async move {
                let mut records = Vec::new();
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= plan.quantities.len() {
                        return records;
                    }
                    if plan.rate > 0 {
                        let due = started + Duration::from_secs_f64(j as f64 / f64::from(plan.rate));
                        tokio::time::sleep_until(due.into()).await;
                    }
                    records.push(attempt(&pool, &plan, j, epoch).await);
                    progress.inc(1);
                }
            })
        })
        .collect();
    let mut records = Vec::with_capacity(plan.quantities.len());
    for worker in workers {
        records.extend(worker.await.expect("a rush worker panicked"));
    }
    let first = records.iter().map(|r| r.start).min().unwrap_or_default();
    let last = records.iter().map(|r| r.end).max().unwrap_or_default();
    RushResult { records, epoch, elapsed: last.saturating_sub(first), cpu: CpuUse::default() }
}

async fn attempt(pool: &Pool, plan: &RushPlan, j: usize, epoch: Instant) -> AttemptRecord {
    let buyer_index = j % plan.buyers.len();
    let buyer = &plan.buyers[buyer_index];
    let quantity = plan.quantities[j];
    let key = format!("{}-{j}", plan.key_prefix);
    let start = epoch.elapsed();
    let mut calls = 0;
    let outcome = loop {
        calls += 1;
        let request = authed(
            pb::PurchaseRequest { sale_id: plan.sale_id.clone(), quantity, idempotency_key: key.clone() },
            &buyer.bearer,
        );
        match pool.purchase().purchase(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let order = response.order.unwrap_or_default();
                break Outcome::Acked { order_id: order.id, quantity: order.quantity, replayed: response.replayed };
            }
            Err(status) if retryable(&status) => {
                let refusal = Refusal::from_status(&status);
                if calls > plan.max_retries {
                    break Outcome::Failed(refusal);
                }
                tokio::time::sleep(refusal.retry_after(calls - 1)).await;
            }
            Err(status) => {
                let refusal = Refusal::from_status(&status);
                // Anything the server did not explain (no ErrorInfo) is a failure, not a refusal.
                break if refusal.reason.is_empty() { Outcome::Failed(refusal) } else { Outcome::Refused(refusal) };
            }
        }
    };
    AttemptRecord { buyer: buyer_index as u32, quantity, start, end: epoch.elapsed(), calls, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_stay_in_range_and_follow_the_seed() {
        let a = draw_quantities(1000, 1, 7, Some(42));
        assert!(a.iter().all(|q| (1..=7).contains(q)));
        assert_eq!(a, draw_quantities(1000, 1, 7, Some(42)));
        assert!(draw_quantities(10, 3, 3, None).iter().all(|&q| q == 3));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let refusal = Refusal::from_status(&tonic::Status::unavailable("down"));
        assert_eq!(refusal.retry_after(0), Duration::from_millis(10));
        assert_eq!(refusal.retry_after(2), Duration::from_millis(40));
        assert_eq!(refusal.retry_after(30), Duration::from_secs(1));
        assert!(!refusal.is_stock());
    }
}
