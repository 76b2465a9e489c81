//! What Mosquitto and this process's threads were doing during a timed section, sampled from
//! `/proc` every [`EVERY`]: the system call each was in and, for the broker, the top of its
//! kernel stack; the kernel's dirty and writeback memory; the whole machine's CPU time.
//! `sched` says how long a thread was off CPU; this says on what: the broker in `epoll_wait`
//! waited for its clients (us), the broker in `fsync` waited for the disk (its persistence
//! file, behind whatever else the file system had to write first). Samples where the broker
//! waited and none of our threads had work are the connection's own stalls. System call
//! numbers are x86_64's; elsewhere they print as numbers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the probe samples. Each sample reads one small file per thread (a few µs each).
pub const EVERY: Duration = Duration::from_millis(3);

/// A stall this long or longer is counted on its own (a delayed acknowledgement is 40 ms).
const LONG_STALL: Duration = Duration::from_millis(30);

/// A sampling thread; [`Probe::finish`] stops it and returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

/// One look at the broker and at this process.
pub struct Sample {
    at: Instant,
    /// "on CPU" (running or waiting for a CPU), "epoll", or a system call and kernel stack.
    broker: String,
    /// Our threads blocked in a system call that is not an idle wait: "name syscall (wchan)".
    ours_blocked: Vec<String>,
    /// One of our threads was running, runnable, or blocked in such a call.
    ours_busy: bool,
    /// Every fifth sample: Dirty and Writeback (kB), and the machine's busy and steal ticks.
    system: Option<(u64, u64, u64, u64)>,
}

impl Probe {
    /// `VITALGATE_BENCH_PROBE=off`: no sampling (its thread takes 3-4 % of a CPU).
    pub fn start(broker_pid: Option<u32>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        if std::env::var("VITALGATE_BENCH_PROBE").is_ok_and(|v| v == "off") {
            return Probe { stop, thread: None };
        }
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("drain-probe".into())
            .spawn(move || sample(broker_pid, &stopped))
            .ok();
        Probe { stop, thread }
    }

    /// Stops sampling; returns what was seen from `start` for `wall`.
    pub fn finish(mut self, start: Instant, wall: Duration) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Report::of(&samples, start, start + wall)
    }
}

fn sample(broker_pid: Option<u32>, stop: &AtomicBool) -> Vec<Sample> {
    // This thread's id: /proc/thread-self links to "<pid>/task/<tid>".
    let me = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let broker = broker_pid.map_or_else(String::new, broker_state);
        let (mut ours_blocked, mut ours_busy) = (Vec::new(), false);
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy() == me {
                    continue;
                }
                let Ok(sc) = std::fs::read_to_string(entry.path().join("syscall")) else {
                    continue;
                };
                let Some(nr) = sc.split_whitespace().next().and_then(|n| n.parse().ok()) else {
                    ours_busy = true; // "running"
                    continue;
                };
                if IDLE.contains(&nr) {
                    continue;
                }
                ours_busy = true;
                // Read each time: a new thread has its parent's name until it sets its own.
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                let wchan = std::fs::read_to_string(entry.path().join("wchan")).unwrap_or_default();
                ours_blocked.push(format!(
                    "{} {} ({})",
                    name.trim(),
                    syscall_name(nr),
                    wchan.trim()
                ));
            }
        }
        let system = (samples.len() % 5 == 0).then(system_counters);
        samples.push(Sample {
            at,
            broker,
            ours_blocked,
            ours_busy,
            system,
        });
        std::thread::sleep(EVERY);
    }
    samples
}

/// Dirty and Writeback (kB) from /proc/meminfo; busy and steal ticks of all CPUs so far,
/// from the `cpu` line of /proc/stat.
fn system_counters() -> (u64, u64, u64, u64) {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |field: &str| {
        m.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (
        kb("Dirty:"),
        kb("Writeback:"),
        get(0) + get(1) + get(2) + get(5) + get(6),
        get(7),
    )
}

/// "on CPU", "epoll" (waiting for its clients), or the system call and the top of the kernel
/// stack it is blocked in.
fn broker_state(pid: u32) -> String {
    let Ok(sc) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return "gone".into();
    };
    let Some(nr) = sc
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return "on CPU".into();
    };
    if matches!(nr, 232 | 281 | 441) {
        return "epoll".into();
    }
    let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
    let frames: Vec<&str> = stack
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f))
        .filter(|f| !f.contains("schedule") && !f.starts_with("__"))
        .take(2)
        .collect();
    format!("{} [{}]", syscall_name(nr), frames.join(" < "))
}

/// System calls a thread waits in when it has nothing to do (x86_64 numbers): futex,
/// epoll_wait, epoll_pwait, epoll_pwait2, poll, ppoll, nanosleep, clock_nanosleep, select,
/// pselect6, recvfrom, recvmsg, read (an idle socket or eventfd; SQLite reads with pread64).
const IDLE: [u32; 13] = [202, 232, 281, 441, 7, 271, 35, 230, 23, 270, 45, 47, 0];

fn syscall_name(nr: u32) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        17 => "pread64",
        18 => "pwrite64",
        20 => "writev",
        44 => "sendto",
        46 => "sendmsg",
        74 => "fsync",
        75 => "fdatasync",
        77 => "ftruncate",
        82 => "rename",
        87 => "unlink",
        257 => "openat",
        262 => "newfstatat",
        285 => "fallocate",
        _ => return format!("syscall {nr}"),
    };
    name.into()
}

/// The samples of one timed section, summed up.
#[derive(Default)]
pub struct Report {
    wall: Duration,
    samples: u64,
    broker: BTreeMap<String, u64>,
    ours: BTreeMap<String, u64>,
    /// Samples where the broker waited in `epoll` and none of our threads had work: nobody
    /// could go on, so the connection itself held things up (e.g. a segment held back by
    /// Nagle's algorithm until the peer's delayed acknowledgement); runs of them lasting
    /// [`LONG_STALL`] or more, and the longest.
    stalled: u64,
    long_stalls: u64,
    longest_stall: u64,
    dirty_max_kb: u64,
    writeback_max_kb: u64,
    /// The whole machine's CPU time in the section (every process, all CPUs), and what the
    /// hypervisor gave to other guests (steal), in USER_HZ ticks.
    machine_busy: u64,
    machine_steal: u64,
}

impl Report {
    /// Stalls of [`LONG_STALL`] or more (see `stalled`).
    pub fn long_stalls(&self) -> u64 {
        self.long_stalls
    }

    fn of(samples: &[Sample], from: Instant, to: Instant) -> Report {
        let mut r = Report {
            wall: to.duration_since(from),
            ..Report::default()
        };
        let long = (LONG_STALL.as_secs_f64() / EVERY.as_secs_f64()).ceil() as u64;
        let mut run = 0;
        let mut first_system = None;
        let mut last_system = None;
        for s in samples.iter().filter(|s| s.at >= from && s.at <= to) {
            r.samples += 1;
            *r.broker.entry(s.broker.clone()).or_default() += 1;
            for b in &s.ours_blocked {
                *r.ours.entry(b.clone()).or_default() += 1;
            }
            if s.broker == "epoll" && !s.ours_busy {
                r.stalled += 1;
                run += 1;
                r.longest_stall = r.longest_stall.max(run);
            } else {
                if run >= long {
                    r.long_stalls += 1;
                }
                run = 0;
            }
            if let Some(sys) = s.system {
                r.dirty_max_kb = r.dirty_max_kb.max(sys.0);
                r.writeback_max_kb = r.writeback_max_kb.max(sys.1);
                first_system.get_or_insert(sys);
                last_system = Some(sys);
            }
        }
        if run >= long {
            r.long_stalls += 1;
        }
        if let (Some(a), Some(b)) = (first_system, last_system) {
            r.machine_busy = b.2.saturating_sub(a.2);
            r.machine_steal = b.3.saturating_sub(a.3);
        }
        r
    }
}

impl std::fmt::Display for Report {
    /// `broker on CPU .. ms, epoll .. ms; ours blocked: ..; both idle ..; dirty ..; machine ..`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.samples == 0 {
            return f.write_str("no samples (VITALGATE_BENCH_PROBE=off)");
        }
        let each = self.wall.as_secs_f64() * 1e3 / self.samples as f64;
        let list = |m: &BTreeMap<String, u64>| {
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            v.iter()
                .map(|(k, n)| format!("{k} {:.0} ms", **n as f64 * each))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let secs = self.wall.as_secs_f64();
        write!(
            f,
            "broker {}; ours blocked: {}; both idle {:.0} ms ({} stalls of {} ms or more, longest {:.0} ms); dirty max {:.1} MB, writeback max {:.1} MB; machine busy {:.2} CPUs (steal {:.2})",
            list(&self.broker),
            if self.ours.is_empty() {
                "nothing".into()
            } else {
                list(&self.ours)
            },
            self.stalled as f64 * each,
            self.long_stalls,
            LONG_STALL.as_millis(),
            self.longest_stall as f64 * each,
            self.dirty_max_kb as f64 / 1024.0,
            self.writeback_max_kb as f64 / 1024.0,
            self.machine_busy as f64 / 100.0 / secs,
            self.machine_steal as f64 / 100.0 / secs,
        )
    }
}
