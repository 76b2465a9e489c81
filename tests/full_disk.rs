//! A full disk is announced and survived (issue 12, acceptance 3), on a real small tmpfs
//! mounted as the state dir (the tests run as root): `vitalgate run` with a fast simulated
//! device, a datagram socket standing in for systemd's `NOTIFY_SOCKET` with a 1 s watchdog,
//! and a ballast file that takes every free byte of the file system.

mod support;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{live, sigterm, spawn_run, wait_exit};
use vitalgate::store::{Lane, MasterKey, Outbox, Record};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// A tmpfs of `size` mounted on `dir/state`, unmounted on drop.
struct SmallFs {
    mount: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        let mount = dir.join("state");
        std::fs::create_dir(&mount).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&mount)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs (the test needs root): {st}");
        SmallFs { mount }
    }

    /// Writes a ballast file until the file system has no byte left.
    fn fill(&self) -> PathBuf {
        let ballast = self.mount.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        ballast
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

struct Gateway {
    _dir: tempfile::TempDir,
    fs: SmallFs,
    key: PathBuf,
    config: PathBuf,
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "keygen: {st}");
    let fs = SmallFs::mount(dir.path(), "6m");
    let config = dir.path().join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "full-disk-gw"
state_dir = "{state}"
devices_dirs = []

[store]
key_file = "{key}"

[[patient]]
id = "p1"

[[device]]
id = "sim-1"
patient = "p1"
driver = "sim"
scenario = "stable"
interval_ms = 5
"#,
            state = fs.mount.display(),
            key = key.display()
        ),
    )
    .unwrap();
    Gateway {
        _dir: dir,
        fs,
        key,
        config,
    }
}

/// The daemon, killed if the test ends without stopping it (a failed assertion).
struct Daemon(Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(config: &Path, notify: Option<&Path>) -> Daemon {
    Daemon(spawn_run(config, notify))
}

/// The `ingest` part of `status.json` (written when a state such as `storage_full` changes,
/// in place when the disk is full), with `readings_committed` from the live state (counts
/// are served live, not written to the file for every commit).
fn ingest_status(state: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state.join("status.json")).ok()?;
    let snap: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut ingest = snap["ingest"].clone();
    ingest["readings_committed"] = live(state)?["ingest"]["readings_committed"].clone();
    Some(ingest)
}

/// Polls `status.json` and the live state until `ok` holds for `ingest_status` (at most 90 s).
fn wait_ingest(
    state: &Path,
    child: &mut Child,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("vitalgate run exited while waiting for {what}: {st}");
        }
        if let Some(ingest) = ingest_status(state).filter(|i| ok(i)) {
            return ingest;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "not within 90 s: {what} (last status: {:?})",
            ingest_status(state)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn committed(i: &serde_json::Value) -> u64 {
    i["readings_committed"].as_u64().unwrap_or(0)
}

/// Every datagram received, with when it arrived.
fn listen(sock: UnixDatagram) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => sink.lock().unwrap().push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                )),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    got
}

/// The transitions of the `technical:storage_full` alert committed to the outbox.
fn storage_full_transitions(state: &Path, key: &Path) -> Vec<String> {
    let key = MasterKey::load(key).unwrap();
    let (mut outbox, _) = Outbox::open(&state.join("outbox.db"), &key).unwrap();
    outbox
        .pending(Lane::Alert, 0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Alert(a) if a.event["rule"] == "technical:storage_full" => {
                a.event["transition"].as_str().map(str::to_string)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_full_disk_is_announced_keeps_the_watchdog_fed_and_ingest_resumes_when_space_returns() {
    let gw = gateway();
    let state = gw.fs.mount.clone();
    let sock_path = gw._dir.path().join("notify.sock");
    let messages = listen(UnixDatagram::bind(&sock_path).unwrap());
    let mut child = spawn(&gw.config, Some(&sock_path));
    wait_ingest(&state, &mut child, "first commits", |i| committed(i) > 0);

    let ballast = gw.fs.fill();
    let full = wait_ingest(&state, &mut child, "status saying storage_full", |i| {
        i["storage_full"] == serde_json::json!(true)
    });
    let full_at = Instant::now();
    // The status line says so, and the watchdog goes on being fed for longer than the 3 s
    // the writer's heartbeat may be stale (1 s watchdog): the writer is alive, retrying.
    let t0 = Instant::now();
    loop {
        let msgs = messages.lock().unwrap().clone();
        let said_full = msgs.iter().any(|(_, m)| {
            m.lines()
                .any(|l| l.starts_with("STATUS=") && l.contains("storage=FULL"))
        });
        let fed_later = msgs.iter().any(|(at, m)| {
            *at > full_at + Duration::from_secs(8) && m.lines().any(|l| l == "WATCHDOG=1")
        });
        if said_full && fed_later {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "STATUS storage=FULL: {said_full}, WATCHDOG=1 8 s after the disk filled: {fed_later}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stalled: Vec<String> = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains("ingest=STALLED"))
        .map(|(_, m)| m.clone())
        .collect();
    assert!(
        stalled.is_empty(),
        "the writer was reported stalled: {stalled:?}"
    );

    std::fs::remove_file(&ballast).unwrap();
    wait_ingest(&state, &mut child, "ingest resuming by itself", |i| {
        i["storage_full"] == serde_json::json!(false) && committed(i) > committed(&full)
    });

    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(30)).expect("exit after SIGTERM");
    assert!(st.success(), "{st}");
    let transitions = storage_full_transitions(&state, &gw.key);
    assert_eq!(
        transitions,
        vec!["raised".to_string(), "cleared".to_string()],
        "the storage_full alarm, delivered once space returned"
    );
}

#[test]
fn sigterm_while_the_disk_is_full_exits_0_within_5_s() {
    let gw = gateway();
    let state = gw.fs.mount.clone();
    let mut child = spawn(&gw.config, None);
    wait_ingest(&state, &mut child, "first commits", |i| committed(i) > 0);
    gw.fs.fill();
    wait_ingest(&state, &mut child, "status saying storage_full", |i| {
        i["storage_full"] == serde_json::json!(true)
    });
    // Let the device tasks block on the full ingest queue, and the writer sleep in a retry.
    std::thread::sleep(Duration::from_secs(3));

    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("vitalgate run still running 5 s after SIGTERM with the disk full")
    });
    assert!(st.success(), "{st}");
}
