//! Issue 18 (footprint), acceptance 1: readings are stored packed (about half the CBOR
//! size, so fewer bytes reach the SD card per reading), and an outbox written before, its
//! readings sealed as CBOR, still opens, reads and delivers every row beside new ones.
//! Real SQLite files on disk.

use time::OffsetDateTime;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{Lane, MasterKey, Outbox, ReadingRecord, Record};

mod support;
use support::fixtures::outbox_written_before;

fn oximeter_reading(at: OffsetDateTime) -> Record {
    Record::Reading(ReadingRecord {
        device_id: "sim-0".into(),
        patient_id: "p1".into(),
        nhs_number: Some("9434765919".into()),
        received_at: at,
        clock_synced: true,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(97)).at(at)],
        boot: Some(vitalgate::clock::BootStamp {
            boot: vitalgate::clock::BootId(0x5a5a_1234_5678_9abc_def0_1234_5678_9abc),
            since_boot_ms: 3_600_000,
        }),
    })
}

#[test]
fn an_outbox_written_before_the_packed_form_reads_and_delivers_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = outbox_written_before(dir.path());
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    assert_eq!(outbox.backlog().unwrap(), 30, "the fixture's rows");

    let old = outbox.pending(Lane::Reading, 0, 100).unwrap();
    assert_eq!(old.len(), 30, "every row written before reads back");
    assert!(
        outbox.quarantined_now.is_empty(),
        "{:?}",
        outbox.quarantined_now
    );
    let readings: Vec<&ReadingRecord> = old
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Reading(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(readings.len(), 29);
    for r in &readings {
        assert_eq!((&*r.device_id, &*r.patient_id), ("sim-0", "p1"));
        assert_eq!(r.nhs_number.as_deref(), Some("9434765919"));
        assert!(!r.readings.is_empty());
    }

    // A new row beside them, packed; both forms leave in id order and are delivered.
    let new = oximeter_reading(OffsetDateTime::now_utc());
    let ids = outbox
        .append(std::slice::from_ref(&new), OffsetDateTime::now_utc())
        .unwrap();
    let all = outbox.pending(Lane::Reading, 0, 100).unwrap();
    assert_eq!(all.len(), 31);
    assert_eq!(all.last().unwrap(), &(ids[0], new));
    let every: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    outbox
        .mark_delivered(&every, OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(outbox.backlog().unwrap(), 0);
    drop(outbox);

    let (mut reopened, _) = Outbox::open(&path, &key).unwrap();
    assert_eq!(reopened.backlog().unwrap(), 0);
    assert!(reopened.pending(Lane::Reading, 0, 100).unwrap().is_empty());
    assert!(reopened.quarantined_now.is_empty());
}

/// The bytes at rest of one oximeter reading (nonce, tag and plaintext): the CBOR form took
/// 145 for this reading, the packed one takes under 100.
#[test]
fn a_sealed_oximeter_reading_takes_under_100_bytes_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let at = OffsetDateTime::now_utc();
    let id = outbox.append(&[oximeter_reading(at)], at).unwrap()[0];
    let size: i64 = outbox
        .connection()
        .query_row(
            "SELECT LENGTH(nonce) + LENGTH(ciphertext) FROM outbox WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(size < 100, "{size} bytes sealed");
    assert_eq!(outbox.get(id).unwrap(), Some(oximeter_reading(at)));
}
