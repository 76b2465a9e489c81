//! Permanent commit errors (issue 12, acceptance 6): the ingest writer on a real outbox file,
//! whose inserts another connection makes fail for good (a trigger raising a constraint
//! error). The batch is given up after one retry, logged, counted and alarmed through the
//! commit hooks; the writer goes on, and the next batch that commits clears the alarm.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::ingest::{self, CommitHook, Frame, GroupCommit, HookOutput, StorageAlarm};
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{MasterKey, Outbox, Record};

/// Records the storage alarms the writer reports.
#[derive(Clone, Default)]
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
    fn on_reject(&mut self, _rejection: &ingest::Rejection) -> HookOutput {
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, _backlog: u64) -> HookOutput {
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}

fn frame(value: i64) -> Frame {
    Frame {
        device_id: Arc::from("ox1"),
        patient_id: Arc::from("p1"),
        nhs_number: None,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
        received_at: OffsetDateTime::now_utc(),
        clock_synced: true,
        cursor: None,
        done: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_commit_error_is_given_up_counted_and_alarmed_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().unwrap();
    let (outbox, _) = Outbox::open(&path, &key).unwrap();
    let alarms = Alarms::default();
    let (ingest, writer) = ingest::start(
        outbox,
        GroupCommit::default(),
        Arc::new(Notify::new()),
        Box::new(alarms.clone()),
    )
    .unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(30), ingest.submit_and_wait(frame(91)))
        .await
        .expect("a permanent error must not be retried for ever");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        ingest.counters.permanent_failures.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        ingest.counters.readings_not_stored.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        *alarms.0.lock().unwrap(),
        vec![(StorageAlarm::PermanentFailure, true)]
    );

    other.execute_batch("DROP TRIGGER refuse;").unwrap();
    let ids = tokio::time::timeout(Duration::from_secs(30), ingest.submit_and_wait(frame(92)))
        .await
        .expect("the writer goes on after a permanent error")
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        alarms.0.lock().unwrap().last(),
        Some(&(StorageAlarm::PermanentFailure, false))
    );
    drop(ingest);
    let mut outbox = writer.join().unwrap();
    assert_eq!(outbox.verify_all().unwrap(), ids);
}
