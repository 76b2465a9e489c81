//! A record that fails authentication when the publisher reads it is quarantined, and the
//! audit log says so (issue 15, point 1: "quarantine" among the audited events). Real daemon,
//! real Mosquitto with mutual TLS 1.3 (tests/support), SQLite outbox on disk.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use vitalgate::store::{AlertRecord, MasterKey, Outbox, Record};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

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

#[test]
fn a_record_quarantined_by_the_publisher_is_audited_with_its_count() {
    let b = Broker::start(Acl::gateways(&["gw-aq"]));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_path = d.join("master.key");
    assert!(Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key_path)
        .status()
        .unwrap()
        .success());
    let (cert, ckey) = b.write_client("gw-aq", false);
    let config = d.join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-aq\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
             [store]\nkey_file = \"{d}/master.key\"\n\n\
             [uplink]\nbroker = \"127.0.0.1\"\nport = {port}\nserver_name = \"localhost\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{ckey}\"\n\
             backoff_initial_ms = 100\nbackoff_max_s = 1\n\n\
             [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n",
            d = d.display(),
            port = b.port,
            ca = b.path("ca.pem").display(),
            cert = cert.display(),
            ckey = ckey.display(),
        ),
    )
    .unwrap();

    // Two alert rows in the outbox; the second one's ciphertext altered on disk.
    let master = MasterKey::load(&key_path).unwrap();
    let outbox_path = d.join("outbox.db");
    let ids = {
        let (mut outbox, _) = Outbox::open(&outbox_path, &master).unwrap();
        let alert = |n: i64| {
            Record::Alert(AlertRecord {
                patient_id: "p1".into(),
                event: serde_json::json!({ "n": n }),
            })
        };
        outbox
            .append(&[alert(1), alert(2)], time::OffsetDateTime::now_utc())
            .unwrap()
    };
    {
        let (outbox, _) = Outbox::open(&outbox_path, &master).unwrap();
        let mut blob: Vec<u8> = outbox
            .connection()
            .query_row(
                "SELECT ciphertext FROM outbox WHERE id = ?1",
                [ids[1]],
                |r| r.get(0),
            )
            .unwrap();
        blob[0] ^= 1;
        outbox
            .connection()
            .execute(
                "UPDATE outbox SET ciphertext = ?1 WHERE id = ?2",
                rusqlite::params![blob, ids[1]],
            )
            .unwrap();
    }

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let quarantined = || {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["outbox"]
            ["quarantined"]
            .as_u64()
            == Some(1)
    };
    wait_for("the publisher to quarantine the altered row", quarantined);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(d.join("audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "quarantine")
        .collect();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(
        entries[0]["details"],
        serde_json::json!({"rows": 1, "total": 1})
    );
}
