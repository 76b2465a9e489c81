//! Patient erasure (issue 15, acceptance 3): `vitalgate patient erase PATIENT_ID` on real
//! files and the real binary. A copy of the outbox taken before can no longer be read for
//! that patient with the hub's keyring afterwards (other patients' rows still can), and no
//! ciphertext of theirs is left in `outbox.db` or its WAL.

mod keyring_support;

use keyring_support::*;
use rusqlite::Connection;
use vitalgate::store::outbox::DeviceStateUpdate;
use vitalgate::store::{MasterKey, Outbox};

const GONE: &str = "erase-me";
const KEPT: &str = "keep-me";

/// A hub with two patients: 5 rows each, the first 2 of `GONE` delivered, alert state and a
/// device cursor for each. Returns the hub and the row ids by patient.
fn hub_with_two_patients() -> (Hub, Vec<i64>, Vec<i64>) {
    let hub = Hub::new(&[GONE, KEPT]);
    let filled = hub.fill(&[GONE, KEPT], 5);
    let (gone, kept) = (filled[0].1.clone(), filled[1].1.clone());
    let (mut outbox, _) = Outbox::open(&hub.outbox, &hub.master()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    outbox.mark_delivered(&gone[..2], now).unwrap();
    let state = |owner: String, key: &str| DeviceStateUpdate {
        device_id: owner,
        key: key.into(),
        value: "{\"spo2_low\":true}".into(),
    };
    outbox
        .append_with_state(
            &[],
            &[
                state(format!("patient:{GONE}"), "alerts_state"),
                state(format!("patient:{KEPT}"), "alerts_state"),
                state(format!("ox-{GONE}"), "offset"),
            ],
            now,
        )
        .unwrap();
    outbox.close_clean().unwrap();
    (hub, gone, kept)
}

/// The ciphertexts of rows `ids` as stored.
fn ciphertexts(outbox: &std::path::Path, ids: &[i64]) -> Vec<Vec<u8>> {
    let conn = Connection::open(outbox).unwrap();
    ids.iter()
        .map(|id| {
            conn.query_row("SELECT ciphertext FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        })
        .collect()
}

fn erase(hub: &Hub, patient: &str) -> std::process::Output {
    run(&hub.args(&["patient", "erase", patient]))
}

fn raw(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
fn a_copy_taken_before_erasure_cannot_be_read_for_that_patient_with_the_hubs_keys() {
    let (hub, gone, kept) = hub_with_two_patients();
    let before = hub.dir.path().join("before.db");
    std::fs::copy(&hub.outbox, &before).unwrap();
    let out = erase(&hub, GONE);
    assert!(out.status.success(), "{}", stderr(&out));

    // The hub's keyring as it is now, with the rows of the copy put back under their ids.
    let probe = hub.dir.path().join("probe.db");
    std::fs::copy(&hub.outbox, &probe).unwrap();
    let conn = Connection::open(&probe).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS before", [before.to_str().unwrap()])
        .unwrap();
    conn.execute_batch(
        "DELETE FROM outbox;
         INSERT INTO outbox SELECT * FROM before.outbox;
         DETACH DATABASE before;",
    )
    .unwrap();
    drop(conn);
    let readable_now = readable(&probe, &hub.master());
    assert_eq!(readable_now, kept, "only the other patient's rows open");
    assert!(gone.iter().all(|id| !readable_now.contains(id)));
}

#[test]
fn no_ciphertext_nor_pseudonym_of_the_erased_patient_remains_in_the_outbox_or_its_wal() {
    let (hub, gone, kept) = hub_with_two_patients();
    let gone_ct = ciphertexts(&hub.outbox, &gone);
    let kept_ct = ciphertexts(&hub.outbox, &kept);
    let out = erase(&hub, GONE);
    assert!(out.status.success(), "{}", stderr(&out));
    let wal = hub.outbox.with_file_name("outbox.db-wal");
    for file in [&hub.outbox, &wal] {
        let bytes = raw(file);
        for ct in &gone_ct {
            assert!(
                !contains(&bytes, &ct[..24]),
                "{}: a ciphertext of the erased patient remains",
                file.display()
            );
        }
        assert!(
            !contains(&bytes, GONE.as_bytes()),
            "{}: pseudonym",
            file.display()
        );
    }
    let bytes = raw(&hub.outbox);
    assert!(
        kept_ct.iter().all(|ct| contains(&bytes, &ct[..24])),
        "the other patient's rows are kept"
    );
    assert_eq!(readable(&hub.outbox, &hub.master()), kept);
    let (outbox, _) = Outbox::open(&hub.outbox, &hub.master()).unwrap();
    assert_eq!(
        outbox
            .device_state(&format!("patient:{KEPT}"), "alerts_state")
            .unwrap()
            .as_deref(),
        Some("{\"spo2_low\":true}")
    );
    assert_eq!(
        outbox
            .device_state(&format!("patient:{GONE}"), "alerts_state")
            .unwrap(),
        None
    );
    assert_eq!(
        outbox
            .device_state(&format!("ox-{GONE}"), "offset")
            .unwrap(),
        None
    );
}

#[test]
fn erase_reports_the_undelivered_rows_it_erased_and_is_audited_by_pseudonym_and_counts() {
    let (hub, _gone, _kept) = hub_with_two_patients();
    let out = erase(&hub, GONE);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["undelivered_rows"], 3, "{report:#}");
    assert_eq!(report["delivered_rows"], 2);
    assert_eq!(report["state_values"], 2);
    assert!(
        stderr(&out).contains("3 undelivered rows erased"),
        "{}",
        stderr(&out)
    );

    let log = std::fs::read_to_string(hub.dir.path().join("audit.log")).unwrap();
    let entry = log
        .lines()
        .find(|l| l.contains("patient_erased"))
        .expect("erasure audited");
    let entry: serde_json::Value = serde_json::from_str(entry).unwrap();
    let details = entry.to_string();
    assert!(
        details.contains(GONE) && details.contains("\"undelivered_rows\":3"),
        "{details}"
    );
    assert!(!log.contains("9434765919"));
    let verify = run(&hub.args(&["audit", "verify"]));
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn erase_is_refused_while_the_daemon_holds_the_instance_lock_and_changes_nothing() {
    let (hub, gone, kept) = hub_with_two_patients();
    let lock = vitalgate::daemon::instance_lock::InstanceLock::acquire(hub.dir.path()).unwrap();
    let out = erase(&hub, GONE);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("erase-patient"), "{}", stderr(&out));
    drop(lock);
    let mut all = [gone, kept].concat();
    all.sort_unstable();
    assert_eq!(readable(&hub.outbox, &hub.master()), all);
}

#[test]
fn erase_with_the_wrong_master_key_is_refused_and_changes_nothing() {
    let (hub, gone, kept) = hub_with_two_patients();
    let right = std::fs::read(&hub.key_file).unwrap();
    std::fs::remove_file(&hub.key_file).unwrap();
    hub.new_key("master.key");
    let out = erase(&hub, GONE);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    std::fs::remove_file(&hub.key_file).unwrap();
    write_key(&hub.key_file, &right);
    let mut all = [gone, kept].concat();
    all.sort_unstable();
    assert_eq!(
        readable(&hub.outbox, &MasterKey::from_file(&hub.key_file).unwrap()),
        all
    );
}

fn write_key(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}
