//! A sign-in storm: N callers that register a new account and log in with it, over and over,
//! while a rush runs — buyers signing in exactly when a drop starts. A caller told
//! SIGN_IN_BUSY or RATE_LIMITED waits as RetryInfo says, as a well-behaved app would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_client::pb;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::rush::Refusal;
use crate::stats::{self, per_sec, Figures, Percentiles};
use crate::target::Pool;

/// A storm under way.
pub struct Storm {
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<Tally>>,
    started: Instant,
}

/// What one caller saw.
struct Tally {
    /// Register + Login pairs completed.
    sign_ins: u64,
    /// Answers SIGN_IN_BUSY.
    busy: u64,
    /// Anything else that was not a success.
    failed: u64,
    /// Latency of each successful call.
    latency: Histogram<u64>,
}

/// What the storm did, over its whole length.
#[derive(Debug, Clone)]
pub struct StormFigures {
    /// Callers.
    pub callers: usize,
    /// How long it ran.
    pub elapsed: Duration,
    /// Register + Login pairs completed.
    pub sign_ins: u64,
    /// SIGN_IN_BUSY answers (each waited out and tried again).
    pub busy: u64,
    /// Other failures.
    pub failed: u64,
    /// Latency of the successful Register and Login calls.
    pub latency: Percentiles,
}

impl Storm {
    /// Starts `callers` callers on `pool`; accounts are named after `tag`.
    pub fn start(pool: Arc<Pool>, callers: usize, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..callers)
            .map(|c| {
                let (pool, stop, tag) = (pool.clone(), stop.clone(), tag.to_owned());
                tokio::spawn(async move { caller(&pool, &stop, &tag, c).await })
            })
            .collect();
        Self { stop, callers, started: Instant::now() }
    }

    /// Stops the callers (each finishes the call it is in) and adds up what they saw.
    pub async fn stop(self) -> StormFigures {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let (mut sign_ins, mut busy, mut failed, mut latency) = (0, 0, 0, stats::histogram());
        let callers = self.callers.len();
        for caller in self.callers {
            if let Ok(tally) = caller.await {
                sign_ins += tally.sign_ins;
                busy += tally.busy;
                failed += tally.failed;
                latency.add(&tally.latency).expect("histograms of the same bounds");
            }
        }
        StormFigures { callers, elapsed, sign_ins, busy, failed, latency: Percentiles::of(&latency) }
    }
}

impl StormFigures {
    /// Prints the storm's figures and adds them to `figures`.
    pub fn report(&self, figures: &mut Figures) {
        let rate = per_sec(self.sign_ins, self.elapsed);
        println!(
            "sign-in storm: {} callers, {} sign-ins (Register + Login) in {:.1} s = {rate:.1}/s; {} SIGN_IN_BUSY, {} other failures",
            self.callers,
            self.sign_ins,
            self.elapsed.as_secs_f64(),
            self.busy,
            self.failed
        );
        println!("latency, sign-in calls: {}", self.latency.line());
        figures.add("storm_callers", self.callers);
        figures.add("storm_sign_ins", self.sign_ins);
        figures.add("storm_sign_ins_per_sec", format!("{rate:.1}"));
        figures.add("storm_busy", self.busy);
        figures.add("storm_failed", self.failed);
        self.latency.add_to(figures, "storm_latency");
    }
}

async fn caller(pool: &Pool, stop: &AtomicBool, tag: &str, c: usize) -> Tally {
    let mut tally = Tally { sign_ins: 0, busy: 0, failed: 0, latency: stats::histogram() };
    let password = format!("storm-{tag}-password");
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let email = format!("storm-{tag}-{c}-{i}@loadgen.example");
        let register = pb::RegisterRequest {
            email: email.clone(),
            display_name: format!("Storm {c}"),
            password: password.clone(),
        };
        if !call(&mut tally, stop, || async { pool.auth().register(register.clone()).await.map(drop) }).await {
            continue;
        }
        let login = pb::LoginRequest { email, password: password.clone() };
        if call(&mut tally, stop, || async { pool.auth().login(login.clone()).await.map(drop) }).await {
            tally.sign_ins += 1;
        }
    }
    tally
}

/// One call, repeated after SIGN_IN_BUSY or RATE_LIMITED (waiting as RetryInfo says) until it
/// succeeds, fails otherwise, or the storm stops; true when it succeeded.
async fn call<F, Fut>(tally: &mut Tally, stop: &AtomicBool, mut send: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    for attempt in 0u32.. {
        let sent = Instant::now();
        match send().await {
            Ok(()) => {
                stats::record(&mut tally.latency, sent.elapsed());
                return true;
            }
            Err(status) => {
                let refusal = Refusal::from_status(&status);
                if !matches!(refusal.reason.as_str(), "SIGN_IN_BUSY" | "RATE_LIMITED") {
                    tally.failed += 1;
                    return false;
                }
                tally.busy += u64::from(refusal.reason == "SIGN_IN_BUSY");
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                tokio::time::sleep(refusal.retry_after(attempt)).await;
            }
        }
    }
    false
}
