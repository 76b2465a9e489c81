//! `store.max_bytes` on real SQLite files on disk (issue 15, acceptance 4): delivered rows
//! go first, then the `storage_cap` alarm; undelivered readings are dropped only under
//! `store.when_full = "drop_oldest_readings"`, audited, and alert events never.

use std::path::Path;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::audit::AuditLog;
use vitalgate::ingest::{self, CommitHook, GroupCommit, HookOutput, StorageAlarm, WriterExtras};
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{
    AlertRecord, CapGuard, MasterKey, Outbox, ReadingRecord, Record, StorageCap, WhenFull,
};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn reading(i: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: Some("9434765919".into()),
        received_at: time::macros::datetime!(2026-11-23 10:00 UTC) + time::Duration::seconds(i),
        clock_synced: true,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(90 + i % 9))],
        boot: None,
    })
}

fn alert(i: i64) -> Record {
    Record::Alert(AlertRecord {
        patient_id: "p1".into(),
        event: serde_json::json!({"key": "spo2_low", "seq": i}),
    })
}

/// An outbox holding `records`, of which the first `delivered` are delivered, closed and
/// reopened so the WAL is folded into the file (the footprint is then pages in use only).
fn outbox_with(
    path: &Path,
    key: &MasterKey,
    records: &[Record],
    delivered: usize,
) -> (Outbox, Vec<i64>) {
    let (mut outbox, _) = Outbox::open(path, key).unwrap();
    let mut ids = Vec::new();
    for chunk in records.chunks(500) {
        ids.extend(outbox.append(chunk, now()).unwrap());
    }
    outbox.mark_delivered(&ids[..delivered], now()).unwrap();
    drop(outbox);
    let (outbox, _) = Outbox::open(path, key).unwrap();
    (outbox, ids)
}

/// A cap the outbox is already at 95 % of.
fn cap_at_95_percent(outbox: &Outbox, when_full: WhenFull) -> StorageCap {
    StorageCap {
        max_bytes: outbox.used_bytes().unwrap() * 100 / 95,
        when_full,
    }
}

fn present(outbox: &mut Outbox, id: i64) -> bool {
    outbox.get(id).unwrap().is_some()
}

#[test]
fn cap_reached_with_delivered_rows_purges_them_oldest_first_and_keeps_every_undelivered_row() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let records: Vec<Record> = (0..3000).map(reading).collect();
    let (mut outbox, ids) = outbox_with(&dir.path().join("outbox.db"), &key, &records, 2000);
    let cap = cap_at_95_percent(&outbox, WhenFull::Alarm);

    let outcome = CapGuard::new(cap).enforce(&mut outbox).unwrap();

    assert!(outcome.purged_delivered > 0, "{outcome:?}");
    assert_eq!(outcome.dropped_readings, 0);
    assert_eq!(
        outcome.alarm_change, None,
        "delivered rows made the room: no alarm"
    );
    assert!(
        outcome.used_after <= cap.max_bytes / 100 * 80,
        "purged down to the low-water mark: {outcome:?}"
    );
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.backlog_readings, 1000, "every undelivered row kept");
    assert_eq!(stats.delivered_held, 2000 - outcome.purged_delivered);
    assert!(
        !present(&mut outbox, ids[0]),
        "the oldest delivered row went first"
    );
    assert!(
        present(&mut outbox, ids[1999]),
        "the newest delivered row is kept"
    );
    assert!(ids[2000..].iter().all(|&id| present(&mut outbox, id)));
}

#[test]
fn cap_reached_with_only_undelivered_rows_raises_the_alarm_once_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let records: Vec<Record> = (0..3000).map(reading).collect();
    let (mut outbox, ids) = outbox_with(&dir.path().join("outbox.db"), &key, &records, 0);
    let mut guard = CapGuard::new(cap_at_95_percent(&outbox, WhenFull::Alarm));

    let first = guard.enforce(&mut outbox).unwrap();
    let second = guard.enforce(&mut outbox).unwrap();

    assert_eq!(first.alarm_change, Some(true), "{first:?}");
    assert_eq!(
        second.alarm_change, None,
        "raised once, not again every second"
    );
    assert!(guard.alarmed());
    assert_eq!((first.purged_delivered, first.dropped_readings), (0, 0));
    assert_eq!(outbox.stats().unwrap().backlog_readings, 3000);
    assert!(ids.iter().all(|&id| present(&mut outbox, id)));
}

/// Records every storage alarm the writer reports.
struct Alarms(Arc<Mutex<Vec<(StorageAlarm, bool)>>>);

impl CommitHook for Alarms {
    fn on_batch(&mut self, _accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        HookOutput::default()
    }
    fn on_storage(
        &mut self,
        _now: OffsetDateTime,
        alarm: StorageAlarm,
        active: bool,
    ) -> HookOutput {
        self.0.lock().unwrap().push((alarm, active));
        HookOutput::default()
    }
    fn on_reject(&mut self, _rejection: &vitalgate::ingest::Rejection) -> HookOutput {
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, _backlog: u64) -> HookOutput {
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}

#[tokio::test]
async fn drop_oldest_readings_drops_the_oldest_readings_keeps_every_alert_and_audits_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    // Every tenth row an alert event, none delivered.
    let records: Vec<Record> = (0..3000)
        .map(|i| if i % 10 == 0 { alert(i) } else { reading(i) })
        .collect();
    let (outbox, ids) = outbox_with(&dir.path().join("outbox.db"), &key, &records, 0);
    let cap = cap_at_95_percent(&outbox, WhenFull::DropOldestReadings);
    let audit = Arc::new(AuditLog::open(dir.path(), &key).unwrap());
    let alarms = Arc::new(Mutex::new(Vec::new()));
    let extras = WriterExtras {
        cap: Some(cap),
        audit: Some(audit.clone()),
        clock: None,
    };
    let (handle, writer) = ingest::start_with(
        outbox,
        GroupCommit::default(),
        Arc::new(Notify::new()),
        Box::new(Alarms(alarms.clone())),
        extras,
    )
    .unwrap();

    handle.tick().await.unwrap();
    drop(handle);
    let mut outbox = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    assert_eq!(*alarms.lock().unwrap(), vec![(StorageAlarm::Cap, true)]);
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.backlog_alerts, 300, "no alert event is ever dropped");
    let dropped = 2700 - stats.backlog_readings;
    assert!(dropped > 0, "{stats:?}");
    assert!(
        !present(&mut outbox, ids[1]),
        "the oldest reading went first"
    );
    assert!(
        present(&mut outbox, ids[2999]),
        "the newest reading is kept"
    );
    assert!(ids
        .iter()
        .step_by(10)
        .all(|&id| matches!(outbox.get(id).unwrap(), Some(Record::Alert(_)))));

    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entry = log
        .lines()
        .find(|l| l.contains("storage_cap_readings_dropped"))
        .unwrap_or_else(|| panic!("no audit entry for the drop in:\n{log}"));
    assert!(
        entry.contains(&format!("\"undelivered_reading_rows\":{dropped}")),
        "the audit entry counts the rows dropped ({dropped}): {entry}"
    );
}

#[test]
fn storage_cap_alarm_clears_once_delivery_lets_the_outbox_fall_below_70_percent() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let records: Vec<Record> = (0..3000).map(reading).collect();
    let (mut outbox, ids) = outbox_with(&dir.path().join("outbox.db"), &key, &records, 0);
    let mut guard = CapGuard::new(cap_at_95_percent(&outbox, WhenFull::Alarm));
    assert_eq!(guard.enforce(&mut outbox).unwrap().alarm_change, Some(true));

    // The link comes back: the platform acknowledges most of the backlog.
    outbox.mark_delivered(&ids[..2500], now()).unwrap();
    let outcome = guard.enforce(&mut outbox).unwrap();

    assert_eq!(outcome.alarm_change, Some(false), "{outcome:?}");
    assert!(outcome.purged_delivered > 0);
    assert_eq!(outbox.stats().unwrap().backlog_readings, 500);
}

#[test]
fn a_large_purge_is_spread_over_checks_so_the_writer_is_never_held_long() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let records: Vec<Record> = (0..80_000).map(reading).collect();
    let (mut outbox, _) = outbox_with(&dir.path().join("outbox.db"), &key, &records, 79_000);
    // A cap the outbox is at: purging down to 80 % takes more than one check's share.
    let cap = StorageCap {
        max_bytes: outbox.used_bytes().unwrap(),
        when_full: WhenFull::Alarm,
    };
    let mut guard = CapGuard::new(cap);

    let first = guard.enforce(&mut outbox).unwrap();
    let second = guard.enforce(&mut outbox).unwrap();

    assert_eq!(
        first.purged_delivered, 10_000,
        "one check's share: {first:?}"
    );
    assert!(
        second.purged_delivered > 0,
        "the purge goes on at the next check: {second:?}"
    );
    assert!(second.used_after <= cap.max_bytes / 100 * 80, "{second:?}");
    assert_eq!((first.alarm_change, second.alarm_change), (None, None));
    assert_eq!(outbox.stats().unwrap().backlog_readings, 1000);
}
