//! Figures: HDR latency histograms, throughput, the progress bar, and the `name value` lines of
//! `--figures` that scripts read.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr, hidden when stderr is not a terminal (CI, scripts, tests).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records `latency` (in µs, at least 1).
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    histogram.saturating_record((latency.as_micros() as u64).max(1));
}

/// Percentiles of a latency histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value.
    pub max: Duration,
}

impl Percentiles {
    /// Reads them off `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = |v: u64| Duration::from_micros(v);
        Self {
            count: histogram.len(),
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            max: us(histogram.max()),
        }
    }

    /// `p50 1.23 ms  p90 ...`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no values".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  ({} values)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }

    /// Adds `prefix_p50_ms` .. `prefix_max_ms` to `figures`.
    pub fn add_to(&self, figures: &mut Figures, prefix: &str) {
        for (name, value) in [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("max", self.max)] {
            figures.add(format!("{prefix}_{name}_ms"), format!("{:.3}", value.as_secs_f64() * 1000.0));
        }
    }
}

/// A duration in milliseconds with 2 decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `count` per second over `elapsed` (0 when nothing elapsed).
pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Named figures, printed as `name value` lines for scripts (`--figures FILE`).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    entries: Vec<(String, String)>,
}

impl Figures {
    /// Adds one figure.
    pub fn add(&mut self, name: impl Into<String>, value: impl ToString) {
        self.entries.push((name.into(), value.to_string()));
    }

    /// The value of `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Writes every figure as a `name value` line.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = String::new();
        for (name, value) in &self.entries {
            let _ = writeln!(text, "{name} {value}");
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut h = histogram();
        for v in 1..=100u64 {
            record(&mut h, Duration::from_millis(v));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 100);
        assert!((p.p50.as_millis() as i64 - 50).abs() <= 1);
        assert!((p.p99.as_millis() as i64 - 99).abs() <= 1);
        assert!((p.max.as_millis() as i64 - 100).abs() <= 1);
        assert_eq!(Percentiles::of(&histogram()).line(), "no values");
    }

    #[test]
    fn figures_are_name_value_lines() {
        let mut f = Figures::default();
        f.add("purchases_per_sec", 12.5);
        assert_eq!(f.get("purchases_per_sec"), Some("12.5"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        f.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "purchases_per_sec 12.5\n");
    }
}
