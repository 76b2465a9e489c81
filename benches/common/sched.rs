//! Where a process's threads spent a timed section, from `/proc/<pid>/task/*/schedstat`
//! (on CPU, and runnable but waiting for a CPU) and the wall time: what is left is time off
//! CPU (sleeping: waiting on a lock, a channel, the network or the disk). Threads are grouped
//! by name (`tokio-runtime-w`, `publish-ahead`, `outbox-checkpo`, ...). A thread that ends
//! inside the section is counted up to its last snapshot only, so the section's end is
//! snapshotted before the threads under test stop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One snapshot: per thread id, (name, ns on CPU, ns waiting on a run queue).
#[derive(Clone)]
pub struct Snapshot {
    at: Instant,
    threads: BTreeMap<u32, (String, u64, u64)>,
}

/// Reads every thread of `pid` ("self" for this process); empty where /proc cannot be read.
pub fn snapshot(pid: &str) -> Snapshot {
    let mut threads = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let path = entry.path();
            let name = std::fs::read_to_string(path.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
                continue;
            };
            let mut f = stat
                .split_whitespace()
                .filter_map(|x| x.parse::<u64>().ok());
            if let (Some(run), Some(wait)) = (f.next(), f.next()) {
                threads.insert(tid, (name, run, wait));
            }
        }
    }
    Snapshot {
        at: Instant::now(),
        threads,
    }
}

/// Per thread name between two snapshots: (threads, on CPU, waiting for a CPU, off CPU).
pub struct Delta {
    /// When the section began (its first snapshot).
    pub start: Instant,
    pub wall: Duration,
    pub by_name: BTreeMap<String, (usize, Duration, Duration, Duration)>,
}

pub fn delta(before: &Snapshot, after: &Snapshot) -> Delta {
    let wall = after.at.duration_since(before.at);
    let mut by_name: BTreeMap<String, (usize, Duration, Duration, Duration)> = BTreeMap::new();
    for (tid, (name, run, wait)) in &after.threads {
        let (run0, wait0) = before.threads.get(tid).map_or((0, 0), |(_, r, w)| (*r, *w));
        let run = Duration::from_nanos(run.saturating_sub(run0));
        let wait = Duration::from_nanos(wait.saturating_sub(wait0));
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += run;
        e.2 += wait;
        // A thread that started inside the section was off CPU only from its start: unknown
        // here, so it is counted from the section's start (an upper bound).
        e.3 += wall.saturating_sub(run + wait);
    }
    Delta {
        start: before.at,
        wall,
        by_name,
    }
}

impl std::fmt::Display for Delta {
    /// `name×count cpu/runq/off ms`, the threads that ran at all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut first = true;
        for (name, (count, run, wait, off)) in &self.by_name {
            if run.is_zero() && wait.is_zero() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(
                f,
                "{name}×{count} cpu {:.0} runq {:.0} off {:.0} ms",
                ms(run),
                ms(wait),
                ms(off)
            )?;
        }
        Ok(())
    }
}

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
