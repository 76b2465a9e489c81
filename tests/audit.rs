//! The audit log as an information governance lead relies on it (issue 15, point 1): written
//! by a real daemon, then edited, cut, reordered or rewritten on disk the way someone with
//! file access but without the master key could, and each change found both by
//! `vitalgate audit verify` (exit 1, naming the first bad entry) and by the next daemon start
//! (an `audit_chain_broken` entry and a technical alarm, the daemon still running).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use vitalgate::audit::line;
use vitalgate::store::{Lane, MasterKey, Outbox, Record};

const NHS: &str = "943 476 5919";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalgate"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env("RUST_LOG", "warn").output().unwrap()
}

/// A gateway's state directory with a key (`vitalgate keygen`, audited) and a config with
/// one patient and no devices.
struct Hub {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Hub {
    fn new() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(&config, config_text(dir.path(), "")).unwrap();
        // keygen audits in the state dir its --config names (never next to the key).
        assert!(run(&[
            "keygen",
            "--out",
            key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap()
        ])
        .status
        .success());
        Hub { dir, config }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(&self, lines: &[String]) {
        std::fs::write(self.log(), lines.join("\n") + "\n").unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        run(&all)
    }

    fn count(&self, event: &str) -> usize {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    }

    /// Spawns `vitalgate run` and waits for its `daemon_started` entry.
    fn start(&self) -> Daemon {
        let before = self.count("daemon_started");
        let child = bin()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon(child);
        wait_for("the daemon's start in the audit log", || {
            self.count("daemon_started") > before
        });
        d
    }

    /// Starts the daemon and stops it cleanly: keygen, outbox_created, daemon_started,
    /// daemon_stopped on a new hub.
    fn run_once(&self) {
        let mut d = self.start();
        d.stop();
    }

    /// Technical alarms raised in the outbox for the audit chain.
    fn audit_alarms(&self) -> Vec<serde_json::Value> {
        let master = MasterKey::load(&self.dir.path().join("master.key")).unwrap();
        let (mut outbox, _) = Outbox::open(&self.dir.path().join("outbox.db"), &master).unwrap();
        outbox
            .pending(Lane::Alert, 0, 10_000)
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Record::Alert(a) if a.event["rule"] == "technical:audit_chain_broken" => {
                    Some(a.event)
                }
                _ => None,
            })
            .collect()
    }

    /// `audit verify` exits 1 naming `seq` and `line` as the first bad entry; the next start
    /// records exactly that break, raises the technical alarm and keeps running.
    fn assert_detected(&self, seq: u64, line: usize) {
        let out = self.cli(&["audit", "verify"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        let first = format!("first bad entry seq {seq} (line {line})");
        assert!(stderr.contains(&first), "wanted {first:?} in:\n{stderr}");
        assert!(stdout.contains("BROKEN"), "{stdout}");

        let mut d = self.start();
        // Alert transitions are audited too: the alarm's own entry says it was raised.
        wait_for("the alarm to be raised", || {
            self.recorded_breaks().len() == 1
                && std::fs::read_to_string(self.log())
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains("alert_raised") && l.contains("audit_chain_broken"))
        });
        assert!(d.0.try_wait().unwrap().is_none(), "the daemon stopped");
        wait_for("status to report the broken chain", || {
            self.status()["audit"]["chain_broken"] == true
        });
        d.stop();
        let recorded = self.recorded_breaks();
        assert_eq!(recorded[0]["breaks"][0]["seq"], seq);
        assert_eq!(recorded[0]["breaks"][0]["line"], line);
        let alarms = self.audit_alarms();
        assert!(
            alarms.iter().any(|a| a["transition"] == "raised"),
            "no technical alarm raised: {alarms:?}"
        );
    }

    /// `vitalgate status` as JSON.
    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.cli(&["status"]).stdout).unwrap_or_default()
    }

    fn recorded_breaks(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "audit_chain_broken")
            .map(|e| e["details"].clone())
            .collect()
    }
}

fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        r#"
[gateway]
id = "audit-gw"
state_dir = "{d}"
devices_dirs = []

[store]
key_file = "{d}/master.key"

[[patient]]
id = "p1"
nhs_number = "{NHS}"
{extra}
"#,
        d = dir.display()
    )
}

struct Daemon(Child);

impl Daemon {
    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .unwrap()
            .success());
    }

    fn stop(&mut self) {
        self.signal("TERM");
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn seqs(hub: &Hub) -> Vec<u64> {
    hub.lines()
        .iter()
        .map(|l| serde_json::from_str::<line::Entry>(l).unwrap().seq)
        .collect()
}

/// A hub whose log holds keygen, outbox_created, daemon_started, daemon_stopped.
fn hub_with_four_entries() -> Hub {
    let hub = Hub::new();
    hub.run_once();
    assert_eq!(seqs(&hub), vec![1, 2, 3, 4]);
    hub
}

#[test]
fn verify_passes_a_log_written_by_the_daemon() {
    let hub = hub_with_four_entries();
    let out = hub.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("intact: 4 entries") && stdout.contains("records seq 4"),
        "{stdout}"
    );
}

#[test]
fn an_edited_entry_is_found_by_verify_and_at_start() {
    let hub = hub_with_four_entries();
    let mut lines = hub.lines();
    assert!(lines[2].contains("\"uplink\":false"));
    lines[2] = lines[2].replace("\"uplink\":false", "\"uplink\":true");
    hub.write_lines(&lines);
    hub.assert_detected(3, 3);
}

#[test]
fn a_deleted_entry_is_found_by_verify_and_at_start() {
    let hub = hub_with_four_entries();
    let mut lines = hub.lines();
    lines.remove(1);
    hub.write_lines(&lines);
    hub.assert_detected(3, 2);
}

#[test]
fn reordered_entries_are_found_by_verify_and_at_start() {
    let hub = hub_with_four_entries();
    let mut lines = hub.lines();
    lines.swap(1, 2);
    hub.write_lines(&lines);
    hub.assert_detected(3, 2);
}

#[test]
fn a_truncated_last_entry_is_found_against_the_head_in_the_outbox() {
    let hub = hub_with_four_entries();
    let mut lines = hub.lines();
    lines.pop();
    hub.write_lines(&lines);
    // Missing at the end: named as the entry the next append takes, one past the last line.
    hub.assert_detected(5, 4);
}

#[test]
fn a_log_rehashed_as_a_plain_sha_chain_without_the_key_is_found() {
    let hub = hub_with_four_entries();
    let mut prev = line::GENESIS.to_string();
    let rewritten: Vec<String> = hub
        .lines()
        .iter()
        .map(|l| {
            let mut e: line::Entry = serde_json::from_str(l).unwrap();
            e.details = serde_json::json!({"rewritten": true});
            e.prev = prev.clone();
            e.mac = None;
            e.hash = Some(line::legacy_hash(&e));
            prev = e.hash.clone().unwrap();
            serde_json::to_string(&e).unwrap()
        })
        .collect();
    hub.write_lines(&rewritten);
    hub.assert_detected(1, 1);
}

#[test]
fn a_log_re_maced_under_another_key_is_found() {
    let hub = hub_with_four_entries();
    let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let mut prev = line::GENESIS.to_string();
    let rewritten: Vec<String> = hub
        .lines()
        .iter()
        .map(|l| {
            let e: line::Entry = serde_json::from_str(l).unwrap();
            let (text, mac) =
                line::seal(&other, e.seq, e.time, &e.event, &e.details, &prev).unwrap();
            prev = mac;
            text
        })
        .collect();
    hub.write_lines(&rewritten);
    hub.assert_detected(1, 1);
}

#[test]
fn a_break_is_raised_once_and_the_alarm_clears_at_the_next_start() {
    let hub = hub_with_four_entries();
    let mut lines = hub.lines();
    lines.remove(1);
    hub.write_lines(&lines);
    hub.assert_detected(3, 2);
    hub.run_once();
    assert_eq!(hub.recorded_breaks().len(), 1, "recorded again");
    let transitions: Vec<serde_json::Value> = hub
        .audit_alarms()
        .iter()
        .map(|a| a["transition"].clone())
        .collect();
    assert_eq!(transitions, vec!["raised", "cleared"]);
}

#[test]
fn one_writer_across_refused_reloads_keeps_the_sequence_strictly_increasing() {
    let hub = Hub::new();
    let mut d = hub.start();
    let good = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(&hub.config, good.replace("id = \"p1\"", "id = 7")).unwrap();
    for n in 1..=2 {
        d.signal("HUP");
        wait_for("the refusal in the audit log", || {
            hub.count("config_reload_refused") == n
        });
    }
    std::fs::write(&hub.config, &good).unwrap();
    d.stop();
    let seqs = seqs(&hub);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(hub.cli(&["audit", "verify"]).status.success());
}

#[test]
fn an_applied_config_audits_bindings_and_patients_without_their_nhs_numbers() {
    let hub = Hub::new();
    let mut d = hub.start();
    let extra = "[[patient]]\nid = \"p2\"\nnhs_number = \"401 023 2137\"\n\n[[device]]\nid = \"ox2\"\npatient = \"p2\"\ndriver = \"sim\"\ninterval_ms = 500\n";
    std::fs::write(&hub.config, config_text(hub.dir.path(), extra)).unwrap();
    d.signal("HUP");
    wait_for("the binding in the audit log", || {
        std::fs::read_to_string(hub.log())
            .unwrap_or_default()
            .contains("device_bound")
    });
    d.stop();
    let log = std::fs::read_to_string(hub.log()).unwrap();
    let events: Vec<(String, serde_json::Value)> = hub
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<line::Entry>(l).unwrap())
        .map(|e| (e.event, e.details))
        .collect();
    assert!(events.contains(&("patient_added".into(), serde_json::json!({"patient": "p2"}))));
    assert!(events.contains(&(
        "device_bound".into(),
        serde_json::json!({"device": "ox2", "patient": "p2", "driver": "sim"})
    )));
    for secret in ["4010232137", "401 023 2137", "9434765919", NHS] {
        assert!(!log.contains(secret), "{secret} in the audit log");
    }
    let key = std::fs::read_to_string(hub.dir.path().join("master.key")).unwrap();
    assert!(!log.contains(key.trim()), "the master key in the audit log");
    assert!(hub.cli(&["audit", "verify"]).status.success());
}

#[test]
fn export_prints_the_entries_between_since_and_until_as_json_lines() {
    let hub = Hub::new();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1u8; 32]);
    let mut prev = line::GENESIS.to_string();
    let mut lines = Vec::new();
    for (seq, hour) in [(1u64, 8u8), (2, 9), (3, 10)] {
        let time = time::macros::datetime!(2026-01-31 00:00 UTC)
            .replace_hour(hour)
            .unwrap();
        let (text, mac) = line::seal(&key, seq, time, "x", &serde_json::json!({}), &prev).unwrap();
        prev = mac;
        lines.push(text);
    }
    hub.write_lines(&lines);
    let export = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["audit", "export"];
        all.extend(args);
        let out = hub.cli(&all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<line::Entry>(l).unwrap().seq)
            .collect()
    };
    assert_eq!(export(&[]), vec![1, 2, 3]);
    assert_eq!(export(&["--since", "2026-01-31T09:00:00Z"]), vec![2, 3]);
    assert_eq!(export(&["--until", "2026-01-31T09:00:00Z"]), vec![1]);
    assert_eq!(
        export(&[
            "--since",
            "2026-01-31T09:00:00Z",
            "--until",
            "2026-01-31T10:00:00Z"
        ]),
        vec![2]
    );
    assert_eq!(export(&["--since", "2026-02-01"]), Vec::<u64>::new());
    let bad = hub.cli(&["audit", "export", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn a_plain_sha_log_is_checked_then_continued_as_a_mac_chain_naming_its_old_head() {
    let hub = Hub::new();
    // The log as earlier versions wrote it: one keygen entry, SHA-256 chained, no key.
    let mut e: line::Entry = serde_json::from_str(&hub.lines()[0]).unwrap();
    e.mac = None;
    e.hash = Some(line::legacy_hash(&e));
    let old_head = e.hash.clone().unwrap();
    hub.write_lines(&[serde_json::to_string(&e).unwrap()]);

    hub.run_once();
    let entries: Vec<line::Entry> = hub
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries[1].event, "audit_chain_migrated");
    assert_eq!((entries[1].seq, &entries[1].prev), (2, &old_head));
    assert_eq!(entries[1].details["legacy_head_hash"], old_head);
    assert!(entries[1..].iter().all(|e| e.mac.is_some()));
    let out = hub.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("1 in the old unkeyed format"));
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_a_log_the_next_start_accepts() {
    let hub = Hub::new();
    for _ in 0..3 {
        let mut d = hub.start();
        d.signal("KILL");
        d.0.wait().unwrap();
    }
    hub.run_once();
    assert!(
        hub.recorded_breaks().is_empty(),
        "{:?}",
        hub.recorded_breaks()
    );
    let out = hub.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn status_shows_the_audit_head_of_the_running_daemon() {
    let hub = Hub::new();
    let mut d = hub.start();
    wait_for("the head in status", || {
        let last = hub.lines().last().cloned().unwrap();
        let e: line::Entry = serde_json::from_str(&last).unwrap();
        let s = hub.status();
        s["audit"]["last_seq"] == e.seq && s["audit"]["last_mac"] == e.mac.unwrap()
    });
    assert_eq!(hub.status()["audit"]["chain_broken"], false);
    d.stop();
}

#[test]
fn a_refused_reload_whose_error_quotes_an_nhs_number_is_audited_without_it() {
    let hub = Hub::new();
    let mut d = hub.start();
    let good = std::fs::read_to_string(&hub.config).unwrap();
    // An NHS Number typed as a TOML integer: the parse error quotes the value.
    std::fs::write(
        &hub.config,
        good.replace(&format!("\"{NHS}\""), "9434765919"),
    )
    .unwrap();
    d.signal("HUP");
    wait_for("the refusal in the audit log", || {
        hub.count("config_reload_refused") == 1
    });
    std::fs::write(&hub.config, &good).unwrap();
    d.stop();
    let log = std::fs::read_to_string(hub.log()).unwrap();
    // The refusal names the key; the value is never shown (config::Problem redacts it).
    assert!(log.contains("patient[0].nhs_number"), "{log}");
    assert!(
        !log.contains("9434765919"),
        "NHS Number in the audit log:\n{log}"
    );
    assert!(hub.cli(&["audit", "verify"]).status.success());
}
