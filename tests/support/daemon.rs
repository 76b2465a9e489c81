//! The daemon binary as a process for end-to-end tests: `vitalgate run --config ...` with its
//! stderr (the journal) collected line by line, stopped with SIGTERM or killed with SIGKILL.
//! Shared by tests/daemon_uplink.rs, tests/news2_daemon.rs and tests/fleet.rs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::within;

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// A running `vitalgate run`, its stderr collected line by line. Killed on drop.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. a debug build's
    /// `VITALGATE_INJECT_PANIC`, tests/crash_recovery.rs).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, log }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The last 30 lines, for a failing assertion's message.
    pub fn log_tail(&self) -> Vec<String> {
        let l = self.log.lock().unwrap();
        l[l.len().saturating_sub(30)..].to_vec()
    }

    /// How many log lines hold `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (up to 60 s) until the log holds `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count_log(needle) == 0 {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log: {:#?}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id (for signals sent by other means).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now, keeping the value (a restart may follow under the same name).
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig}");
    }

    pub async fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and a clean exit. The signal waits for the daemon's first log line, which
    /// comes once its handlers are installed: before that, SIGTERM's default action applies.
    pub async fn stop(mut self) -> Vec<String> {
        let log = self.log.clone();
        wait_until(20, "the daemon's `vitalgate starting` line", || {
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("vitalgate starting"))
        })
        .await;
        self.signal("TERM");
        let st = self.wait_exit(60).await;
        assert!(
            st.success(),
            "daemon exit status {st}; log tail: {:?}",
            tail(&self.lines())
        );
        self.lines()
    }

    /// SIGKILL: no chance to flush anything. Sent directly (no `kill` process to start), so
    /// it lands as close as possible to the moment the caller chose.
    pub async fn kill(mut self) {
        self.child.kill().unwrap();
        self.wait_exit(30).await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(20)..]
}

/// Polls `pred` every 20 ms until it holds; panics naming `what` after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut pred: impl FnMut() -> bool) {
    within(secs, what, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
