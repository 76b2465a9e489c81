//! The BLE central against a mocked BlueZ (rust-stack.md §2.1 [verified] recipe): a private
//! `dbus-daemon` stands in for the system bus, python-dbusmock's `bluez5` template for
//! bluetoothd, and `tests/ble_mock/bluez_ctl.py` adds GATT objects through the Mock API and
//! "indicates" by PropertiesChanged on `Value`.
//!
//! Install the mock once with `scripts/install-ble-mock` (needs apt `dbus-daemon python3
//! python3-venv python3-dbus`). Everything runs in ONE test function: btleplug finds the bus
//! through the process-wide `DBUS_SYSTEM_BUS_ADDRESS`, so the scenarios share one bus and one
//! central, in the order a real ward would see them (bluetoothd missing, then up; devices
//! coming and going).
//!
//! Limits (rust-stack.md §2.1): no pairing or encryption semantics (the bonding case is a
//! StartNotify that answers `org.bluez.Error.NotPermitted`), no MTU or radio timing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::{Duration as TimeDuration, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use vitalgate::drivers::ble::encode_current_time;
use vitalgate::reading::{Flag, Metric, Reading, Value};
use vitalgate::transport::ble::{
    BleCentral, BleDeviceConfig, BleSink, CentralOptions, SinkError, TimePolicy, RACP_CURSOR_KEY,
};
use vitalgate::transport::LinkState;

const INSTALL_HINT: &str =
    "run `scripts/install-ble-mock` (needs apt dbus-daemon python3 python3-venv python3-dbus)";

const BP: &str = "AA:00:00:00:00:01";
const GLUCOSE: &str = "AA:00:00:00:00:02";
const BONDED: &str = "AA:00:00:00:00:03";
const STRANGER: &str = "BB:00:00:00:00:09";

// protocols.md §1.9 vectors G3 (seq 1) and G4 (seq 2); seq 3 and 4 are G3 with the sequence
// number and concentration changed (5.2 and 5.3 mmol/L).
const G_SEQ1: &str = "070100E50707050C1E05000032C011";
const G_SEQ2: &str = "070200E50707050C1E05C4FF33C011";
const G_SEQ3: &str = "070300E50707050C1E05000034C011";
const G_SEQ4: &str = "070400E50707050C1E05000035C011";

/// Child processes killed on drop, so a failing assertion leaves nothing running.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join("tools/ble-mock/.venv/bin/python");
    assert!(p.exists(), "{} is missing: {INSTALL_HINT}", p.display());
    p
}

/// Runs `bluez_ctl.py ARGS` against the mock bus; returns stdout or the error text.
fn ctl_try(bus: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python())
        .arg(root().join("tests/ble_mock/bluez_ctl.py"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .output()
        .map_err(|e| format!("cannot run bluez_ctl.py: {e}; {INSTALL_HINT}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ctl(bus: &str, args: &[&str]) -> String {
    ctl_try(bus, args).unwrap_or_else(|e| panic!("bluez_ctl {args:?} failed: {e}"))
}

fn count_calls(bus: &str, addr: &str, suffix: &str, method: &str) -> usize {
    ctl(bus, &["calls", addr, suffix])
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(method))
        .count()
}

fn start_bus(procs: &mut Procs) -> String {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--print-address", "--nofork"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dbus-daemon ({e}): {INSTALL_HINT}"));
    let stdout = child.stdout.take().unwrap();
    procs.0.push(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line.trim().to_string();
    assert!(!addr.is_empty(), "dbus-daemon printed no address");
    addr
}

fn start_mock_bluez(procs: &mut Procs, bus: &str, log: &Path) {
    let child = Command::new(python())
        .args(["-m", "dbusmock", "--system", "--template", "bluez5"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dbusmock ({e}): {INSTALL_HINT}"));
    procs.0.push(child);
}

/// A device cursor as committed with readings (key, value).
type Cursor = Option<(String, String)>;

/// What the test sink saw.
#[derive(Default)]
struct Seen {
    commits: Vec<(String, Vec<Reading>, Cursor)>,
    states: Vec<(String, LinkState, Option<String>)>,
    last_seq: HashMap<String, u16>,
}

/// Records everything; "commits" immediately.
#[derive(Clone, Default)]
struct RecordingSink(Arc<Mutex<Seen>>);

impl RecordingSink {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap()
    }
    fn commits_of(&self, device: &str) -> Vec<(Vec<Reading>, Cursor)> {
        self.seen()
            .commits
            .iter()
            .filter(|c| c.0 == device)
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect()
    }
    fn states_of(&self, device: &str) -> Vec<(LinkState, Option<String>)> {
        self.seen()
            .states
            .iter()
            .filter(|s| s.0 == device)
            .map(|s| (s.1, s.2.clone()))
            .collect()
    }
    fn count_state(&self, device: &str, state: LinkState) -> usize {
        self.states_of(device)
            .iter()
            .filter(|s| s.0 == state)
            .count()
    }
}

impl BleSink for RecordingSink {
    async fn readings(
        &self,
        device_id: &str,
        readings: Vec<Reading>,
        cursor: Option<(String, String)>,
    ) -> Result<(), SinkError> {
        let mut seen = self.seen();
        if let Some((key, value)) = &cursor {
            if key == RACP_CURSOR_KEY {
                seen.last_seq
                    .insert(device_id.to_string(), value.parse().unwrap());
            }
        }
        seen.commits.push((device_id.to_string(), readings, cursor));
        Ok(())
    }

    fn state(&self, device_id: &str, state: LinkState, last_error: Option<String>) {
        self.seen()
            .states
            .push((device_id.to_string(), state, last_error));
    }

    fn last_seq(&self, device_id: &str) -> Option<u16> {
        self.seen().last_seq.get(device_id).copied()
    }
}

/// Polls `cond` until it holds; panics with `what` after 60 s (a hang guard, not a timing
/// assertion).
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn number(r: &Reading) -> f64 {
    match r.value {
        Value::Number(d) => d.mantissa as f64 * 10f64.powi(i32::from(d.exponent)),
        other => panic!("not a number: {other:?}"),
    }
}

fn systolic(rs: &[Reading]) -> f64 {
    number(rs.iter().find(|r| r.metric == Metric::SystolicBp).unwrap())
}

/// Blood Pressure Measurement (protocols.md §1.6 layout): flags 0x02 (mmHg, time stamp),
/// systolic/diastolic/MAP as SFLOAT with exponent 0, then Date Time 2026-01-15 10:00:00.
fn bp_value(sys: u8, dia: u8, map: u8) -> String {
    format!("02{sys:02X}00{dia:02X}00{map:02X}00EA07010F0A0000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_central_against_mocked_bluez() {
    // `RUST_LOG=vitalgate=debug cargo test --test ble_mock -- --nocapture` shows the central's log.
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_test_writer()
        .finish()
        .with(vitalgate::logging::parse(&filter).unwrap_or_default())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs(Vec::new());
    let bus = start_bus(&mut procs);
    // Process-wide, hence the single test function (see the module docs).
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus);

    let devices = vec![
        BleDeviceConfig::new(
            "cuff",
            BP,
            "ble-blood-pressure",
            &["2a35"],
            TimePolicy::Correct,
            false,
        )
        .unwrap(),
        BleDeviceConfig::new(
            "meter",
            GLUCOSE,
            "ble-glucose",
            &["2a18", "2a34"],
            TimePolicy::Correct,
            true,
        )
        .unwrap(),
        BleDeviceConfig::new(
            "bonded-cuff",
            BONDED,
            "ble-blood-pressure",
            &["2a35"],
            TimePolicy::Correct,
            false,
        )
        .unwrap(),
    ];
    // Operation, connection and RACP timeouts are hang guards that no step relies on firing:
    // generous, so a slow mock (Python over D-Bus) on a busy machine cannot trip them and
    // make a step take another course. The scan watchdog (step 10) is meant to fire.
    let options = CentralOptions {
        op_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(30),
        scan_watchdog: Duration::from_secs(2),
        adapter_retry: Duration::from_millis(300),
        racp_idle_timeout: Duration::from_secs(20),
        clock_tolerance: Duration::from_secs(120),
        reconnect_backoff: Duration::from_millis(200),
        bonding_backoff: Duration::from_secs(60),
        link_check: Duration::from_millis(200),
    };
    let central = BleCentral::new(devices).with_options(options);
    let counters = central.counters();
    let sink = RecordingSink::default();
    // The gateway already holds glucose record 1 (device state racp_last_seq = 1).
    sink.seen().last_seq.insert("meter".into(), 1);
    let token = CancellationToken::new();
    let run = tokio::spawn(central.run(sink.clone(), token.clone()));

    // 1. No bluetoothd on the bus: every BLE device is Unavailable with a reason, and the
    //    central keeps retrying instead of returning (issue item 6).
    wait_for("every device unavailable", || {
        ["cuff", "meter", "bonded-cuff"].iter().all(|d| {
            sink.states_of(d).iter().any(|(s, why)| {
                *s == LinkState::Unavailable
                    && why.as_deref().is_some_and(|w| w.contains("bluetoothd"))
            })
        })
    })
    .await;
    assert!(
        !run.is_finished(),
        "the central must keep retrying without an adapter"
    );

    // 2. bluetoothd (mocked) and an adapter appear; the devices advertise.
    start_mock_bluez(&mut procs, &bus, &dir.path().join("dbusmock.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = ctl_try(&bus, &["adapter"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "mock bluez never came up: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cuff's Current Time reads one hour ahead of the gateway.
    let ahead = OffsetDateTime::now_utc() + TimeDuration::hours(1);
    let cts = hex::encode(
        encode_current_time(time::PrimitiveDateTime::new(ahead.date(), ahead.time()), 0).unwrap(),
    );
    ctl(&bus, &["device", STRANGER, "stranger", "bp"]);
    ctl(&bus, &["device", BP, "cuff", "bp-cts", &cts]);
    ctl(
        &bus,
        &[
            "device",
            GLUCOSE,
            "meter",
            "glucose",
            &[G_SEQ1, G_SEQ2, G_SEQ3].join(","),
        ],
    );
    ctl(&bus, &["device", BONDED, "bonded", "bp-bonded"]);

    // 3. Connect, discover, subscribe: the cuff is connected and its 0x2A35 armed.
    wait_for("cuff subscribed", || {
        count_calls(&bus, BP, "/service0010/char0011", "StartNotify") == 1
    })
    .await;
    wait_for("cuff connected", || {
        sink.count_state("cuff", LinkState::Connected) == 1
    })
    .await;

    // 4. An indication becomes committed readings; the clock one hour ahead is corrected.
    ctl(&bus, &["indicate", BP, "char0011", &bp_value(120, 80, 93)]);
    wait_for("first BP reading", || sink.commits_of("cuff").len() == 1).await;
    let (rs, cursor) = sink.commits_of("cuff").remove(0);
    assert_eq!(cursor, None);
    assert_eq!(systolic(&rs), 120.0);
    let sys = rs.iter().find(|r| r.metric == Metric::SystolicBp).unwrap();
    assert!(sys.flags.contains(&Flag::TimeCorrected), "{:?}", sys.flags);
    let stamped = time::macros::datetime!(2026-01-15 10:00:00 UTC);
    let shift = stamped - sys.device_time.unwrap();
    assert!(
        (shift - TimeDuration::hours(1)).abs() < TimeDuration::minutes(1),
        "device time moved back by the measured offset (~1 h), moved by {shift}"
    );

    // 5. The link drops; the cuff advertises again; the central reconnects and RE-ARMS, so an
    //    indication after the reconnect arrives (protocols.md §1.1: unbonded peers forget CCCDs).
    ctl(&bus, &["disconnect", BP]);
    wait_for("cuff disconnected", || {
        sink.count_state("cuff", LinkState::Disconnected) >= 2
    })
    .await;
    ctl(&bus, &["advertise", BP]);
    wait_for("cuff re-armed", || {
        count_calls(&bus, BP, "/service0010/char0011", "StartNotify") == 2
    })
    .await;
    ctl(&bus, &["indicate", BP, "char0011", &bp_value(130, 85, 100)]);
    wait_for("second BP reading", || sink.commits_of("cuff").len() == 2).await;
    assert_eq!(systolic(&sink.commits_of("cuff")[1].0), 130.0);

    // 6. RACP: the meter is asked for records >= 2 (`01 03 01 02 00`, protocols.md §1.10 R3
    //    form); records 2 and 3 are committed, each with its sequence number as cursor.
    let cursors = |sink: &RecordingSink| -> Vec<String> {
        sink.commits_of("meter")
            .into_iter()
            .map(|(_, c)| c.unwrap().1)
            .collect()
    };
    wait_for("glucose records 2 and 3", || cursors(&sink).len() == 2).await;
    assert_eq!(cursors(&sink), ["2", "3"]);
    let writes: Vec<String> = ctl(&bus, &["calls", GLUCOSE, "/service0010/char0015"])
        .lines()
        .filter(|l| l.starts_with("WriteValue"))
        .map(str::to_string)
        .collect();
    assert_eq!(writes, ["WriteValue 0103010200"]);
    let (rs, _) = &sink.commits_of("meter")[0];
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].metric, Metric::BloodGlucose);
    assert!(rs[0].flags.contains(&Flag::Stored), "{:?}", rs[0].flags);

    // 7. A new record on the meter; next connection resumes from 4: nothing missed or repeated.
    ctl(&bus, &["add-record", GLUCOSE, G_SEQ4]);
    ctl(&bus, &["disconnect", GLUCOSE]);
    wait_for("meter disconnected", || {
        sink.count_state("meter", LinkState::Disconnected) >= 2
    })
    .await;
    ctl(&bus, &["advertise", GLUCOSE]);
    wait_for("glucose record 4", || cursors(&sink).len() == 3).await;
    assert_eq!(cursors(&sink), ["2", "3", "4"]);
    assert_eq!(
        count_calls(&bus, GLUCOSE, "/service0010/char0015", "WriteValue"),
        2
    );
    assert!(
        ctl(&bus, &["calls", GLUCOSE, "/service0010/char0015"]).contains("WriteValue 0103010400")
    );
    // Once more: the meter has nothing newer ("no records found"), so nothing is committed.
    ctl(&bus, &["disconnect", GLUCOSE]);
    wait_for("meter disconnected again", || {
        sink.count_state("meter", LinkState::Disconnected) >= 3
    })
    .await;
    ctl(&bus, &["advertise", GLUCOSE]);
    wait_for("third RACP request", || {
        count_calls(&bus, GLUCOSE, "/service0010/char0015", "WriteValue") == 3
    })
    .await;
    assert!(
        ctl(&bus, &["calls", GLUCOSE, "/service0010/char0015"]).contains("WriteValue 0103010500")
    );

    // 8. A cuff that refuses StartNotify until bonded: status says so, with bluetoothctl steps.
    wait_for("bonding reported", || {
        sink.states_of("bonded-cuff").iter().any(|(_, why)| {
            why.as_deref()
                .is_some_and(|w| w.contains("bonded") && w.contains(&format!("pair {BONDED}")))
        })
    })
    .await;

    // 9. The stranger was never connected (allow-list).
    assert_eq!(count_calls(&bus, STRANGER, "", "Connect"), 0);
    assert!(counters.ignored_devices.load(Ordering::Relaxed) >= 1);

    // 10. Adapter watchdog: the mock goes quiet, discovery is restarted and counted.
    wait_for("scan restarted by the watchdog", || {
        counters.scan_restarts.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(count_calls(&bus, "-", "", "StopDiscovery") >= 1);

    // After all that waiting, the "no records" download still added nothing.
    assert_eq!(cursors(&sink), ["2", "3", "4"]);

    // 11. A cuff whose decoding crashed the gateway twice within the hour (src/crash.rs: the
    //     breadcrumbs a start recovered) is paused at its next connection, saying until when,
    //     and not connected meanwhile.
    let crashed = |minutes_ago| vitalgate::crash::Crash {
        at: OffsetDateTime::now_utc() - TimeDuration::minutes(minutes_ago),
        work: Some(vitalgate::crash::Work::DecodingDevice("cuff".into())),
        location: "src/drivers/ble/blood_pressure.rs:1:1".into(),
        thread: "tokio-rt-worker".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    vitalgate::crash::arm(
        dir.path(),
        vitalgate::crash::Recovery {
            history: vec![crashed(20), crashed(10)],
            ..Default::default()
        },
    );
    let connects = count_calls(&bus, BP, "", "Connect");
    ctl(&bus, &["disconnect", BP]);
    ctl(&bus, &["advertise", BP]);
    wait_for("cuff paused", || {
        sink.states_of("cuff").iter().any(|(s, why)| {
            *s == LinkState::Paused && why.as_deref().is_some_and(|w| w.contains("paused until"))
        })
    })
    .await;
    assert_eq!(
        count_calls(&bus, BP, "", "Connect"),
        connects,
        "not connected while paused"
    );

    // 12. Shutdown: run returns when cancelled.
    token.cancel();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the central stops when cancelled")
        .unwrap();
}
