//! Results: one human line on stdout and one JSON file per run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::procs::round;

#[derive(Args, Clone, Debug)]
pub struct Output {
    /// Where to write the JSON result (default: bench-results/<scenario>-<unix time>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Processes to report CPU and RSS for, as label=pid (default: every
    /// komunikator, nats-server, mariadbd and redis-server process found).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<String>,
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `{p50, p95, p99, max}` in milliseconds.
pub fn latency(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| round(us as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

/// Errors counted by kind.
#[derive(Default, Debug, Clone)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.0.entry(kind.into()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Errors) {
        for (k, n) in &other.0 {
            self.add(k.clone(), *n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn json(&self) -> Value {
        json!(self.0)
    }
}

/// Prints `summary` and writes `report` as pretty JSON.
pub fn emit(output: &Output, scenario: &str, summary: &str, report: &Value) -> anyhow::Result<()> {
    let path = output.json.clone().unwrap_or_else(|| {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("bench-results/{scenario}-{unix}.json"))
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    println!("{summary}");
    eprintln!("result written to {}", path.display());
    Ok(())
}

/// "gateway:6002 1.23 cores 45 MB, nats-server 0.80 cores ..." for the summary line.
pub fn cpu_line(processes: &Value, generator: &Value) -> String {
    let mut parts: Vec<String> = processes
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{} {:.2} cores",
                        p["label"].as_str().unwrap_or("?"),
                        p["cpu_cores"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    parts.push(format!(
        "generator {:.2} cores",
        generator["cpu_cores"].as_f64().unwrap_or(0.0)
    ));
    parts.join(", ")
}
