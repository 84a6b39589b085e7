//! `loadgen rehearse --queue`: a drop behind a waiting room. Every buyer enters the room
//! (EnterQueue), waits to be admitted, and buys one unit with the pass; the first buyers also
//! try to buy without one first. With `--prequeue-seconds`, the sale starts that long after its
//! creation and every buyer waits in the pre-queue, drawn at the start.
//!
//! The verdict:
//! - no purchase succeeded without a pass (every try without one was refused
//!   ADMISSION_REQUIRED);
//! - admissions followed the line: each place was admitted once (tickets 0..n), and by the
//!   server's clock (read from each pass: its expiry less the admission length) no place was
//!   admitted before an earlier one;
//! - with a rate, admissions came at it within 10% (measured between the 10th and the 90th
//!   percentile of admission times);
//! - the sale sold exactly min(units, buyers) units, each to an admitted buyer.
//!
//! Figures: the line's length, admissions per second, server memory per waiting buyer (RSS
//! with everyone in the pre-queue or the line, against before), and the server's CPU per update
//! streamed (the whole admission phase, purchases included: an upper bound).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use flashsale_client::pb;
use tokio::sync::mpsc;

use crate::cli::RehearseArgs;
use crate::rush::Refusal;
use crate::setup::{self, Buyer, SaleSpec};
use crate::stats::{per_sec, Figures};
use crate::target::{authed, cpu_time, rss_bytes, Pool, Session};
use crate::verdict::{Check, Verdict};

/// Buyers who first try to buy without a pass.
const PROBES: usize = 100;
/// The rehearsal's admission length.
const ADMISSION_SECONDS: i64 = 600;
/// Longest wait for the whole line, beyond what the rate makes it last.
const SLACK: Duration = Duration::from_secs(120);

/// One buyer's time in the room.
#[derive(Debug, Default)]
struct Waited {
    /// When they were told of their admission (from the rehearsal's epoch), and with which
    /// place.
    admitted: Option<(Duration, u64)>,
    /// When the server admitted them, by its clock (Unix ms; the pass's expiry less the
    /// admission length).
    admitted_by_server: Option<i64>,
    /// The purchase with the pass succeeded.
    bought: bool,
    /// Told CLOSED before their turn (the sale sold out or ended first).
    closed: bool,
    /// Anything else that went wrong.
    error: Option<String>,
    /// Updates received.
    updates: u64,
    /// The longest line any update showed.
    peak_waiting: u64,
}

/// The expiry (Unix ms) and place of an admission, read from its pass
/// (`<sale>\n<buyer>\n<expiry>\n<ticket>`): the server's admission time is the expiry less the
/// room's admission length.
fn admission_of(pass: &str) -> Option<(i64, u64)> {
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(pass.split('.').next()?).ok()?;
    let body = String::from_utf8(body).ok()?;
    let fields: Vec<&str> = body.split('\n').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Enters the room (again after a broken stream), waits for the admission, buys with the pass.
async fn wait_and_buy(
    channel: tonic::transport::Channel,
    buyer: Buyer,
    sale_id: String,
    epoch: Instant,
    entered: mpsc::Sender<()>,
) -> Waited {
    let mut waited = Waited::default();
    let mut client = pb::purchase_service_client::PurchaseServiceClient::new(channel);
    let mut told_entered = Some(entered);
    let pass = 'room: loop {
        let request = authed(pb::EnterQueueRequest { sale_id: sale_id.clone() }, &buyer.bearer);
        let mut updates = match client.enter_queue(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(status) => {
                waited.error = Some(format!("EnterQueue: {status:?}"));
                return waited;
            }
        };
        loop {
            match updates.message().await {
                Ok(Some(update)) => {
                    waited.updates += 1;
                    waited.peak_waiting = waited.peak_waiting.max(update.waiting);
                    if let Some(tx) = told_entered.take() {
                        let _ = tx.send(()).await;
                    }
                    match pb::QueueState::try_from(update.state) {
                        Ok(pb::QueueState::Admitted) => {
                            let Some((expiry, place)) = admission_of(&update.admission_pass) else {
                                waited.error = Some("an admission whose pass names no place".into());
                                return waited;
                            };
                            waited.admitted = Some((epoch.elapsed(), place));
                            waited.admitted_by_server = Some(expiry - ADMISSION_SECONDS * 1000);
                            break 'room update.admission_pass;
                        }
                        Ok(pb::QueueState::Waiting) => {}
                        Ok(pb::QueueState::Closed) => {
                            waited.closed = true;
                            return waited;
                        }
                        other => {
                            waited.error = Some(format!("the room ended before the admission: {other:?}"));
                            return waited;
                        }
                    }
                }
                Ok(None) => {
                    waited.error = Some("the stream ended before the admission".into());
                    return waited;
                }
                Err(status) if status.code() == tonic::Code::Unavailable => break,
                Err(status) => {
                    waited.error = Some(format!("the room's stream: {status:?}"));
                    return waited;
                }
            }
        }
    };
    let request = pb::PurchaseRequest {
        sale_id: sale_id.clone(),
        quantity: 1,
        idempotency_key: "queued".into(),
        admission_pass: pass,
    };
    for _ in 0..5 {
        match client.purchase(authed(request.clone(), &buyer.bearer)).await {
            Ok(_) => {
                waited.bought = true;
                return waited;
            }
            // Admitted after the last unit went: not bought, nothing wrong.
            Err(status) if Refusal::from_status(&status).is_stock() => return waited,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                waited.error = Some(format!("Purchase with the pass: {status:?}"));
                return waited;
            }
        }
    }
    waited.error = Some("Purchase with the pass stayed UNAVAILABLE".into());
    waited
}

/// Tries to buy without a pass; true when refused ADMISSION_REQUIRED.
async fn probe(session: &Session, buyer: &Buyer, sale_id: &str) -> anyhow::Result<bool> {
    let request = pb::PurchaseRequest {
        sale_id: sale_id.into(),
        quantity: 1,
        idempotency_key: "no-pass".into(),
        admission_pass: String::new(),
    };
    match session.pool.purchase().purchase(authed(request, &buyer.bearer)).await {
        Ok(_) => Ok(false),
        Err(status) => Ok(Refusal::from_status(&status).reason == "ADMISSION_REQUIRED"),
    }
}

/// `loadgen rehearse --queue`.
pub async fn rehearse(
    session: &Session,
    args: &RehearseArgs,
    figures: &mut Figures,
) -> anyhow::Result<(Verdict, pb::Sale)> {
    anyhow::ensure!(
        args.admit_per_second > 0 || args.max_active > 0,
        "--queue needs --admit-per-second or --max-active"
    );
    let tag = setup::run_tag();
    let lead = Duration::from_secs(u64::from(args.prequeue_seconds));
    let spec = SaleSpec {
        units: args.units,
        per_user_limit: 1,
        max_per_purchase: 1,
        window: Duration::from_secs(args.rush.sale_secs).max(lead + Duration::from_secs(60)),
        hold_seconds: 0,
        queue: Some(pb::QueueOptions {
            prequeue_seconds: args.prequeue_seconds,
            admit_per_second: args.admit_per_second,
            max_active_buyers: args.max_active,
            admission_seconds: ADMISSION_SECONDS as u32,
        }),
        start_in: lead,
    };
    let sale = setup::create_sale(session, &spec, &tag).await?;
    let (buyers, _) =
        setup::buyers(session, args.buyers, args.rush.mint_tokens, args.rush.register_concurrency, &tag).await?;
    let n = buyers.len();
    println!(
        "sale {}: {} units behind a waiting room ({} admitted/s, cap {}, pre-queue {} s); {n} buyers",
        sale.id, sale.allocated, args.admit_per_second, args.max_active, args.prequeue_seconds
    );
    let mut refused_without_pass = 0;
    for buyer in buyers.iter().take(PROBES) {
        refused_without_pass += usize::from(probe(session, buyer, &sale.id).await?);
    }
    let probes = PROBES.min(n);

    let connections = n.div_ceil(args.streams_per_connection.max(1));
    let pool = Arc::new(Pool::connect(&session.addr, connections).await?);
    let rss_before = session.server_pid.map(rss_bytes).transpose()?;
    let epoch = Instant::now();
    let (entered_tx, mut entered_rx) = mpsc::channel::<()>(n.max(1));
    let waiters: Vec<_> = buyers
        .into_iter()
        .map(|buyer| tokio::spawn(wait_and_buy(pool.channel(), buyer, sale.id.clone(), epoch, entered_tx.clone())))
        .collect();
    drop(entered_tx);
    let mut entered = 0;
    while entered < n && entered_rx.recv().await.is_some() {
        entered += 1;
    }
    let all_in = epoch.elapsed();
    let (rss_waiting, cpu_from) = match session.server_pid {
        Some(pid) => (Some(rss_bytes(pid)?), Some(cpu_time(pid)?)),
        None => (None, None),
    };
    println!(
        "in line: {entered} of {n} buyers entered in {:.2} s over {connections} connections",
        all_in.as_secs_f64()
    );
    let bound = SLACK + Duration::from_secs_f64(n as f64 / f64::from(args.admit_per_second.max(1)));
    let mut total_updates = 0;
    let mut logs = Vec::with_capacity(n);
    for waiter in waiters {
        let log = tokio::time::timeout(bound, waiter).await.context("a buyer was not admitted in time")??;
        total_updates += log.updates;
        logs.push(log);
    }
    let cpu_used = match (session.server_pid, cpu_from) {
        (Some(pid), Some(from)) => Some(cpu_time(pid)?.saturating_sub(from)),
        _ => None,
    };
    let sale = setup::end_sale_if_open(session, &sale.id).await?;

    // Each place admitted once, in line order.
    let mut admissions: Vec<(Duration, u64)> = logs.iter().filter_map(|l| l.admitted).collect();
    admissions.sort_by_key(|&(_, place)| place);
    let places_once = admissions.iter().enumerate().all(|(i, &(_, place))| place == i as u64);
    // The server admitted place after place: by its clock, no place before an earlier one.
    let mut by_place: Vec<(u64, i64)> =
        logs.iter().filter_map(|l| Some((l.admitted?.1, l.admitted_by_server?))).collect();
    by_place.sort_unstable();
    let out_of_line = by_place.windows(2).filter(|w| w[1].1 < w[0].1).count();
    // What buyers saw: how much later than a later place an earlier one was told.
    let mut worst_overtake = Duration::ZERO;
    let mut latest = Duration::ZERO;
    for &(at, _) in &admissions {
        worst_overtake = worst_overtake.max(latest.saturating_sub(at));
        latest = latest.max(at);
    }
    let mut times: Vec<Duration> = admissions.iter().map(|&(at, _)| at).collect();
    times.sort();
    let (p10, p90) = (times.len() / 10, times.len() * 9 / 10);
    let measured = match (times.get(p10), times.get(p90.saturating_sub(1))) {
        (Some(&from), Some(&to)) if to > from => Some((p90.saturating_sub(1) - p10) as f64 / (to - from).as_secs_f64()),
        _ => None,
    };
    let bought = logs.iter().filter(|l| l.bought).count() as i64;
    let errors: Vec<&String> = logs.iter().filter_map(|l| l.error.as_ref()).collect();
    let closed = logs.iter().filter(|l| l.closed).count();
    let peak = logs.iter().map(|l| l.peak_waiting).max().unwrap_or(0);

    let mut checks = vec![
        Check {
            name: "no purchase succeeded without a pass",
            passed: refused_without_pass == probes,
            detail: format!("{refused_without_pass} of {probes} tries without a pass refused ADMISSION_REQUIRED"),
        },
        Check {
            name: "every buyer was admitted, each place once, or told CLOSED once the sale sold out",
            passed: admissions.len() + closed == n
                && (closed == 0 || sale.sold == sale.allocated)
                && places_once
                && errors.is_empty(),
            detail: format!(
                "{} of {n} admitted, {closed} told CLOSED; {} errors{}",
                admissions.len(),
                errors.len(),
                errors.first().map(|e| format!(", first: {e}")).unwrap_or_default()
            ),
        },
        Check {
            name: "admissions followed the line",
            passed: out_of_line == 0 && by_place.len() == admissions.len(),
            detail: format!(
                "{out_of_line} places admitted (server clock) before an earlier one; buyers were told at most {:.0} ms after a later place",
                worst_overtake.as_secs_f64() * 1000.0
            ),
        },
        Check {
            name: "the units went to admitted buyers, never more than allocated",
            passed: sale.sold == bought && bought == sale.allocated.min(n as i64),
            detail: format!("{bought} bought with a pass, sold {} of {}", sale.sold, sale.allocated),
        },
    ];
    if args.admit_per_second > 0 && args.max_active == 0 {
        let target = f64::from(args.admit_per_second);
        checks.push(Check {
            name: "admissions came at the set rate (±10%)",
            passed: measured.is_some_and(|r| (r - target).abs() <= target * 0.1),
            detail: format!(
                "{} admitted/s between the 10th and 90th percentile, set {target}",
                measured.map_or("unknown".into(), |r| format!("{r:.1}"))
            ),
        });
    }
    let verdict = Verdict { checks };
    print!("{}", verdict.render());

    figures.add("queue_buyers", n);
    figures.add("queue_peak_waiting", peak);
    figures.add("queue_enter_secs", format!("{:.2}", all_in.as_secs_f64()));
    if let Some(rate) = measured {
        figures.add("queue_admissions_per_sec", format!("{rate:.1}"));
    }
    figures.add("queue_updates", total_updates);
    figures.add("queue_told_late_ms", format!("{:.0}", worst_overtake.as_secs_f64() * 1000.0));
    if let (Some(before), Some(waiting)) = (rss_before, rss_waiting) {
        let per = waiting.saturating_sub(before) as f64 / n as f64;
        println!(
            "server memory: RSS {:.1} MiB before, {:.1} MiB with {n} waiting: {:.2} KiB per waiting buyer",
            before as f64 / 1048576.0,
            waiting as f64 / 1048576.0,
            per / 1024.0
        );
        figures.add("queue_memory_per_waiting_kib", format!("{:.3}", per / 1024.0));
    }
    if let Some(cpu) = cpu_used {
        let per = cpu.as_secs_f64() * 1e6 / total_updates.max(1) as f64;
        println!("server CPU: {:.2} s during the admissions, {per:.1} µs per update streamed ({total_updates} updates, purchases included)", cpu.as_secs_f64());
        figures.add("queue_server_cpu_us_per_update", format!("{per:.1}"));
    }
    if let Some(&last) = times.last() {
        figures.add("queue_admitted_per_sec_overall", format!("{:.1}", per_sec(admissions.len() as u64, last)));
    }
    Ok((verdict, sale))
}
