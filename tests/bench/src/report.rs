//! Latency histograms (HDR, microsecond resolution), result tables and JSON output.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// A latency histogram from 1 µs to 100 s, 3 significant digits.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 100_000_000, 3).expect("static bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 100_000_000);
        let _ = self.0.record(us);
    }

    pub fn merge(&mut self, other: &Self) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `q` (0..=1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let us = self.0.value_at_quantile(q) as f64;
        us / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let us = self.0.max() as f64;
        us / 1000.0
    }

    /// `{p50, p90, p99, max}` in milliseconds.
    pub fn summary(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": round(self.ms(0.5)),
            "p90_ms": round(self.ms(0.9)),
            "p99_ms": round(self.ms(0.99)),
            "max_ms": round(self.max_ms()),
        })
    }

    /// `(percentile, ms)` points for a distribution plot.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        if self.0.is_empty() {
            return points;
        }
        for i in 0..=200 {
            // Denser towards the tail: q = 1 - 10^(-k), k from 0 to 4.
            let k = f64::from(i) / 50.0;
            let q = 1.0 - 10f64.powf(-k);
            points.push((q * 100.0, self.ms(q)));
        }
        points
    }
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A result: named rows of values, printed as a table or as JSON.
pub struct Report {
    pub title: String,
    pub fields: Map<String, Value>,
}

impl Report {
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            fields: Map::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    pub fn latency(&mut self, key: &str, l: &Latency) -> &mut Self {
        self.set(key, l.summary())
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            let mut v = self.fields.clone();
            v.insert("benchmark".into(), self.title.clone().into());
            println!("{}", Value::Object(v));
            return;
        }
        println!("\n{}", self.title);
        println!("{}", "-".repeat(self.title.len()));
        let width = self.fields.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &self.fields {
            let shown = match v {
                Value::Object(o) if o.contains_key("p50_ms") => format!(
                    "p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (n={})",
                    o["p50_ms"], o["p90_ms"], o["p99_ms"], o["max_ms"], o["count"]
                ),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<width$}  {shown}");
        }
    }
}
