//! `loadgen flood`: many attempts per unit, quantity 1. Once the few units are gone every
//! further attempt takes the sold-out rejection path; this measures how fast the server says no.

use std::time::{Duration, Instant};

use crate::cli::FloodArgs;
use crate::rehearse::{self, Report, Scenario};
use crate::rush::{Outcome, RushResult};
use crate::setup::BuyerSource;
use crate::stats::{self, per_sec, Figures, Percentiles};
use crate::target::Session;

/// `loadgen flood`.
pub async fn run(args: FloodArgs) -> anyhow::Result<Report> {
    let session = Session::open(&args.target).await?;
    println!("server: {}", session.addr);
    let scenario = Scenario {
        units: args.units,
        buyers: args.buyers,
        attempts: (args.units.max(1) as usize) * args.attempts_per_unit.max(1),
        min_qty: 1,
        max_qty: 1,
        per_user_limit: 0,
        concurrency: args.concurrency,
        options: args.rush.clone(),
        abandon: None,
        retry_bound: Duration::ZERO,
        hold_seconds: 0,
    };
    println!(
        "flood: {} attempts for {} units ({} per unit)",
        scenario.attempts, scenario.units, args.attempts_per_unit
    );
    let prepared = rehearse::prepare(&session, &scenario).await?;
    let epoch = Instant::now();
    let feed = rehearse::follow_feed(&session, &prepared.sale.id, epoch).await?;
    let rush = rehearse::run_rush(&session, &scenario, &prepared, epoch).await;
    let finished = rehearse::finish(&session, &scenario, &prepared, &rush, feed).await?;

    let mut figures = Figures::default();
    figures.add("buyers_source", if prepared.source == BuyerSource::Minted { "minted" } else { "registered" });
    rehearse::rush_figures(&rush, &mut figures);
    rejection_figures(&rush, &mut figures);
    rehearse::verdict_figures(&finished, &mut figures);
    if let Some(path) = &args.chart {
        let title = format!("flood: {} attempts for {} units", scenario.attempts, scenario.units);
        rehearse::write_chart(path, title, &rush, &finished.feed, finished.sale.allocated)?;
    }
    if let Some(path) = &scenario.options.figures {
        figures.write(path)?;
    }
    if let Some(server) = session.server {
        server.stop().await;
    }
    Ok(Report { verdict: finished.verdict, sale: finished.sale, figures })
}

/// Rejections per second over the span in which rejections happened, and their latency.
pub fn rejection_figures(rush: &RushResult, figures: &mut Figures) {
    let refused: Vec<_> = rush.records.iter().filter(|r| matches!(r.outcome, Outcome::Refused(_))).collect();
    let mut latency = stats::histogram();
    for r in &refused {
        stats::record(&mut latency, r.latency());
    }
    let first = refused.iter().map(|r| r.start).min().unwrap_or_default();
    let last = refused.iter().map(|r| r.end).max().unwrap_or_default();
    let span = last.saturating_sub(first);
    let rate = per_sec(refused.len() as u64, span);
    let latency = Percentiles::of(&latency);
    println!(
        "rejections: {} in {:.3} s = {rate:.0} rejections/s; latency {}",
        refused.len(),
        span.as_secs_f64(),
        latency.line()
    );
    figures.add("rejections", refused.len());
    figures.add("rejections_per_sec", format!("{rate:.1}"));
    latency.add_to(figures, "rejection_latency");
}
