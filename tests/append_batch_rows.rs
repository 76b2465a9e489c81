//! One append (one group-commit transaction) of rows that differ from one another: patients
//! with their own data keys, readings and alerts, long and short records (issue 18,
//! acceptance 4). The writer binds lane, kind and key only when they change, and seals every
//! row of the batch first, end to end in one buffer, then inserts them; each row must still
//! carry exactly its own identity and bytes.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use vitalgate::reading::{Acvpu, Decimal, Metric, Reading};
use vitalgate::store::{AlertRecord, Lane, MasterKey, Outbox, ReadingRecord, Record};

fn reading(patient: &str, readings: Vec<Reading>) -> Record {
    Record::Reading(ReadingRecord {
        device_id: format!("monitor-{patient}").into(),
        patient_id: patient.into(),
        nhs_number: Some("9434765919".into()),
        received_at: time::macros::datetime!(2026-12-05 08:00:00.250 UTC),
        clock_synced: true,
        readings,
        boot: None,
    })
}

fn spo2(patient: &str, value: i64) -> Record {
    reading(
        patient,
        vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
    )
}

/// A record several times the size of [`spo2`]'s: one reading of every metric.
fn long(patient: &str) -> Record {
    let readings = Metric::ALL
        .iter()
        .map(|&m| match m.plausible_range() {
            Some((lo, _)) => Reading::canonical(m, Decimal::from_f64(lo + 1.0).unwrap()),
            None => Reading::acvpu(Acvpu::A),
        })
        .collect();
    reading(patient, readings)
}

fn alert(patient: &str, id: &str) -> Record {
    Record::Alert(AlertRecord {
        patient_id: patient.into(),
        event: serde_json::json!({"alert_id": id}),
    })
}

/// `(id, lane, kind, key_id)` of every row, by id.
fn columns(outbox: &Outbox) -> BTreeMap<i64, (i64, i64, i64)> {
    let conn = outbox.connection();
    let mut st = conn
        .prepare("SELECT id, lane, kind, key_id FROM outbox")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pending(outbox: &mut Outbox, lane: Lane) -> Vec<(i64, Record)> {
    outbox.pending(lane, 0, 1000).unwrap()
}

#[test]
fn every_row_of_a_mixed_batch_opens_as_exactly_the_record_appended() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
    // Patients alternate (each has its own data key), lanes and kinds change, and a long
    // record is followed by short ones in the same buffer.
    let batch = vec![
        long("p1"),
        spo2("p2", 95),
        alert("p1", "a1"),
        spo2("p1", 97),
        long("p2"),
        alert("p2", "a2"),
        spo2("p2", 94),
    ];
    let ids = outbox.append(&batch, OffsetDateTime::now_utc()).unwrap();
    assert_eq!(ids.len(), batch.len());

    assert_rows_open_as_appended(&mut outbox, &ids, &batch);
}

/// Every pending row opens (none quarantined) as exactly the record appended under its id,
/// and no other row is pending.
fn assert_rows_open_as_appended(outbox: &mut Outbox, ids: &[i64], batch: &[Record]) {
    let mut read: BTreeMap<i64, Record> = pending(outbox, Lane::Reading)
        .into_iter()
        .chain(pending(outbox, Lane::Alert))
        .collect();
    assert_eq!(
        outbox.stats().unwrap().quarantined,
        0,
        "no row failed to open"
    );
    for (id, appended) in ids.iter().zip(batch) {
        assert_eq!(read.remove(id).as_ref(), Some(appended), "row {id}");
    }
    assert!(read.is_empty(), "rows nobody appended: {read:?}");
}

/// The writer seals every row of a batch, end to end in one buffer, before it inserts any: a
/// long batch of every kind of row, patients taking turns in runs, must still give each row
/// exactly its own record, id, lane, kind and key.
#[test]
fn every_row_of_a_long_mixed_batch_opens_as_exactly_the_record_appended() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
    let batch: Vec<Record> = (0..333)
        .map(|i| {
            let patient = ["p1", "p2", "p3"][(i / 5) % 3];
            match i % 11 {
                3 => alert(patient, &format!("a{i}")),
                7 => long(patient),
                _ => spo2(patient, 70 + (i % 30) as i64),
            }
        })
        .collect();
    let ids = outbox.append(&batch, OffsetDateTime::now_utc()).unwrap();
    assert_eq!(ids.len(), batch.len());
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids run in order");

    assert_rows_open_as_appended(&mut outbox, &ids, &batch);
    let rows = columns(&outbox);
    let key_of = |patient: &str| {
        let first = batch.iter().position(|r| patient_of(r) == patient).unwrap();
        rows[&ids[first]].2
    };
    for (id, record) in ids.iter().zip(&batch) {
        let (lane, kind) = match record {
            Record::Alert(_) => (Lane::Alert as i64, 2),
            _ => (Lane::Reading as i64, 1),
        };
        assert_eq!(
            rows[id],
            (lane, kind, key_of(patient_of(record))),
            "row {id}"
        );
    }
}

fn patient_of(record: &Record) -> &str {
    match record {
        Record::Reading(r) => &r.patient_id,
        Record::Alert(a) => &a.patient_id,
        other => panic!("not in these batches: {other:?}"),
    }
}

#[test]
fn each_row_of_a_mixed_batch_names_its_own_lane_kind_and_patient_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
    let batch = vec![
        spo2("p1", 97),
        spo2("p2", 95),
        alert("p2", "a1"),
        spo2("p1", 96),
    ];
    let ids = outbox.append(&batch, OffsetDateTime::now_utc()).unwrap();
    let rows = columns(&outbox);
    let (p1, p2) = (rows[&ids[0]].2, rows[&ids[1]].2);
    assert_ne!(p1, p2, "each patient seals under a data key of their own");
    assert_eq!(rows[&ids[0]], (Lane::Reading as i64, 1, p1));
    assert_eq!(rows[&ids[1]], (Lane::Reading as i64, 1, p2));
    assert_eq!(rows[&ids[2]], (Lane::Alert as i64, 2, p2));
    assert_eq!(rows[&ids[3]], (Lane::Reading as i64, 1, p1));
}

#[test]
fn a_batch_after_a_key_rotation_is_sealed_and_labelled_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
    let before = outbox
        .append(&[spo2("p1", 97)], OffsetDateTime::now_utc())
        .unwrap();
    let rotated = outbox.rotate_data_keys(OffsetDateTime::now_utc()).unwrap();
    let p1_key = rotated
        .iter()
        .find(|r| r.patient.as_deref() == Some("p1"))
        .expect("p1's key rotated");
    let after = outbox
        .append(&[spo2("p1", 96)], OffsetDateTime::now_utc())
        .unwrap();
    let rows = columns(&outbox);
    assert_eq!(p1_key.retired.map(i64::from), Some(rows[&before[0]].2));
    assert_eq!(rows[&after[0]].2, i64::from(p1_key.key_id));
    assert_eq!(
        pending(&mut outbox, Lane::Reading).len(),
        2,
        "both rows open"
    );
    assert_eq!(outbox.stats().unwrap().quarantined, 0);
}
