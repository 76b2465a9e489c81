//! Shared by the field-engineer tests (status_cli, top_tmux, doctor): a gateway directory
//! with a config and key, the daemon as a process (SIGTERM on drop, SIGKILL if it hangs), the
//! CLI, and a tmux session of 80x24 driven like a person at a terminal.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// Runs the CLI to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A state directory with `vitalgate.toml` and `master.key`.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Gateway {
    /// `body` is appended after `[gateway]`, `[store]` and one patient `p1`; devices name `p1`.
    pub fn new(body: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"gw-live\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
                 [store]\nkey_file = \"{d}/master.key\"\n\n[[patient]]\nid = \"p1\"\n\n{body}\n"
            ),
        )
        .unwrap();
        let key = dir.path().join("master.key");
        let out = run(&["keygen", "--out", key.to_str().unwrap()]);
        assert!(out.status.success(), "keygen: {}", text(&out.stderr));
        Gateway { dir, config }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    pub fn start(&self) -> Daemon {
        Daemon(
            Command::new(BIN)
                .args(["run", "--config", self.config_arg()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// `vitalgate status --json`: (exit code, document).
    pub fn status(&self) -> (i32, serde_json::Value) {
        let out = run(&["status", "--json", "--config", self.config_arg()]);
        let doc = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {}", text(&out.stdout)));
        (out.status.code().unwrap_or(-1), doc)
    }

    /// Polls `status` until `pred` holds on (code, document); panics naming `what`.
    pub fn status_until(
        &self,
        what: &str,
        pred: impl Fn(i32, &serde_json::Value) -> bool,
    ) -> (i32, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = (0, serde_json::Value::Null);
        while Instant::now() < deadline {
            last = self.status();
            if pred(last.0, &last.1) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "timed out waiting for {what}; last status (exit {}):\n{:#}",
            last.0, last.1
        );
    }
}

/// A simulated device for patient `p1`.
pub fn sim_device(id: &str, scenario: &str, interval_ms: u64) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\npatient = \"p1\"\ndriver = \"sim\"\nscenario = \"{scenario}\"\ninterval_ms = {interval_ms}\nseed = 5\n"
    )
}

/// The daemon process; stopped with SIGTERM on drop (SIGKILL after 10 s).
pub struct Daemon(pub Child);

impl Daemon {
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

/// A detached tmux session of 80x24 on its own server socket, killed on drop.
pub struct Tmux {
    socket: String,
    pub session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a fresh 80x24 session; `env` is set for it.
    pub fn start(name: &str, command: &str, env: &[(&str, &str)]) -> Tmux {
        let socket = format!("vg-{name}-{}", std::process::id());
        let t = Tmux {
            socket,
            session: name.to_owned(),
        };
        let mut cmd = t.cmd();
        cmd.args(["new-session", "-d", "-x", "80", "-y", "24", "-s", name]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        // The shell stays a while after the command, so its last screen can be read.
        let command = format!("{command}; sleep 120");
        cmd.args(["-e", "TERM=xterm-256color", "sh", "-c", &command]);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "tmux: {}", text(&out.stderr));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// The screen as text (no escapes).
    pub fn screen(&self) -> String {
        text(
            &self
                .cmd()
                .args(["capture-pane", "-p", "-t", &self.session])
                .output()
                .unwrap()
                .stdout,
        )
    }

    /// The screen with colour escapes (`capture-pane -e`).
    pub fn screen_with_escapes(&self) -> String {
        text(
            &self
                .cmd()
                .args(["capture-pane", "-p", "-e", "-t", &self.session])
                .output()
                .unwrap()
                .stdout,
        )
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut c = self.cmd();
        c.args(["send-keys", "-t", &self.session]);
        c.args(keys);
        assert!(c.status().unwrap().success());
    }

    /// Waits until the screen satisfies `pred`; panics with the last screen.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.screen();
            if pred(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out after {secs} s waiting for {what}; screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// Waits until `path` exists.
pub fn wait_path(path: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
