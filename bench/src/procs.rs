//! CPU time and RSS of the processes under test, read from /proc: every
//! `komunikator` process (labelled by subcommand and port), NATS, MariaDB
//! and Redis, plus the generator itself.

use std::collections::BTreeMap;
use std::fs;

use serde_json::{Value, json};

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// Processes of these names are watched when found.
const WATCHED: [&str; 4] = ["komunikator", "nats-server", "mariadbd", "redis-server"];

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub label: String,
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub rss_kb: u64,
}

/// The watched processes running now; `explicit` (`label=pid`) replaces
/// the discovery when given.
pub fn discover(explicit: &[String]) -> Vec<Proc> {
    if !explicit.is_empty() {
        return explicit
            .iter()
            .filter_map(|spec| {
                let (label, pid) = spec.split_once('=')?;
                Some(Proc {
                    pid: pid.parse().ok()?,
                    label: label.to_owned(),
                })
            })
            .collect();
    }
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim();
        if !WATCHED.contains(&comm) {
            continue;
        }
        let label = if comm == "komunikator" {
            komunikator_label(pid)
        } else {
            comm.to_owned()
        };
        found.push(Proc { pid, label });
    }
    found.sort_by(|a, b| a.label.cmp(&b.label));
    found
}

/// `gateway:6002` from `komunikator gateway --listen 127.0.0.1:6002` (or
/// from LISTEN_ADDR in its environment).
fn komunikator_label(pid: u32) -> String {
    let args: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let command = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .cloned()
        .unwrap_or_else(|| "all".to_owned());
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--listen=").map(str::to_owned))
        })
        .or_else(|| {
            fs::read(format!("/proc/{pid}/environ"))
                .ok()?
                .split(|b| *b == 0)
                .find_map(|v| {
                    String::from_utf8_lossy(v)
                        .strip_prefix("LISTEN_ADDR=")
                        .map(str::to_owned)
                })
        })
        .unwrap_or_else(|| "0.0.0.0:5000".to_owned());
    let port = listen.rsplit(':').next().unwrap_or("");
    format!("{command}:{port}")
}

pub fn read(pid: u32) -> Option<Reading> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Reading {
        cpu_seconds: ticks as f64 / TICKS,
        rss_kb,
    })
}

/// CPU seconds spent by the processes (and the generator) between `start`
/// and `finish`, and their RSS at the end.
pub struct Meter {
    procs: Vec<Proc>,
    start: BTreeMap<u32, Reading>,
    own: Reading,
    began: std::time::Instant,
}

impl Meter {
    pub fn start(procs: Vec<Proc>) -> Self {
        let start = procs
            .iter()
            .filter_map(|p| Some((p.pid, read(p.pid)?)))
            .collect();
        Meter {
            procs,
            start,
            own: read(std::process::id()).unwrap_or_default(),
            began: std::time::Instant::now(),
        }
    }

    /// `{"processes": [...], "generator": {...}}` for the window so far.
    pub fn finish(&self) -> (Value, Value) {
        let wall = self.began.elapsed().as_secs_f64().max(1e-9);
        let processes = self
            .procs
            .iter()
            .filter_map(|p| {
                let now = read(p.pid)?;
                let cpu = now.cpu_seconds - self.start.get(&p.pid)?.cpu_seconds;
                Some(json!({
                    "label": p.label, "pid": p.pid, "cpu_seconds": round(cpu),
                    "cpu_cores": round(cpu / wall), "rss_kb": now.rss_kb,
                }))
            })
            .collect::<Vec<_>>();
        let own = read(std::process::id()).unwrap_or_default();
        let cpu = own.cpu_seconds - self.own.cpu_seconds;
        let generator = json!({
            "cpu_seconds": round(cpu), "cpu_cores": round(cpu / wall), "rss_kb": own.rss_kb,
        });
        (Value::Array(processes), generator)
    }
}

pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The PID of the komunikator process serving `base` (`http://ip:port`).
pub fn serving(procs: &[Proc], base: &str) -> Option<u32> {
    let port = base.trim_end_matches('/').rsplit(':').next()?;
    procs
        .iter()
        .find(|p| p.label.rsplit(':').next() == Some(port))
        .map(|p| p.pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_process() {
        let me = super::read(std::process::id()).expect("own /proc entry");
        assert!(me.rss_kb > 0);
        assert!(me.cpu_seconds >= 0.0);
    }
}
