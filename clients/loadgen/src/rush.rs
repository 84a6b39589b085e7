//! The purchase engine. `concurrency` workers take attempts from a shared counter; attempt `j`
//! is made by buyer `j % buyers` with its own idempotency key and a pre-drawn quantity. An
//! attempt answered UNAVAILABLE or RATE_LIMITED is retried with the same key (the server
//! promises that this never buys twice). Every attempt leaves one [`AttemptRecord`].
//!
//! With an [`Abandon`] plan, a share of the attempts behave like clients that give up — a phone
//! whose deadline passes, a tab that closes, a proxy that resets the stream: after a random delay
//! the call is cancelled by its deadline, dropped (RST_STREAM) or its connection closed. Some of
//! them retry later with the same key, as a client that comes back would; then patient buyers
//! ask for whatever is left until the sale says it has nothing more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_client::pb;
use futures::StreamExt;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic_types::StatusExt;

use crate::setup::{retryable, Buyer};
use crate::target::{authed, Pool};

/// Callers that give up.
#[derive(Debug, Clone, Copy)]
pub struct Abandon {
    /// Share of the attempts whose caller gives up (0..=1).
    pub ratio: f64,
    /// They give up after a delay drawn uniformly from zero to this.
    pub within: Duration,
    /// Share of the abandoned attempts retried later with the same key (0..=1).
    pub retry_ratio: f64,
}

/// How a caller gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// A gRPC deadline (`grpc-timeout`): both sides cancel the call when it passes.
    Deadline,
    /// The client drops the call (HTTP/2 RST_STREAM).
    DropCall,
    /// The client closes its connection (the call had one of its own).
    CloseConnection,
}

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
    /// Callers that give up, if any (then patient buyers finish the sale: see the module docs).
    pub abandon: Option<Abandon>,
    /// Seed of the abandon draws.
    pub seed: u64,
}

impl RushPlan {
    /// Whether attempt `j`'s caller gives up: how, after how long, and whether it retries later.
    fn give_up(&self, j: usize) -> Option<(GiveUp, Duration, bool)> {
        let abandon = self.abandon?;
        let mut rng = StdRng::seed_from_u64(self.seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if !rng.random_bool(abandon.ratio.clamp(0.0, 1.0)) {
            return None;
        }
        let how = [GiveUp::Deadline, GiveUp::DropCall, GiveUp::CloseConnection][rng.random_range(0..3)];
        let after = abandon.within.mul_f64(rng.random_range(0.0..=1.0));
        Some((how, after, rng.random_bool(abandon.retry_ratio.clamp(0.0, 1.0))))
    }
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
    /// The caller gave up before any answer and never came back: whether it bought is for the
    /// record to say (its key finds the order, if any).
    Abandoned,
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
    /// The idempotency key.
    pub key: String,
    /// How its caller gave up, if it did (a later retry with the same key may have answered).
    pub gave_up: Option<GiveUp>,
    /// An abandoned attempt whose caller comes back later with the same key.
    pub comes_back: bool,
    /// For an abandoned attempt retried later: the longest any retry call waited for its answer.
    pub longest_retry_call: Option<Duration>,
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
    if plan.abandon.is_some() {
        retry_abandoned(&pool, &plan, &mut records, epoch).await;
        records.extend(until_sold_out(&pool, &plan, epoch).await);
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
    let request = pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: plan.sale_id.clone(),
        quantity,
        idempotency_key: key.clone(),
    };
    let record = |calls, outcome, gave_up, comes_back| AttemptRecord {
        buyer: buyer_index as u32,
        quantity,
        start,
        end: epoch.elapsed(),
        calls,
        outcome,
        key: key.clone(),
        gave_up,
        comes_back,
        longest_retry_call: None,
    };
    if let Some((how, after, retry_later)) = plan.give_up(j) {
        match impatient_call(pool, authed(request, &buyer.bearer), how, after).await {
            Some(Ok(response)) => return record(1, acked(response), None, false),
            Some(Err(status)) if !retryable(&status) => return record(1, refused(&status), None, false),
            // No answer (or only "retry"): the caller is gone.
            _ => return record(1, Outcome::Abandoned, Some(how), retry_later),
        }
    }
    let (outcome, calls, _) = patient(pool, plan, &buyer.bearer, request).await;
    record(calls, outcome, None, false)
}

/// A call whose caller gives up `after` in the way `how` says; `None` if it gave up first.
async fn impatient_call(
    pool: &Pool,
    mut request: tonic::Request<pb::PurchaseRequest>,
    how: GiveUp,
    after: Duration,
) -> Option<Result<tonic::Response<pb::PurchaseResponse>, tonic::Status>> {
    match how {
        GiveUp::Deadline => {
            request.set_timeout(after.max(Duration::from_micros(1)));
            match pool.purchase().purchase(request).await {
                Err(status) if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) => None,
                answer => Some(answer),
            }
        }
        GiveUp::DropCall => tokio::time::timeout(after, pool.purchase().purchase(request)).await.ok(),
        GiveUp::CloseConnection => {
            let channel = pool.fresh_channel().await.ok()?;
            let call = tokio::spawn(async move {
                pb::purchase_service_client::PurchaseServiceClient::new(channel).purchase(request).await
            });
            tokio::time::sleep(after).await;
            // Dropping the call drops the connection's only handle: it closes.
            call.abort();
            call.await.ok()
        }
    }
}

/// A patient caller: retries UNAVAILABLE and RATE_LIMITED with the same key, up to the plan's
/// retries. The outcome, the calls made, and the longest one call waited.
async fn patient(
    pool: &Pool,
    plan: &RushPlan,
    bearer: &tonic::metadata::AsciiMetadataValue,
    request: pb::PurchaseRequest,
) -> (Outcome, u32, Duration) {
    let mut calls = 0;
    let mut longest = Duration::ZERO;
    loop {
        calls += 1;
        let sent = Instant::now();
        let answer = pool.purchase().purchase(authed(request.clone(), bearer)).await;
        longest = longest.max(sent.elapsed());
        match answer {
            Ok(response) => return (acked(response), calls, longest),
            Err(status) if retryable(&status) => {
                let refusal = Refusal::from_status(&status);
                if calls > plan.max_retries {
                    return (Outcome::Failed(refusal), calls, longest);
                }
                tokio::time::sleep(refusal.retry_after(calls - 1)).await;
            }
            Err(status) => return (refused(&status), calls, longest),
        }
    }
}

fn acked(response: tonic::Response<pb::PurchaseResponse>) -> Outcome {
    let response = response.into_inner();
    let order = response.order.unwrap_or_default();
    Outcome::Acked { order_id: order.id, quantity: order.quantity, replayed: response.replayed }
}

fn refused(status: &tonic::Status) -> Outcome {
    let refusal = Refusal::from_status(status);
    // Anything the server did not explain (no ErrorInfo) is a failure, not a refusal.
    if refusal.reason.is_empty() {
        Outcome::Failed(refusal)
    } else {
        Outcome::Refused(refusal)
    }
}

/// Retries, with their keys, the abandoned attempts whose callers come back, 64 at a time.
async fn retry_abandoned(pool: &Pool, plan: &RushPlan, records: &mut [AttemptRecord], epoch: Instant) {
    let later: Vec<usize> = (0..records.len()).filter(|&i| records[i].comes_back).collect();
    let answers: Vec<(usize, Outcome, u32, Duration, Duration)> = futures::stream::iter(later)
        .map(|i| {
            let record = &records[i];
            let bearer = &plan.buyers[record.buyer as usize].bearer;
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: plan.sale_id.clone(),
                quantity: record.quantity,
                idempotency_key: record.key.clone(),
            };
            async move {
                let (outcome, calls, longest) = patient(pool, plan, bearer, request).await;
                (i, outcome, calls, longest, epoch.elapsed())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for (i, outcome, calls, longest, end) in answers {
        let record = &mut records[i];
        record.outcome = outcome;
        record.calls += calls;
        record.longest_retry_call = Some(longest);
        record.end = end;
    }
}

/// Patient buyers, one unit at a time with fresh keys, until the sale has nothing left for them.
async fn until_sold_out(pool: &Pool, plan: &RushPlan, epoch: Instant) -> Vec<AttemptRecord> {
    let buyers = plan.buyers.len().min(64);
    let workers = (0..buyers).map(|b| async move {
        let mut records = Vec::new();
        for n in 0.. {
            let key = format!("{}-more-{b}-{n}", plan.key_prefix);
            let request = pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: plan.sale_id.clone(),
                quantity: 1,
                idempotency_key: key.clone(),
            };
            let start = epoch.elapsed();
            let (outcome, calls, _) = patient(pool, plan, &plan.buyers[b].bearer, request).await;
            let done = !matches!(outcome, Outcome::Acked { .. });
            records.push(AttemptRecord {
                buyer: b as u32,
                quantity: 1,
                start,
                end: epoch.elapsed(),
                calls,
                outcome,
                key,
                gave_up: None,
                comes_back: false,
                longest_retry_call: None,
            });
            if done {
                break;
            }
        }
        records
    });
    futures::future::join_all(workers).await.into_iter().flatten().collect()
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
