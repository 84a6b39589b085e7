//! The rehearsal chart: remaining stock (as the WatchSale feed reported it) and acknowledged
//! purchases per second (from the answers) over time, as one SVG with two y axes.

use std::path::Path;

use plotters::prelude::*;

/// What the chart shows. Times are seconds from the start of the rush.
pub struct ChartData<'a> {
    /// Title line.
    pub title: String,
    /// (time, remaining) from each snapshot of the feed.
    pub remaining: &'a [(f64, i64)],
    /// The time of each acknowledged purchase.
    pub acks: &'a [f64],
    /// Units allocated (top of the stock axis).
    pub allocated: i64,
}

/// Acknowledged purchases per second in buckets of `bucket` seconds: (bucket middle, rate).
pub fn rate_series(acks: &[f64], end: f64, bucket: f64) -> Vec<(f64, f64)> {
    let buckets = ((end / bucket).ceil() as usize).max(1);
    let mut counts = vec![0u64; buckets];
    for &t in acks {
        let i = ((t / bucket) as usize).min(buckets - 1);
        counts[i] += 1;
    }
    counts.iter().enumerate().map(|(i, &n)| ((i as f64 + 0.5) * bucket, n as f64 / bucket)).collect()
}

/// Writes the chart to `path` (SVG).
pub fn write(path: &Path, data: &ChartData<'_>) -> anyhow::Result<()> {
    let end = data.acks.iter().copied().chain(data.remaining.iter().map(|&(t, _)| t)).fold(0.0f64, f64::max).max(0.001);
    // About 60 buckets across the run, no finer than 10 ms.
    let bucket = (end / 60.0).max(0.01);
    let rates = rate_series(data.acks, end, bucket);
    let top_rate = rates.iter().map(|&(_, r)| r).fold(0.0f64, f64::max).max(1.0) * 1.1;

    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&data.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0.0..end, 0.0..(data.allocated.max(1) as f64 * 1.05))
        .map_err(plot_error)?
        .set_secondary_coord(0.0..end, 0.0..top_rate);
    chart
        .configure_mesh()
        .x_desc("seconds since the rush started")
        .y_desc("remaining units")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;
    chart
        .configure_secondary_axes()
        .y_desc("acknowledged purchases/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;

    // The feed is a step function: hold each value until the next snapshot.
    let mut steps = Vec::with_capacity(data.remaining.len() * 2);
    for (i, &(t, remaining)) in data.remaining.iter().enumerate() {
        if i > 0 {
            steps.push((t, data.remaining[i - 1].1 as f64));
        }
        steps.push((t, remaining as f64));
    }
    chart
        .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
        .map_err(plot_error)?
        .label("remaining stock (WatchSale)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(rates, RED.stroke_width(2)))
        .map_err(plot_error)?
        .label("acknowledged purchases/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_each_ack_once() {
        let acks = [0.05, 0.15, 0.16, 0.95];
        let rates = rate_series(&acks, 1.0, 0.1);
        assert_eq!(rates.len(), 10);
        let total: f64 = rates.iter().map(|&(_, r)| r * 0.1).sum();
        assert!((total - 4.0).abs() < 1e-9);
        assert!((rates[1].1 - 20.0).abs() < 1e-9);
    }

    #[test]
    fn writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let data = ChartData {
            title: "test".into(),
            remaining: &[(0.0, 10), (0.5, 4), (1.0, 0)],
            acks: &[0.1, 0.2, 0.6],
            allocated: 10,
        };
        write(&path, &data).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("remaining stock"));
    }
}
