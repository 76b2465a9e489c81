//! Issue 18 (footprint), acceptance 4: since schema 7 the ingest writer stores a row's
//! nonce in front of its ciphertext, one value bound per row instead of two, and leaves the
//! `nonce` column empty. Rows written before keep their nonce column and read exactly as
//! they did; nothing is rewritten. Real SQLite files on disk, the outbox written by an
//! earlier build (tests/fixtures/outbox-cbor-rows, schema 5) for the rows written before.

use time::OffsetDateTime;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::outbox::SCHEMA_VERSION;
use vitalgate::store::{Lane, MasterKey, Outbox, ReadingRecord, Record};

mod support;
use support::fixtures::outbox_written_before;

/// The AES-GCM nonce and tag lengths.
const NONCE: usize = 12;
const TAG: usize = 16;

fn reading(value: i64) -> Record {
    let at = time::macros::datetime!(2026-12-05 10:00:00.250 UTC);
    Record::Reading(ReadingRecord {
        device_id: "sim-0".into(),
        patient_id: "p1".into(),
        nhs_number: Some("9434765919".into()),
        received_at: at,
        clock_synced: true,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value)).at(at)],
        boot: None,
    })
}

/// Row `id`'s nonce and ciphertext columns as stored.
fn columns(outbox: &Outbox, id: i64) -> (Vec<u8>, Vec<u8>) {
    outbox
        .connection()
        .query_row(
            "SELECT nonce, ciphertext FROM outbox WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn set_column(outbox: &Outbox, id: i64, column: &str, value: &[u8]) {
    outbox
        .connection()
        .execute(
            &format!("UPDATE outbox SET {column} = ?1 WHERE id = ?2"),
            rusqlite::params![value, id],
        )
        .unwrap();
}

/// Ids of the undelivered readings lane, oldest first (a row failing is quarantined).
fn readable_ids(outbox: &mut Outbox) -> Vec<i64> {
    outbox
        .pending(Lane::Reading, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_new_row_holds_its_nonce_in_front_of_its_ciphertext_and_an_empty_nonce_column() {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, _) = Outbox::open(
        &dir.path().join("outbox.db"),
        &MasterKey::ephemeral().unwrap(),
    )
    .unwrap();
    let record = reading(97);
    let ids = outbox
        .append(&[record.clone(), reading(98)], OffsetDateTime::now_utc())
        .unwrap();
    let (nonce, sealed) = columns(&outbox, ids[0]);
    assert!(nonce.is_empty(), "nonce column {nonce:?}");
    let plaintext = record.encode().unwrap();
    assert_eq!(sealed.len(), NONCE + plaintext.len() + TAG);
    assert!(!sealed.windows(plaintext.len()).any(|w| w == plaintext));
    // Each row its own random nonce.
    let (_, other) = columns(&outbox, ids[1]);
    assert_ne!(sealed[..NONCE], other[..NONCE]);
    assert_eq!(outbox.get(ids[0]).unwrap(), Some(record));
    let version: i64 = outbox
        .connection()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!((version, SCHEMA_VERSION), (7, 7));
}

#[test]
fn rows_written_before_keep_their_nonce_column_and_read_back_beside_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = outbox_written_before(dir.path());
    let (mut outbox, report) = Outbox::open(&path, &key).unwrap();
    assert_eq!(report.migrated_from, 5);
    let before: Vec<i64> = readable_ids(&mut outbox);
    assert_eq!(before.len(), 30, "the fixture's rows");
    for &id in &before {
        let (nonce, _) = columns(&outbox, id);
        assert_eq!(nonce.len(), NONCE, "row {id} keeps its nonce column");
    }
    let new = outbox
        .append(&[reading(96)], OffsetDateTime::now_utc())
        .unwrap()[0];
    assert!(columns(&outbox, new).0.is_empty());
    drop(outbox);

    let (mut reopened, _) = Outbox::open(&path, &key).unwrap();
    let all = readable_ids(&mut reopened);
    assert_eq!(all, [before, vec![new]].concat());
    assert!(reopened.quarantined_now.is_empty());
    assert_eq!(reopened.get(new).unwrap(), Some(reading(96)));
}

#[test]
fn a_tampered_nonce_of_a_row_written_before_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = outbox_written_before(dir.path());
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let (mut nonce, _) = columns(&outbox, 1);
    nonce[NONCE / 2] ^= 0x01;
    set_column(&outbox, 1, "nonce", &nonce);
    let ids = readable_ids(&mut outbox);
    assert!(!ids.contains(&1) && ids.len() == 29, "{ids:?}");
    assert_eq!(outbox.quarantined_now[0].id, 1);
}

/// An emptied nonce column makes a row written before look like a new one, its nonce
/// taken from the ciphertext's first bytes: it fails authentication, never misreads.
#[test]
fn an_emptied_nonce_column_of_a_row_written_before_is_quarantined_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = outbox_written_before(dir.path());
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    set_column(&outbox, 2, "nonce", &[]);
    assert_eq!(outbox.get(2).unwrap(), None);
    assert_eq!(outbox.quarantined_now[0].id, 2);
    assert_eq!(readable_ids(&mut outbox).len(), 29);
}

#[test]
fn a_new_row_cut_short_inside_its_nonce_is_quarantined_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, _) = Outbox::open(
        &dir.path().join("outbox.db"),
        &MasterKey::ephemeral().unwrap(),
    )
    .unwrap();
    let ids = outbox
        .append(
            &[reading(97), reading(98), reading(99)],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let (_, sealed) = columns(&outbox, ids[0]);
    set_column(&outbox, ids[0], "ciphertext", &sealed[..NONCE - 1]);
    set_column(&outbox, ids[1], "ciphertext", &[]);
    assert_eq!(readable_ids(&mut outbox), vec![ids[2]]);
    let quarantined: Vec<i64> = outbox.quarantined_now.iter().map(|q| q.id).collect();
    assert_eq!(quarantined, vec![ids[0], ids[1]]);
}
