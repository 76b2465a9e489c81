//! The envelope keyring on real SQLite files: per-patient keys, rotation by age on a fake
//! clock, spent keys destroyed, wraps bound to their key, the migration of a schema 3 outbox.

use super::*;
use crate::reading::{Decimal, Metric, Reading};
use crate::store::outbox::{DeviceStateUpdate, Outbox};
use crate::store::record::{ReadingRecord, Record};
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

fn reading(patient: &str, value: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: format!("ox-{patient}").into(),
        patient_id: patient.into(),
        nhs_number: None,
        received_at: T0,
        clock_synced: true,
        boot: None,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
    })
}

fn fresh() -> (tempfile::TempDir, PathBuf, MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    (dir, path, MasterKey::ephemeral().unwrap())
}

fn key_of_row(outbox: &Outbox, id: i64) -> u32 {
    outbox
        .connection()
        .query_row("SELECT key_id FROM outbox WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

fn info(outbox: &Outbox, key_id: u32) -> Option<KeyInfo> {
    outbox
        .data_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.key_id == key_id)
}

#[test]
fn each_patient_and_the_gateway_get_keys_of_their_own() {
    let (_d, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let ids = outbox
        .append_with_state(
            &[reading("p1", 97), reading("p2", 95), reading("p1", 96)],
            &[DeviceStateUpdate {
                device_id: "ox-p1".into(),
                key: "offset".into(),
                value: "42".into(),
            }],
            T0,
        )
        .unwrap();
    let (k1, k2, k1b) = (
        key_of_row(&outbox, ids[0]),
        key_of_row(&outbox, ids[1]),
        key_of_row(&outbox, ids[2]),
    );
    assert_eq!(k1, k1b);
    assert_ne!(k1, k2);
    assert_eq!(info(&outbox, k1).unwrap().patient.as_deref(), Some("p1"));
    assert_eq!(info(&outbox, k1).unwrap().rows, 2);
    assert_eq!(info(&outbox, k2).unwrap().patient.as_deref(), Some("p2"));
    let state_key: u32 = outbox
        .connection()
        .query_row(
            "SELECT key_id FROM sealed_state WHERE owner = 'ox-p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(info(&outbox, state_key).unwrap().purpose, Purpose::Gateway);
}

#[test]
fn a_key_rotates_once_it_is_older_than_the_rotation_period_on_the_clock_it_is_given() {
    let (_d, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    outbox.set_key_rotation_days(90);
    let first = outbox.append(&[reading("p1", 97)], T0).unwrap();
    let day89 = outbox
        .append(&[reading("p1", 96)], T0 + time::Duration::days(89))
        .unwrap();
    let day90 = outbox
        .append(&[reading("p1", 95)], T0 + time::Duration::days(90))
        .unwrap();
    let old = key_of_row(&outbox, first[0]);
    assert_eq!(key_of_row(&outbox, day89[0]), old, "89 days: same key");
    let new = key_of_row(&outbox, day90[0]);
    assert_ne!(new, old, "90 days: a new key");
    assert!(!info(&outbox, old).unwrap().current);
    assert!(info(&outbox, new).unwrap().current);
    // Every row is still readable, old key and new.
    assert_eq!(outbox.verify_all().unwrap().len(), 3);
}

#[test]
fn a_retired_key_is_destroyed_only_once_no_row_sealed_with_it_remains() {
    let (_d, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let ids = outbox.append(&[reading("p1", 97)], T0).unwrap();
    let old = key_of_row(&outbox, ids[0]);
    outbox.rotate_data_keys(T0).unwrap();
    assert!(
        outbox.destroy_spent_keys().unwrap().is_empty(),
        "a row remains"
    );
    assert!(info(&outbox, old).is_some());
    outbox.mark_delivered(&ids, T0).unwrap();
    outbox
        .purge_delivered_before(T0 + time::Duration::seconds(1))
        .unwrap();
    let destroyed = outbox.destroy_spent_keys().unwrap();
    assert_eq!(
        destroyed.iter().map(|d| d.key_id).collect::<Vec<_>>(),
        vec![old]
    );
    assert!(info(&outbox, old).is_none());
    let wraps: i64 = outbox
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM key_wraps WHERE key_id = ?1",
            [old],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wraps, 0);
}

#[test]
fn the_writer_stops_using_a_key_another_connection_retired() {
    let (_d, path, key) = fresh();
    let (mut writer, _) = Outbox::open(&path, &key).unwrap();
    let a = writer.append(&[reading("p1", 97)], T0).unwrap();
    let mut other = Outbox::open_secondary(&path, &key).unwrap();
    other.rotate_data_keys(T0).unwrap();
    let b = writer.append(&[reading("p1", 96)], T0).unwrap();
    assert_ne!(key_of_row(&writer, a[0]), key_of_row(&writer, b[0]));
    // And the other connection reads the row sealed under the key the writer made.
    assert!(other.get(b[0]).unwrap().is_some());
}

#[test]
fn a_wrap_moved_to_another_patient_or_key_id_fails_to_open() {
    let master = MasterKey::ephemeral().unwrap();
    let kek = master.key_encryption_key().unwrap();
    let rng = SystemRandom::new();
    let key = [7u8; 32];
    let (n, w) = seal(&kek, &rng, &wrap_aad(1, 5, Purpose::Patient, "p1"), &key).unwrap();
    assert!(unwrap_key(&kek, 1, 5, Purpose::Patient, "p1", &n, &w).is_some());
    assert!(unwrap_key(&kek, 1, 5, Purpose::Patient, "p2", &n, &w).is_none());
    assert!(unwrap_key(&kek, 1, 6, Purpose::Patient, "p1", &n, &w).is_none());
    assert!(unwrap_key(&kek, 2, 5, Purpose::Patient, "p1", &n, &w).is_none());
    assert!(unwrap_key(&kek, 1, 5, Purpose::Gateway, "p1", &n, &w).is_none());
}

#[test]
fn state_of_the_alert_engine_belongs_to_its_patient_and_cursors_to_the_gateway() {
    assert_eq!(Owner::of_state("patient:p1"), Owner::Patient("p1".into()));
    assert_eq!(Owner::of_state("ox-1"), Owner::Gateway);
    assert_eq!(Owner::of_state("patient:"), Owner::Gateway);
    assert_eq!(Owner::of_patient(""), Owner::Gateway);
}

/// A schema 3 outbox as an older build left it: HKDF key 1, rows of two patients and a
/// device cursor sealed under it.
fn schema3(path: &Path, master: &MasterKey) -> Vec<i64> {
    use crate::store::crypto::{RecordIdentity, StateIdentity};
    let conn = Connection::open(path).unwrap();
    for sql in &super::super::outbox::MIGRATIONS[..3] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 3).unwrap();
    let mut ring = Keyring::new(master);
    let check = RecordIdentity {
        row_id: 0,
        kind: 0,
        key_id: 1,
    };
    let (n, c) = ring
        .seal(check, super::super::outbox::KEY_CHECK.to_vec())
        .unwrap();
    conn.execute(
        "INSERT INTO keys (key_id, created_at, check_nonce, check_ciphertext, sealed) VALUES (1, 0, ?1, ?2, 4)",
        params![&n[..], c],
    )
    .unwrap();
    let mut ids = Vec::new();
    for (id, patient) in [(1i64, "p1"), (2, "p2"), (3, "p1")] {
        let r = reading(patient, 90 + id);
        let identity = RecordIdentity {
            row_id: id,
            kind: r.kind(),
            key_id: 1,
        };
        let (n, c) = ring.seal(identity, r.encode().unwrap()).unwrap();
        conn.execute(
            "INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES (?1, 1, ?2, 0, 1, ?3, ?4)",
            params![id, r.kind(), &n[..], c],
        )
        .unwrap();
        ids.push(id);
    }
    let state = StateIdentity {
        owner: "ox-p1",
        key: "offset",
        key_id: 1,
    };
    let (n, c) = ring.seal_state(state, b"42").unwrap();
    conn.execute(
        "INSERT INTO sealed_state (owner, key, key_id, nonce, ciphertext) VALUES ('ox-p1', 'offset', 1, ?1, ?2)",
        params![&n[..], c],
    )
    .unwrap();
    conn.execute_batch(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_id', 4), ('undelivered_readings', 3)",
    )
    .unwrap();
    ids
}

#[test]
fn a_schema_3_outbox_is_resealed_under_per_patient_keys_and_its_hkdf_key_destroyed() {
    let (_d, path, key) = fresh();
    let ids = schema3(&path, &key);
    let (mut outbox, report) = Outbox::open(&path, &key).unwrap();
    assert_eq!(report.migrated_from, 3);
    let keys: Vec<u32> = ids.iter().map(|id| key_of_row(&outbox, *id)).collect();
    assert_eq!(keys[0], keys[2], "both p1 rows under p1's key");
    assert_ne!(keys[0], keys[1]);
    assert!(
        !keys.contains(&1),
        "no row left under the HKDF key: {keys:?}"
    );
    assert!(info(&outbox, 1).is_none(), "the legacy key is destroyed");
    assert_eq!(outbox.verify_all().unwrap(), ids);
    assert_eq!(
        outbox.device_state("ox-p1", "offset").unwrap().as_deref(),
        Some("42")
    );
    let legacy: i64 = outbox
        .connection()
        .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(legacy, 0);
    drop(outbox);
    // Reopened: nothing left to migrate, everything readable.
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    assert_eq!(outbox.verify_all().unwrap(), ids);
}

#[test]
fn a_schema_3_outbox_opened_with_the_wrong_master_is_refused_and_left_as_it_was() {
    let (_d, path, key) = fresh();
    schema3(&path, &key);
    let wrong = MasterKey::ephemeral().unwrap();
    let e = Outbox::open(&path, &wrong).unwrap_err();
    assert!(matches!(e, StoreError::WrongKey { key_id: 1, .. }), "{e}");
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    assert_eq!(outbox.verify_all().unwrap().len(), 3);
}

#[test]
fn the_audit_key_kept_in_the_keyring_is_the_one_the_master_derived() {
    let (_d, path, key) = fresh();
    drop(Outbox::open(&path, &key).unwrap());
    let kept = attach_audit_key(key.duplicate(), &path);
    let msg = b"entry";
    let label = crate::audit::line::MAC_KEY_LABEL;
    let a = ring::hmac::sign(&key.audit_mac_key(label).unwrap(), msg);
    let b = ring::hmac::sign(&kept.audit_mac_key(label).unwrap(), msg);
    assert_eq!(a.as_ref(), b.as_ref());
}

#[test]
fn after_a_master_rotation_the_new_master_opens_every_row_and_the_old_one_nothing() {
    let (_d, path, old) = fresh();
    let new = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&path, &old).unwrap();
    outbox
        .append(&[reading("p1", 97), reading("p2", 96)], T0)
        .unwrap();
    let id = outbox.add_master_key(&old, &new, T0).unwrap();
    // Both open the keyring between the steps.
    let rows = masters(outbox.connection(), &path).unwrap();
    for k in [&old, &new] {
        assert!(matching_master(&k.key_encryption_key().unwrap(), &rows).is_some());
    }
    outbox.finish_master_key(id).unwrap();
    drop(outbox);
    assert!(matches!(
        Outbox::open(&path, &old).unwrap_err(),
        StoreError::WrongKey { .. }
    ));
    let (mut outbox, _) = Outbox::open(&path, &new).unwrap();
    assert_eq!(outbox.verify_all().unwrap().len(), 2);
    // The audit key survives: the same MAC as the first master derived.
    let label = crate::audit::line::MAC_KEY_LABEL;
    let kept = attach_audit_key(new.duplicate(), &path);
    assert_eq!(
        ring::hmac::sign(&old.audit_mac_key(label).unwrap(), b"x").as_ref(),
        ring::hmac::sign(&kept.audit_mac_key(label).unwrap(), b"x").as_ref()
    );
}

#[test]
fn a_half_done_master_rotation_is_completed_by_the_new_key_and_abandoned_by_the_old() {
    for finish_with_new in [true, false] {
        let (_d, path, old) = fresh();
        let new = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&path, &old).unwrap();
        outbox.append(&[reading("p1", 97)], T0).unwrap();
        outbox.add_master_key(&old, &new, T0).unwrap();
        drop(outbox);
        let (opener, other) = if finish_with_new {
            (&new, &old)
        } else {
            (&old, &new)
        };
        let (mut outbox, _) = Outbox::open(&path, opener).unwrap();
        assert!(outbox.master_handover().is_some());
        assert_eq!(outbox.verify_all().unwrap().len(), 1);
        drop(outbox);
        assert!(
            matches!(
                Outbox::open(&path, other).unwrap_err(),
                StoreError::WrongKey { .. }
            ),
            "finish_with_new={finish_with_new}"
        );
    }
}

#[test]
fn erasure_destroys_the_patients_keys_rows_and_state_and_counts_what_was_undelivered() {
    let (_d, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let ids = outbox
        .append_with_state(
            &[reading("p1", 97), reading("p2", 96), reading("p1", 95)],
            &[
                DeviceStateUpdate {
                    device_id: "patient:p1".into(),
                    key: "alerts".into(),
                    value: "{}".into(),
                },
                DeviceStateUpdate {
                    device_id: "ox-p1".into(),
                    key: "offset".into(),
                    value: "9".into(),
                },
            ],
            T0,
        )
        .unwrap();
    outbox.mark_delivered(&ids[..1], T0).unwrap();
    let erased = outbox.erase_patient("p1", &["ox-p1".into()]).unwrap();
    assert_eq!(erased.undelivered_rows, 1);
    assert_eq!(erased.delivered_rows, 1);
    assert_eq!(erased.state_values, 2);
    assert_eq!(erased.keys_destroyed.len(), 1);
    assert!(erased.file_rewritten);
    assert_eq!(outbox.verify_all().unwrap(), vec![ids[1]]);
    assert_eq!(outbox.backlog().unwrap(), 1);
    assert!(outbox
        .data_keys()
        .unwrap()
        .iter()
        .all(|k| k.patient.as_deref() != Some("p1")));
}
