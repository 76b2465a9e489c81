//! Keys by envelope (issue 15, acceptance 2): `vitalgate key rotate-data`, `vitalgate key
//! rotate-master --new-key FILE` (crash-safe under kill -9 at any point) and the keys in
//! `status`, on real files and the real binary.

mod keyring_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use keyring_support::*;
use rand::{Rng, SeedableRng};
use vitalgate::store::{MasterKey, Outbox, StoreError};

const PATIENTS: &[&str] = &["p1", "p2", "p3"];

fn all_ids(filled: &[(String, Vec<i64>)]) -> Vec<i64> {
    let mut ids: Vec<i64> = filled.iter().flat_map(|(_, ids)| ids.clone()).collect();
    ids.sort_unstable();
    ids
}

fn key_of_row(outbox: &Outbox, id: i64) -> u32 {
    outbox
        .connection()
        .query_row("SELECT key_id FROM outbox WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn rotate_data_gives_every_patient_a_new_key_and_old_rows_stay_readable() {
    let hub = Hub::new(PATIENTS);
    let filled = hub.fill(PATIENTS, 3);
    let out = run(&hub.args(&["key", "rotate-data"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rotated = report["rotated"].as_array().unwrap();
    assert_eq!(rotated.len(), PATIENTS.len(), "{report:#}");

    let (mut outbox, _) = Outbox::open(&hub.outbox, &hub.master()).unwrap();
    assert_eq!(outbox.verify_all().unwrap(), all_ids(&filled));
    let old = key_of_row(&outbox, filled[0].1[0]);
    let new = outbox
        .append(&[reading("p1", 90)], time::OffsetDateTime::now_utc())
        .unwrap();
    let new_key = key_of_row(&outbox, new[0]);
    assert_ne!(new_key, old, "new rows use the new key");
    let p1 = rotated
        .iter()
        .find(|r| r["patient"] == "p1")
        .expect("p1 rotated");
    assert_eq!(p1["retired"], old);
    assert_eq!(p1["key_id"], new_key);
}

#[test]
fn rotate_master_installs_the_new_key_and_the_old_one_no_longer_opens_the_outbox() {
    let hub = Hub::new(PATIENTS);
    let filled = hub.fill(PATIENTS, 2);
    let old = hub.master();
    let new_file = hub.new_key("next.key");
    let new_bytes = std::fs::read(&new_file).unwrap();
    let out = run(&hub.args(&[
        "key",
        "rotate-master",
        "--new-key",
        new_file.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&hub.key_file).unwrap(), new_bytes);
    assert!(matches!(
        Outbox::open(&hub.outbox, &old).unwrap_err(),
        StoreError::WrongKey { .. }
    ));
    assert_eq!(readable(&hub.outbox, &hub.master()), all_ids(&filled));
    // The audit log still verifies: its MAC key outlives the master.
    let verify = run(&hub.args(&["audit", "verify"]));
    assert!(verify.status.success(), "{}", stdout(&verify));
    let log = std::fs::read_to_string(hub.dir.path().join("audit.log")).unwrap();
    assert!(log.contains("master_key_rotated"), "{log}");
}

#[test]
fn rotate_master_refuses_the_key_already_in_use() {
    let hub = Hub::new(PATIENTS);
    hub.fill(PATIENTS, 1);
    let out = run(&hub.args(&[
        "key",
        "rotate-master",
        "--new-key",
        hub.key_file.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is the key in use"),
        "{}",
        stderr(&out)
    );
}

/// Where a kill lands: at a named step (the command waits there to be killed), or after a
/// random delay.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    Step(&'static str),
    After(Duration),
}

/// Runs `rotate-master` and kills it with SIGKILL at `at`. Returns whether it finished first.
fn rotate_master_killed(hub: &Hub, new_key: &std::path::Path, at: KillAt) -> bool {
    let mut cmd = bin();
    cmd.args(hub.args(&[
        "key",
        "rotate-master",
        "--new-key",
        new_key.to_str().unwrap(),
    ]))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let KillAt::Step(step) = at {
        cmd.env("VITALGATE_CRASH_TEST_PAUSE", step);
    }
    let mut child = cmd.spawn().unwrap();
    match at {
        KillAt::Step(step) => {
            let stderr = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("crash-test pause") {
                        let _ = tx.send(line);
                    }
                }
            });
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("rotate-master never reached step {step}"));
            assert!(line.ends_with(step), "{line}");
        }
        KillAt::After(d) => std::thread::sleep(d),
    }
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    finished
}

/// Issue 15, acceptance 2: kill -9 at any point of a master rotation leaves old or new
/// master working (the one in the key file), never neither, with every row readable; and
/// the rotation can be run again to completion.
#[test]
fn rotate_master_killed_at_any_point_leaves_the_key_file_opening_every_row() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let steps = ["wrapped", "staged", "installed"];
    let mut points: Vec<KillAt> = steps.iter().map(|s| KillAt::Step(s)).collect();
    points.extend((0..12).map(|_| KillAt::After(Duration::from_millis(rng.gen_range(0..120)))));
    // One template hub with many data keys (the re-wrap takes a while), copied per kill.
    let many: Vec<String> = (0..60).map(|i| format!("pt-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let template = Hub::new(&many);
    let filled = template.fill(&many, 2);
    let ids = all_ids(&filled);
    for (n, at) in points.into_iter().enumerate() {
        let hub = Hub::new(&many);
        std::fs::copy(&template.outbox, &hub.outbox).unwrap();
        std::fs::copy(&template.key_file, &hub.key_file).unwrap();
        let old_bytes = std::fs::read(&hub.key_file).unwrap();
        let new_file = hub.new_key(&format!("next-{n}.key"));
        let new_bytes = std::fs::read(&new_file).unwrap();
        let finished = rotate_master_killed(&hub, &new_file, at);

        let in_file = std::fs::read(&hub.key_file).unwrap();
        assert!(
            in_file == old_bytes || in_file == new_bytes,
            "{at:?}: the key file is neither key"
        );
        let master = MasterKey::from_file(&hub.key_file).unwrap();
        assert_eq!(
            readable(&hub.outbox, &master),
            ids,
            "{at:?} (finished: {finished}): the key in the key file must open every row"
        );
        // Run again: it completes, and the newest key then opens everything.
        let again = hub.new_key(&format!("again-{n}.key"));
        let out = run(&hub.args(&["key", "rotate-master", "--new-key", again.to_str().unwrap()]));
        assert!(out.status.success(), "{at:?}: {}", stderr(&out));
        assert_eq!(
            readable(&hub.outbox, &MasterKey::from_file(&hub.key_file).unwrap()),
            ids
        );
    }
}

#[test]
fn key_commands_are_refused_while_the_daemon_holds_the_instance_lock() {
    let hub = Hub::new(PATIENTS);
    hub.fill(PATIENTS, 1);
    let _lock = vitalgate::daemon::instance_lock::InstanceLock::acquire(hub.dir.path()).unwrap();
    let new_file = hub.new_key("next.key");
    for verb in [
        vec!["key", "rotate-data"],
        vec![
            "key",
            "rotate-master",
            "--new-key",
            new_file.to_str().unwrap(),
        ],
    ] {
        let out = run(&hub.args(&verb));
        assert_eq!(out.status.code(), Some(1), "{verb:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("already running") && stderr(&out).contains("fleet command"),
            "{}",
            stderr(&out)
        );
    }
    drop(_lock);
    assert!(matches!(
        Outbox::open(&hub.outbox, &MasterKey::from_file(&new_file).unwrap()).unwrap_err(),
        StoreError::WrongKey { .. }
    ));
}

#[test]
fn status_lists_data_keys_with_ages_and_row_counts_by_pseudonym_and_no_key_material() {
    let hub = Hub::new(PATIENTS);
    hub.fill(PATIENTS, 4);
    let out = run(&hub.args(&["status", "--json"]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = s["keys"]["data_keys"]
        .as_array()
        .expect("data_keys in status");
    for p in PATIENTS {
        let k = keys
            .iter()
            .find(|k| k["patient"] == *p)
            .unwrap_or_else(|| panic!("{p}: {s:#}"));
        assert_eq!(k["rows"], 4);
        assert_eq!(k["age_days"], 0);
        assert_eq!(k["current"], true);
    }
    let text = stdout(&out);
    let key_hex = std::fs::read_to_string(&hub.key_file).unwrap();
    assert!(!text.contains(key_hex.trim()));
    assert!(!text.contains("9434765919"));
    assert!(
        !text.contains("wrapped") && !text.contains("nonce"),
        "{text}"
    );
}
