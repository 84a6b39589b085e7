//! `loadgen rehearse`: set up a sale, get buyers, rush, end, verify, report. The steps are
//! public so `flood` and `watch` compose the same rehearsal with their own measurements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flashsale_client::pb;

use crate::chart::{self, ChartData};
use crate::cli::{RehearseArgs, RushOptions};
use crate::rush::{self, Outcome, RushPlan, RushResult};
use crate::setup::{self, Buyer, BuyerSource, SaleSpec};
use crate::stats::{self, per_sec, Figures, Percentiles};
use crate::storm::Storm;
use crate::target::Session;
use crate::verdict::{self, Evidence, Verdict};

/// The shape of a rush, whichever subcommand asked for it.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Units allocated.
    pub units: i64,
    /// Distinct buyers.
    pub buyers: usize,
    /// Total purchase attempts (attempt `j` by buyer `j % buyers`).
    pub attempts: usize,
    /// Quantity range of one attempt.
    pub min_qty: u32,
    /// Largest quantity; also the sale's max per purchase.
    pub max_qty: u32,
    /// The sale's per-user limit.
    pub per_user_limit: u32,
    /// Attempts in flight.
    pub concurrency: usize,
    /// Rate cap, retries, seed, buyer tokens, figures file.
    pub options: RushOptions,
    /// Callers that give up, if any.
    pub abandon: Option<rush::Abandon>,
    /// Longest one retry call of a come-back caller may take.
    pub retry_bound: Duration,
    /// Checkout holds of the sale (0: none).
    pub hold_seconds: u32,
}

impl From<&RehearseArgs> for Scenario {
    fn from(a: &RehearseArgs) -> Self {
        Self {
            units: a.units,
            buyers: a.buyers,
            attempts: a.buyers * a.attempts_per_buyer,
            min_qty: a.min_qty,
            max_qty: a.max_qty,
            per_user_limit: a.per_user_limit,
            concurrency: a.concurrency,
            options: a.rush.clone(),
            abandon: (a.abandon > 0.0).then(|| rush::Abandon {
                ratio: a.abandon,
                within: Duration::from_millis(a.abandon_within_ms),
                retry_ratio: a.abandon_retry,
            }),
            retry_bound: Duration::from_millis(a.retry_bound_ms),
            hold_seconds: a.hold_seconds,
        }
    }
}

/// A sale and its buyers, ready for the rush.
pub struct Prepared {
    /// The sale as created.
    pub sale: pb::Sale,
    /// The buyers.
    pub buyers: Arc<Vec<Buyer>>,
    /// How they got their tokens.
    pub source: BuyerSource,
    /// This run's tag (in names and idempotency keys).
    pub tag: String,
}

/// Creates the sale and the buyers, saying what it did.
pub async fn prepare(session: &Session, scenario: &Scenario) -> anyhow::Result<Prepared> {
    anyhow::ensure!(scenario.buyers > 0, "--buyers must be at least 1");
    anyhow::ensure!(scenario.units > 0, "--units must be at least 1");
    anyhow::ensure!(scenario.min_qty >= 1 && scenario.min_qty <= scenario.max_qty, "need 1 <= --min-qty <= --max-qty");
    let tag = setup::run_tag();
    let spec = SaleSpec {
        units: scenario.units,
        per_user_limit: scenario.per_user_limit,
        max_per_purchase: scenario.max_qty,
        window: Duration::from_secs(scenario.options.sale_secs),
        hold_seconds: scenario.hold_seconds,
        queue: None,
        start_in: Duration::ZERO,
    };
    let sale = setup::create_sale(session, &spec, &tag).await?;
    println!(
        "sale {}: {} units, quantity {}..={}, per-user limit {}",
        sale.id,
        sale.allocated,
        scenario.min_qty,
        scenario.max_qty,
        if scenario.per_user_limit == 0 { "none".to_string() } else { scenario.per_user_limit.to_string() }
    );
    let started = Instant::now();
    let (buyers, source) = setup::buyers(
        session,
        scenario.buyers,
        scenario.options.mint_tokens,
        scenario.options.register_concurrency,
        &tag,
    )
    .await?;
    println!("buyers: {} {} in {:.1} s", buyers.len(), source, started.elapsed().as_secs_f64());
    Ok(Prepared { sale, buyers: Arc::new(buyers), source, tag })
}

/// One WatchSale stream followed to its end: what it saw and when (offsets from `epoch`).
#[derive(Debug, Default)]
pub struct FeedLog {
    /// (arrival, sold, remaining) of each snapshot.
    pub points: Vec<(Duration, i64, i64)>,
    /// The last snapshot (the ENDED one when the stream ended cleanly).
    pub last: Option<pb::SaleSnapshot>,
    /// Why the stream stopped early, if it did.
    pub error: Option<String>,
}

/// Opens a WatchSale stream.
pub async fn open_watch(session: &Session, sale_id: &str) -> anyhow::Result<tonic::Streaming<pb::SaleSnapshot>> {
    Ok(session
        .pool
        .feeds()
        .watch_sale(pb::WatchSaleRequest { sale_id: sale_id.into() })
        .await
        .context("WatchSale")?
        .into_inner())
}

/// Opens WatchSale and follows it in a task until the stream ends; returns once the first
/// snapshot arrived.
pub async fn follow_feed(
    session: &Session,
    sale_id: &str,
    epoch: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<FeedLog>> {
    let mut stream = open_watch(session, sale_id).await?;
    let first = stream.message().await.context("WatchSale's first snapshot")?.context("WatchSale ended at once")?;
    Ok(tokio::spawn(async move {
        let mut log = FeedLog::default();
        let mut snapshot = Some(first);
        loop {
            if let Some(s) = snapshot.take() {
                log.points.push((epoch.elapsed(), s.sold, s.remaining));
                log.last = Some(s);
            }
            match stream.message().await {
                Ok(Some(s)) => snapshot = Some(s),
                Ok(None) => return log,
                Err(status) => {
                    log.error = Some(status.to_string());
                    return log;
                }
            }
        }
    }))
}

/// Runs the rush with a progress bar.
pub async fn run_rush(session: &Session, scenario: &Scenario, prepared: &Prepared, epoch: Instant) -> RushResult {
    let quantities =
        rush::draw_quantities(scenario.attempts, scenario.min_qty, scenario.max_qty, scenario.options.seed);
    let plan = RushPlan {
        sale_id: prepared.sale.id.clone(),
        buyers: prepared.buyers.clone(),
        quantities,
        concurrency: scenario.concurrency,
        rate: scenario.options.rate,
        max_retries: scenario.options.max_retries,
        key_prefix: format!("lg-{}", prepared.tag),
        abandon: scenario.abandon,
        seed: scenario.options.seed.unwrap_or_else(rand::random),
    };
    let progress = stats::progress_bar(scenario.attempts as u64, "purchasing");
    let cpu = CpuMeter::start(session.server_pid);
    let mut result = rush::run(session.pool.clone(), plan, epoch, &progress).await;
    progress.finish_and_clear();
    result.cpu = cpu.finish();
    result
}

/// CPU used by the server (when its pid is known) and by loadgen between two instants.
struct CpuMeter {
    server: Option<(u32, Duration)>,
    ours: Option<Duration>,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|pid| crate::target::cpu_time(pid).ok().map(|t| (pid, t))),
            ours: crate::target::cpu_time(std::process::id()).ok(),
        }
    }

    fn finish(self) -> rush::CpuUse {
        rush::CpuUse {
            server: self.server.and_then(|(pid, t0)| crate::target::cpu_time(pid).ok().map(|t| t.saturating_sub(t0))),
            loadgen: self
                .ours
                .and_then(|t0| crate::target::cpu_time(std::process::id()).ok().map(|t| t.saturating_sub(t0))),
        }
    }
}

/// After the rush: the sale ended (EndSale when it did not sell out), read back and judged.
pub struct Finished {
    /// GetSale after the end.
    pub sale: pb::Sale,
    /// The feed followed through the rush.
    pub feed: FeedLog,
    /// The verdict.
    pub verdict: Verdict,
}

/// Ends the sale if still open, waits for the feed's ENDED snapshot, lists every buyer's orders
/// and judges.
pub async fn finish(
    session: &Session,
    scenario: &Scenario,
    prepared: &Prepared,
    rush: &RushResult,
    feed: tokio::task::JoinHandle<FeedLog>,
) -> anyhow::Result<Finished> {
    let sale_id = prepared.sale.id.as_str();
    // Before anything ends the sale: with callers that gave up, nothing may be left in flight.
    let after_rush = match scenario.abandon {
        Some(_) => Some(setup::get_sale(session, sale_id).await?),
        None => None,
    };
    let ended = setup::end_sale_if_open(session, sale_id).await?;
    if ended.end_reason() != pb::EndReason::SoldOut {
        println!("the sale did not sell out; ended it ({:?})", ended.end_reason());
    }
    let feed = match tokio::time::timeout(Duration::from_secs(30), feed).await {
        Ok(log) => log.context("the feed task panicked")?,
        Err(_) => FeedLog { error: Some("no ENDED snapshot within 30 s of the end".into()), ..FeedLog::default() },
    };
    if let Some(error) = &feed.error {
        println!("the WatchSale stream stopped early: {error}");
    }
    let sale = setup::get_sale(session, sale_id).await?;
    let listed = setup::list_orders(session, &prepared.buyers, sale_id, scenario.concurrency.clamp(1, 256)).await?;
    let final_snapshot = feed.last.as_ref().filter(|s| s.status() == pb::SaleStatus::Ended);
    let verdict = verdict::judge(&Evidence {
        records: &rush.records,
        buyers: &prepared.buyers,
        per_user_limit: scenario.per_user_limit,
        sale: &sale,
        final_snapshot,
        listed: &listed,
        abandon: after_rush
            .as_ref()
            .map(|after_rush| verdict::AbandonEvidence { after_rush, retry_bound: scenario.retry_bound }),
    });
    Ok(Finished { sale, feed, verdict })
}

/// What a subcommand hands back: the verdict, the final sale and the figures.
pub struct Report {
    /// Did every check hold.
    pub verdict: Verdict,
    /// GetSale at the end.
    pub sale: pb::Sale,
    /// Every figure, by name.
    pub figures: Figures,
}

/// Throughput and latency of a rush: printed, and added to `figures`.
pub fn rush_figures(rush: &RushResult, figures: &mut Figures) {
    let mut acked = stats::histogram();
    let mut refused = stats::histogram();
    let mut all = stats::histogram();
    let (mut acks, mut retries) = (0u64, 0u64);
    for r in &rush.records {
        stats::record(&mut all, r.latency());
        retries += u64::from(r.calls.saturating_sub(1));
        match r.outcome {
            Outcome::Acked { .. } => {
                acks += 1;
                stats::record(&mut acked, r.latency());
            }
            _ => stats::record(&mut refused, r.latency()),
        }
    }
    let attempts = rush.records.len() as u64;
    let (ack_rate, attempt_rate) = (per_sec(acks, rush.elapsed), per_sec(attempts, rush.elapsed));
    println!(
        "throughput: {ack_rate:.0} acknowledged purchases/s, {attempt_rate:.0} attempts/s ({attempts} attempts, {acks} acknowledged, {retries} retries, in {:.3} s)",
        rush.elapsed.as_secs_f64()
    );
    let (acked, refused, all) = (Percentiles::of(&acked), Percentiles::of(&refused), Percentiles::of(&all));
    println!("latency, acknowledged: {}", acked.line());
    println!("latency, refused:      {}", refused.line());
    println!("latency, all attempts: {}", all.line());
    figures.add("attempts", attempts);
    figures.add("acknowledged", acks);
    figures.add("retries", retries);
    figures.add("elapsed_s", format!("{:.4}", rush.elapsed.as_secs_f64()));
    figures.add("purchases_per_sec", format!("{ack_rate:.1}"));
    figures.add("attempts_per_sec", format!("{attempt_rate:.1}"));
    let cores = |cpu: Option<Duration>| cpu.map(|c| c.as_secs_f64() / rush.elapsed.as_secs_f64().max(1e-9));
    if let (Some(server), Some(cores)) = (rush.cpu.server, cores(rush.cpu.server)) {
        println!(
            "cpu during the rush: server {:.2} s ({cores:.2} cores), {:.1} µs per attempt",
            server.as_secs_f64(),
            server.as_secs_f64() * 1e6 / attempts.max(1) as f64
        );
        figures.add("server_cpu_cores", format!("{cores:.2}"));
        figures.add("server_cpu_us_per_attempt", format!("{:.1}", server.as_secs_f64() * 1e6 / attempts.max(1) as f64));
    }
    if let (Some(ours), Some(cores)) = (rush.cpu.loadgen, cores(rush.cpu.loadgen)) {
        println!("cpu during the rush: loadgen {:.2} s ({cores:.2} cores)", ours.as_secs_f64());
        figures.add("loadgen_cpu_cores", format!("{cores:.2}"));
    }
    acked.add_to(figures, "acked_latency");
    refused.add_to(figures, "refused_latency");
    all.add_to(figures, "latency");
}

/// Prints the verdict and the final numbers; adds them to `figures`.
pub fn verdict_figures(finished: &Finished, figures: &mut Figures) {
    print!("{}", finished.verdict.render());
    figures.add("sold", finished.sale.sold);
    figures.add("remaining", finished.sale.remaining);
    figures.add("verdict", if finished.verdict.passed() { "pass" } else { "fail" });
}

/// Writes the chart of a rehearsal.
pub fn write_chart(
    path: &std::path::Path,
    title: String,
    rush: &RushResult,
    feed: &FeedLog,
    allocated: i64,
) -> anyhow::Result<()> {
    let start = rush.records.iter().map(|r| r.start).min().unwrap_or_default();
    let secs = |d: Duration| d.saturating_sub(start).as_secs_f64();
    let remaining: Vec<(f64, i64)> = feed.points.iter().map(|&(t, _, remaining)| (secs(t), remaining)).collect();
    let acks: Vec<f64> = rush.records.iter().filter(|r| r.acked_units() > 0).map(|r| secs(r.end)).collect();
    chart::write(path, &ChartData { title, remaining: &remaining, acks: &acks, allocated })?;
    println!("chart: {}", path.display());
    Ok(())
}

/// `loadgen rehearse`. With `--sign-in-storm N`, the rush runs twice on fresh sales: as asked,
/// then during a storm of N callers signing in, and both throughputs are reported.
pub async fn run(args: RehearseArgs) -> anyhow::Result<Report> {
    let session = Session::open(&args.target).await?;
    println!("server: {}", session.addr);
    let scenario = Scenario::from(&args);
    let mut figures = Figures::default();
    let (verdict, sale) = if args.queue {
        crate::queue::rehearse(&session, &args, &mut figures).await?
    } else if args.hold_seconds > 0 {
        rehearse_holds(&session, &scenario, &args, &mut figures).await?
    } else if args.order_feed {
        // Four rushes on fresh sales of the same server, alone, fed, fed, alone (ABBA): a later
        // rush meets a server holding more orders (larger indexes to grow), so each kind runs
        // once early and once late, and the ratio compares their sums.
        let (mut alone1, mut fed2, mut alone2) = (Figures::default(), Figures::default(), Figures::default());
        let (first_alone, a1) = rehearse_once(&session, &scenario, &args, &mut alone1, false).await?;
        println!("\nthe same rush again, with a consumer of the order feed attached:");
        let (first_fed, f1) = rehearse_once(&session, &scenario, &args, &mut figures, true).await?;
        println!("\nand again with the consumer:");
        let (mut fed, f2) = rehearse_once(&session, &scenario, &args, &mut fed2, true).await?;
        println!("\nand alone again:");
        let (last_alone, a2) = rehearse_once(&session, &scenario, &args, &mut alone2, false).await?;
        // The server's CPU per purchase, each kind's mean: what the feed costs the server, apart
        // from what the consumer (here on the same cores) costs the machine.
        let cpu = |f: &Figures| f.get("server_cpu_us_per_attempt").and_then(|v| v.parse::<f64>().ok());
        if let (Some(c1), Some(c2), Some(c3), Some(c4)) = (cpu(&alone1), cpu(&figures), cpu(&fed2), cpu(&alone2)) {
            let (alone_cpu, fed_cpu) = ((c1 + c4) / 2.0, (c2 + c3) / 2.0);
            println!("server CPU per purchase: {alone_cpu:.1} µs alone, {fed_cpu:.1} µs with the feed followed");
            figures.add("alone_server_cpu_us_per_attempt", format!("{alone_cpu:.1}"));
            figures.add("fed_server_cpu_us_per_attempt", format!("{fed_cpu:.1}"));
        }
        let (alone_rate, fed_rate) = ((a1 + a2) / 2.0, (f1 + f2) / 2.0);
        let ratio = fed_rate / alone_rate.max(f64::MIN_POSITIVE);
        println!("throughput (alone, fed, fed, alone): {a1:.0}, {f1:.0}, {f2:.0}, {a2:.0} acknowledged purchases/s: {alone_rate:.0}/s alone, {fed_rate:.0}/s with the order feed followed: {ratio:.2}×");
        figures.add("alone_purchases_per_sec", format!("{alone_rate:.1}"));
        figures.add("fed_purchases_per_sec", format!("{fed_rate:.1}"));
        figures.add("order_feed_ratio", format!("{ratio:.3}"));
        fed.verdict.checks.push(crate::verdict::Check {
            name: "the first rush with the consumer passed too",
            passed: first_fed.verdict.passed(),
            detail: format!("sold {} of {}", first_fed.sale.sold, first_fed.sale.allocated),
        });
        fed.verdict.checks.push(crate::verdict::Check {
            name: "the rushes without the consumer passed too",
            passed: first_alone.verdict.passed() && last_alone.verdict.passed(),
            detail: format!(
                "sold {} and {} of {}",
                first_alone.sale.sold, last_alone.sale.sold, first_alone.sale.allocated
            ),
        });
        print!("{}", fed.verdict.render());
        (fed.verdict, fed.sale)
    } else if args.sign_in_storm == 0 {
        let (finished, _) = rehearse_once(&session, &scenario, &args, &mut figures, false).await?;
        (finished.verdict, finished.sale)
    } else {
        let mut calm = Figures::default();
        let (baseline, calm_rate) = rehearse_once(&session, &scenario, &args, &mut calm, false).await?;
        println!();
        println!("the same rush again, during a sign-in storm of {} callers:", args.sign_in_storm);
        let storm = Storm::start(session.pool.clone(), args.sign_in_storm, &crate::setup::run_tag());
        let (mut stormy, storm_rate) = rehearse_once(&session, &scenario, &args, &mut figures, false).await?;
        let storm = storm.stop().await;
        storm.report(&mut figures);
        let ratio = storm_rate / calm_rate.max(f64::MIN_POSITIVE);
        println!("throughput: {calm_rate:.0} acknowledged purchases/s alone, {storm_rate:.0}/s during the storm: {ratio:.2}×");
        figures.add("calm_purchases_per_sec", format!("{calm_rate:.1}"));
        figures.add("storm_ratio", format!("{ratio:.3}"));
        stormy.verdict.checks.push(crate::verdict::Check {
            name: "the rush without the storm passed too",
            passed: baseline.verdict.passed(),
            detail: format!("sold {} of {}", baseline.sale.sold, baseline.sale.allocated),
        });
        print!("{}", stormy.verdict.render());
        (stormy.verdict, stormy.sale)
    };
    if let Some(path) = &scenario.options.figures {
        figures.write(path)?;
    }
    if let Some(server) = session.server {
        server.stop().await;
    }
    Ok(Report { verdict, sale, figures })
}

/// Prepares a sale, rushes it (with a consumer of the order feed attached when `order_feed`),
/// finishes and judges it, prints and adds the figures; returns the outcome and the
/// acknowledged purchases/s.
async fn rehearse_once(
    session: &Session,
    scenario: &Scenario,
    args: &RehearseArgs,
    figures: &mut Figures,
    order_feed: bool,
) -> anyhow::Result<(Finished, f64)> {
    let prepared = prepare(session, scenario).await?;
    let consumer = match order_feed {
        true => Some(crate::orders::OrderFeedConsumer::start(session, &prepared.sale.id).await?),
        false => None,
    };
    let epoch = Instant::now();
    let feed = follow_feed(session, &prepared.sale.id, epoch).await?;
    let rush = run_rush(session, scenario, &prepared, epoch).await;
    let mut finished = finish(session, scenario, &prepared, &rush, feed).await?;
    if let Some(consumer) = consumer {
        let acknowledged: std::collections::HashSet<String> = rush
            .records
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Acked { order_id, .. } => Some(order_id.clone()),
                _ => None,
            })
            .collect();
        let consumed = consumer.finish(acknowledged.len()).await?;
        crate::orders::report(&consumed, &rush.records, epoch, figures);
        finished.verdict.checks.push(crate::orders::check(&consumed, &acknowledged));
    }

    figures.add("buyers_source", if prepared.source == BuyerSource::Minted { "minted" } else { "registered" });
    rush_figures(&rush, figures);
    if scenario.abandon.is_some() {
        abandon_figures(&rush, figures);
    }
    verdict_figures(&finished, figures);
    if let Some(path) = &args.chart {
        let title = format!(
            "rehearsal: {} buyers, {} units, concurrency {}",
            scenario.buyers, scenario.units, scenario.concurrency
        );
        write_chart(path, title, &rush, &finished.feed, finished.sale.allocated)?;
    }
    let acks = rush.records.iter().filter(|r| matches!(r.outcome, Outcome::Acked { .. })).count();
    Ok((finished, per_sec(acks as u64, rush.elapsed)))
}

/// A rehearsal with checkout holds: the rush, then payments, cancels, expiries and the line
/// (see [`crate::holds`]).
async fn rehearse_holds(
    session: &Session,
    scenario: &Scenario,
    args: &RehearseArgs,
    figures: &mut Figures,
) -> anyhow::Result<(Verdict, pb::Sale)> {
    anyhow::ensure!((0.0..=1.0).contains(&args.pay_ratio), "--pay-ratio must be within 0..=1");
    let prepared = prepare(session, scenario).await?;
    let late_count = if args.waitlist { args.late_buyers } else { 0 };
    let late = crate::holds::late_buyers(session, late_count, scenario.options.mint_tokens, &prepared.tag).await?;
    let feed = crate::holds::follow(session, &prepared.sale.id).await?;
    let epoch = Instant::now();
    let rush = run_rush(session, scenario, &prepared, epoch).await;
    figures.add("buyers_source", if prepared.source == BuyerSource::Minted { "minted" } else { "registered" });
    rush_figures(&rush, figures);
    let acked: i64 = rush.records.iter().map(|r| i64::from(r.acked_units())).sum();
    let held = setup::get_sale(session, &prepared.sale.id).await?;
    let plan = crate::holds::HoldPlan {
        hold_seconds: args.hold_seconds,
        pay_ratio: args.pay_ratio,
        seed: scenario.options.seed.unwrap_or(7),
    };
    let outcome = crate::holds::settle(session, plan, &prepared, &late, &rush.records, feed, figures).await?;
    let mut checks = vec![crate::verdict::Check {
        name: "every acknowledged purchase is a hold the sale counts",
        passed: held.sold == acked && held.sold <= held.allocated,
        detail: format!("{acked} units acknowledged, {} sold (held or confirmed) of {}", held.sold, held.allocated),
    }];
    checks.extend(outcome.checks);
    let verdict = Verdict { checks };
    print!("{}", verdict.render());
    figures.add("sold", outcome.sale.sold);
    figures.add("verdict", if verdict.passed() { "pass" } else { "fail" });
    Ok((verdict, outcome.sale))
}

/// What the callers that gave up did, and how long the sale took to sell its last unit.
fn abandon_figures(rush: &RushResult, figures: &mut Figures) {
    let gave_up = rush.records.iter().filter(|r| r.gave_up.is_some()).count();
    let came_back = rush.records.iter().filter(|r| r.longest_retry_call.is_some()).count();
    let start = rush.records.iter().map(|r| r.start).min().unwrap_or_default();
    let last_unit = rush
        .records
        .iter()
        .filter(|r| r.acked_units() > 0)
        .map(|r| r.end)
        .max()
        .unwrap_or_default()
        .saturating_sub(start);
    let longest_retry = rush.records.iter().filter_map(|r| r.longest_retry_call).max().unwrap_or_default();
    println!(
        "callers that gave up: {gave_up} ({came_back} came back with their key; longest retry call {} ms); last unit sold {:.3} s after the first attempt",
        longest_retry.as_millis(),
        last_unit.as_secs_f64()
    );
    figures.add("gave_up", gave_up);
    figures.add("came_back", came_back);
    figures.add("longest_retry_call_ms", longest_retry.as_millis());
    figures.add("last_unit_s", format!("{:.3}", last_unit.as_secs_f64()));
}
