//! `loadgen watch`: N concurrent WatchSale streams on one sale while a rush runs.
//!
//! Memory per watcher: the server's RSS (from /proc) before the watchers open and once every
//! one of them has its first snapshot, divided by N.
//!
//! Purchase→delivery latency: acknowledged purchases are put in the order their answers
//! arrived, with the running sum C_i of their quantities. When purchase i is acknowledged, at
//! least C_i units are sold (every order acknowledged before it is durable, and so is it), so
//! the first snapshot whose `sold` is at least C_i is the first one that can include it. The
//! latency of i for a watcher is that snapshot's arrival minus i's acknowledgement (0 when the
//! snapshot came first). Each watcher is sampled at up to `--samples-per-watcher` purchases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flashsale_client::pb;
use tokio::sync::mpsc;

use crate::cli::WatchArgs;
use crate::rehearse::{self, Report, Scenario};
use crate::rush::{Outcome, RushResult};
use crate::setup::BuyerSource;
use crate::stats::{self, Figures, Percentiles};
use crate::target::{rss_bytes, Pool, Session};

/// What one watcher saw: (sold, arrival) of each snapshot.
#[derive(Debug, Default)]
pub struct WatcherLog {
    /// Every snapshot's `sold` and arrival (offset from the epoch).
    pub points: Vec<(i64, Duration)>,
    /// True when the stream ended after an ENDED snapshot.
    pub saw_end: bool,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// `loadgen watch`.
pub async fn run(args: WatchArgs) -> anyhow::Result<Report> {
    let session = Session::open(&args.target).await?;
    println!("server: {}", session.addr);
    let scenario = Scenario {
        units: args.units,
        buyers: args.buyers,
        attempts: args.buyers,
        min_qty: 1,
        max_qty: 1,
        per_user_limit: 0,
        concurrency: args.concurrency,
        options: args.rush.clone(),
        abandon: None,
        retry_bound: Duration::ZERO,
        hold_seconds: 0,
    };
    let prepared = rehearse::prepare(&session, &scenario).await?;
    let sale_id = prepared.sale.id.clone();

    let n = args.watchers.max(1);
    let connections = n.div_ceil(args.streams_per_connection.max(1));
    let watch_pool = Arc::new(Pool::connect(&session.addr, connections).await?);
    let rss_before = session.server_pid.map(rss_bytes).transpose()?;

    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(n);
    let opened_at = Instant::now();
    let watchers: Vec<_> =
        (0..n).map(|_| tokio::spawn(watcher(watch_pool.clone(), sale_id.clone(), epoch, ready_tx.clone()))).collect();
    drop(ready_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ok + failed < n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(true)) => ok += 1,
            Ok(Some(false)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "watchers: {ok} of {n} streams open with their first snapshot in {:.2} s over {connections} HTTP/2 connections ({failed} failed)",
        opened_at.elapsed().as_secs_f64()
    );
    anyhow::ensure!(ok == n, "only {ok} of {n} watchers got their first snapshot");
    // Let the server settle its buffers before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = session.server_pid.map(rss_bytes).transpose()?;

    let feed = rehearse::follow_feed(&session, &sale_id, epoch).await?;
    let rush = rehearse::run_rush(&session, &scenario, &prepared, epoch).await;
    let finished = rehearse::finish(&session, &scenario, &prepared, &rush, feed).await?;
    let mut logs = Vec::with_capacity(n);
    for w in watchers {
        let log = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a watcher did not end within 60 s of the sale's end")?
            .context("a watcher task panicked")?;
        logs.push(log);
    }

    let mut figures = Figures::default();
    figures.add("buyers_source", if prepared.source == BuyerSource::Minted { "minted" } else { "registered" });
    rehearse::rush_figures(&rush, &mut figures);
    figures.add("watchers", n);
    figures.add("watch_connections", connections);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = after.saturating_sub(before) as f64 / n as f64;
        println!(
            "server memory: RSS {:.1} MiB before, {:.1} MiB with {n} watchers: {:.2} KiB per watcher",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per / 1024.0
        );
        figures.add("rss_before_bytes", before);
        figures.add("rss_after_bytes", after);
        figures.add("memory_per_watcher_kib", format!("{:.3}", per / 1024.0));
    } else {
        println!("server memory: unknown (pass --server-pid, or use --spawn-server)");
    }
    let snapshots = delivery_figures(&rush, &logs, args.samples_per_watcher, finished.sale.sold, &mut figures);
    // Everything the server and loadgen did during the rush, divided by the snapshots delivered:
    // with thousands of watchers the fan-out dominates both.
    for (name, cpu) in [("server", rush.cpu.server), ("loadgen", rush.cpu.loadgen)] {
        if let Some(cpu) = cpu.filter(|_| snapshots > 0) {
            let us = cpu.as_secs_f64() * 1e6 / snapshots as f64;
            println!("{name} cpu per delivered snapshot (purchases included): {us:.1} µs");
            figures.add(format!("{name}_cpu_us_per_snapshot"), format!("{us:.1}"));
        }
    }
    rehearse::verdict_figures(&finished, &mut figures);
    let ended_ok = logs
        .iter()
        .filter(|l| l.saw_end && l.points.last().is_some_and(|&(sold, _)| sold == finished.sale.sold))
        .count();
    println!("watchers that saw the final ENDED snapshot with sold {}: {ended_ok} of {n}", finished.sale.sold);
    figures.add("watchers_saw_end", ended_ok);
    let mut verdict = finished.verdict;
    verdict.checks.push(crate::verdict::Check {
        name: "every watcher saw the final snapshot",
        passed: ended_ok == n,
        detail: format!("{ended_ok} of {n}"),
    });
    if let Some(path) = &scenario.options.figures {
        figures.write(path)?;
    }
    if let Some(server) = session.server {
        server.stop().await;
    }
    Ok(Report { verdict, sale: finished.sale, figures })
}

async fn watcher(pool: Arc<Pool>, sale_id: String, epoch: Instant, ready: mpsc::Sender<bool>) -> WatcherLog {
    let mut log = WatcherLog::default();
    let mut stream = match pool.feeds().watch_sale(pb::WatchSaleRequest { sale_id }).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            log.error = Some(status.to_string());
            let _ = ready.send(false).await;
            return log;
        }
    };
    let mut ready = Some(ready);
    loop {
        match stream.message().await {
            Ok(Some(snapshot)) => {
                log.points.push((snapshot.sold, epoch.elapsed()));
                if let Some(ready) = ready.take() {
                    let _ = ready.send(true).await;
                }
                if snapshot.status() == pb::SaleStatus::Ended {
                    log.saw_end = true;
                }
            }
            Ok(None) => break,
            Err(status) => {
                log.error = Some(status.to_string());
                break;
            }
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(false).await;
    }
    log
}

/// Purchase→delivery latency over every watcher (see the module doc), printed and recorded;
/// returns the number of snapshots the watchers received after their first.
pub fn delivery_figures(
    rush: &RushResult,
    logs: &[WatcherLog],
    samples_per_watcher: usize,
    sold: i64,
    figures: &mut Figures,
) -> usize {
    let mut acks: Vec<(Duration, i64)> = rush
        .records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Acked { quantity, replayed: false, .. } => Some((r.end, i64::from(*quantity))),
            _ => None,
        })
        .collect();
    acks.sort_by_key(|&(at, _)| at);
    let mut total = 0i64;
    let cumulative: Vec<(Duration, i64)> = acks
        .iter()
        .map(|&(at, q)| {
            total += q;
            (at, total.min(sold))
        })
        .collect();
    let stride = match samples_per_watcher {
        0 => 1,
        k => cumulative.len().div_ceil(k).max(1),
    };
    let mut latency = stats::histogram();
    let mut undelivered = 0u64;
    let mut snapshots = 0usize;
    for log in logs {
        snapshots += log.points.len().saturating_sub(1);
        let mut next = 0usize;
        for &(acked_at, needed) in cumulative.iter().step_by(stride) {
            while next < log.points.len() && log.points[next].0 < needed {
                next += 1;
            }
            match log.points.get(next) {
                Some(&(_, arrived)) => stats::record(&mut latency, arrived.saturating_sub(acked_at)),
                None => undelivered += 1,
            }
        }
    }
    let latency = Percentiles::of(&latency);
    println!("purchase→watcher delivery: {} ({undelivered} never delivered)", latency.line());
    println!("snapshots received after the first: {snapshots} over {} watchers", logs.len());
    latency.add_to(figures, "delivery");
    figures.add("delivery_undelivered", undelivered);
    figures.add("snapshots_received", snapshots);
    snapshots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rush::AttemptRecord;

    fn ack(end_ms: u64, quantity: u32) -> AttemptRecord {
        AttemptRecord {
            buyer: 0,
            quantity,
            start: Duration::ZERO,
            end: Duration::from_millis(end_ms),
            calls: 1,
            outcome: Outcome::Acked { order_id: format!("o{end_ms}"), quantity, replayed: false },
            key: format!("k{end_ms}"),
            gave_up: None,
            comes_back: false,
            longest_retry_call: None,
        }
    }

    #[test]
    fn each_purchase_is_delivered_by_the_first_snapshot_that_covers_it() {
        let rush = RushResult {
            records: vec![ack(10, 2), ack(20, 1), ack(30, 3)],
            epoch: Instant::now(),
            elapsed: Duration::from_millis(30),
            cpu: Default::default(),
        };
        // Snapshots at 15 ms (sold 2), 50 ms (sold 6).
        let log = WatcherLog {
            points: vec![(0, Duration::ZERO), (2, Duration::from_millis(15)), (6, Duration::from_millis(50))],
            saw_end: true,
            error: None,
        };
        let mut figures = Figures::default();
        delivery_figures(&rush, &[log], 0, 6, &mut figures);
        // Latencies: 5 ms, 30 ms, 20 ms.
        assert_eq!(figures.get("delivery_undelivered"), Some("0"));
        let max: f64 = figures.get("delivery_max_ms").unwrap().parse().unwrap();
        assert!((max - 30.0).abs() < 0.1, "max {max}");
        let p50: f64 = figures.get("delivery_p50_ms").unwrap().parse().unwrap();
        assert!((p50 - 20.0).abs() < 0.1, "p50 {p50}");
    }
}
