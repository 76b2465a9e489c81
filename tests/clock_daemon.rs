//! Time without an RTC through the REAL daemon (issue 15, acceptance 5): `daemon::run` in
//! process with a fake clock source (`RunOptions::clock`, the documented test seam), a jsonl
//! device file, the SQLite outbox and the uplink to Mosquitto over mutual TLS 1.3. The hub
//! boots at 1970 with the platform out of reach; a reading arrives; network time arrives; the
//! platform comes back: the reading taken before sync reaches it with its time corrected from
//! the boot clock and a note saying so, the one after sync plain.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use time::macros::datetime;
use tokio_util::sync::CancellationToken;
use vitalgate::clock::FakeClock;
use vitalgate::config::Config;
use vitalgate::fhir::HUB_CLOCK_NOTE;
use vitalgate::store::MasterKey;

fn append(file: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    writeln!(f, "{line}").unwrap();
}

fn clock_note(obs: &Value) -> Option<String> {
    obs["note"].as_array()?.iter().find_map(|n| {
        n["text"]
            .as_str()
            .filter(|t| t.starts_with(HUB_CLOCK_NOTE))
            .map(str::to_owned)
    })
}

/// Waits until the outbox holds `n` reading rows (committed), read-only.
async fn committed(outbox: &Path, n: u64) {
    within(30, &format!("{n} readings committed"), async {
        loop {
            if let Ok(s) = vitalgate::store::outbox::stats_readonly(outbox) {
                if s.backlog_readings >= n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_booted_at_1970_publishes_its_early_reading_corrected_once_time_syncs() {
    let mut b = Broker::start(Acl::gateways(&["gw-clock"]));
    let (rx, _sub) = subscribe(&b, "sub-clock", "rpm/v1/gw/gw-clock/obs").await;
    b.stop("TERM"); // the platform is out of reach at boot

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (cert, key) = b.write_client("gw-clock", false);
    let device = dir.path().join("p1.jsonl");
    std::fs::write(&device, "").unwrap();
    let text = format!(
        "[gateway]\nid = \"gw-clock\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
         [store]\nkey_file = \"{d}/k\"\n\n[ingest]\nmax_batch_wait_ms = 20\n\n\
         [uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         backoff_initial_ms = 100\nbackoff_max_s = 1\n\n\
         [[patient]]\nid = \"p1\"\n\n\
         [[device]]\nid = \"ox1\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n",
        b.port,
        b.path("ca.pem").display(),
        cert.display(),
        key.display(),
        device.display()
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let outbox = config.outbox_path();
    let clock = FakeClock::new(0xb007, datetime!(1970-01-01 00:00 UTC));
    clock.advance(Duration::from_secs(25));
    let token = CancellationToken::new();
    let opts = vitalgate::daemon::RunOptions {
        clock: Some(Arc::new(clock.clone())),
        ..Default::default()
    };
    let daemon = tokio::spawn(vitalgate::daemon::run(
        config,
        MasterKey::ephemeral().unwrap(),
        token.clone(),
        opts,
    ));

    append(
        &device,
        r#"{"metric":"heart_rate","value":61,"unit":"/min"}"#,
    );
    committed(&outbox, 1).await;
    // Ten seconds on, network time: the wall clock is stepped to the real time.
    clock.advance(Duration::from_secs(10));
    clock.set_wall(datetime!(2026-12-05 08:00 UTC));
    clock.report_sync(true);
    append(
        &device,
        r#"{"metric":"heart_rate","value":62,"unit":"/min"}"#,
    );
    committed(&outbox, 2).await;

    b.restart();
    rx.wait_for("/obs", 2, 60).await;
    let got: Vec<Value> = rx
        .on("/obs")
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let by_value = |v: i64| {
        got.iter()
            .find(|o| o["valueQuantity"]["value"] == v)
            .unwrap_or_else(|| panic!("no Observation with value {v} in {got:?}"))
    };
    let early = by_value(61);
    assert_eq!(early["effectiveDateTime"], "2026-12-05T07:59:50Z");
    let note = clock_note(early).expect("the corrected Observation says so");
    assert!(note.contains("corrected"), "{note}");
    assert_eq!(clock_note(by_value(62)), None, "received after sync: plain");
    token.cancel();
    within(30, "daemon stop", daemon).await.unwrap().unwrap();
}
