//! Time without an RTC (issue 15, acceptance 5), with a fake clock source driving the real
//! ingest writer, a real outbox file and the real publisher's rendering: readings received
//! before sync are flagged, stamped with boot id and boot-clock time, and published with
//! their time corrected once this boot syncs; a boot that never synced stays flagged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::macros::datetime;
use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::clock::{BootId, FakeClock};
use vitalgate::config::Config;
use vitalgate::daemon::publish::PublishSource;
use vitalgate::fhir::HUB_CLOCK_NOTE;
use vitalgate::ingest::{self, Frame, GroupCommit, IngestHandle, NoHook, WriterExtras};
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{Lane, MasterKey, Outbox, Record};
use vitalgate::uplink::OutboxSource;

const BOOT_A: u128 = 0x1111_2222_3333_4444_5555_6666_7777_8888;
const BOOT_B: u128 = 0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0000;
const EPOCH: OffsetDateTime = datetime!(1970-01-01 00:00 UTC);
const REAL: OffsetDateTime = datetime!(2026-12-05 08:00 UTC);

fn frame(clock: &FakeClock, pulse: i64) -> Frame {
    use vitalgate::clock::ClockSource;
    Frame {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: Some("9434765919".into()),
        readings: vec![Reading::canonical(Metric::HeartRate, Decimal::int(pulse))],
        received_at: clock.wall(),
        // What a device task says (timesyncd's flag on this machine): the writer's clock
        // watch decides.
        clock_synced: true,
        cursor: None,
        done: None,
    }
}

struct Hub {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    key: MasterKey,
    config: Config,
}

impl Hub {
    fn new() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::demo(dir.path()).unwrap();
        Hub {
            path: dir.path().join("outbox.db"),
            key: MasterKey::ephemeral().unwrap(),
            config,
            _dir: dir,
        }
    }

    /// A daemon generation: the writer over the outbox, with `clock`.
    fn start(&self, clock: &FakeClock) -> (IngestHandle, std::thread::JoinHandle<Outbox>) {
        let (outbox, _) = Outbox::open(&self.path, &self.key).unwrap();
        let extras = WriterExtras {
            clock: Some(Arc::new(clock.clone())),
            ..WriterExtras::default()
        };
        ingest::start_with(
            outbox,
            GroupCommit::default(),
            Arc::new(Notify::new()),
            Box::new(NoHook),
            extras,
        )
        .unwrap()
    }

    async fn stop(handle: IngestHandle, writer: std::thread::JoinHandle<Outbox>) {
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
    }

    /// Every reading's Observation, as the publisher renders it now, in row order.
    fn published(&self) -> Vec<Value> {
        let outbox = Outbox::open_secondary(&self.path, &self.key).unwrap();
        let mut source = PublishSource::new(outbox, "gw".into(), &self.config);
        source
            .next_batch(Lane::Reading, 0, 100)
            .unwrap()
            .into_iter()
            .map(|o| serde_json::from_slice(&o.payload).unwrap())
            .collect()
    }

    fn records(&self) -> Vec<vitalgate::store::ReadingRecord> {
        let (mut outbox, _) = Outbox::open(&self.path, &self.key).unwrap();
        let ids = outbox.verify_all().unwrap();
        ids.into_iter()
            .filter_map(|id| match outbox.get(id).unwrap() {
                Some(Record::Reading(r)) => Some(r),
                _ => None,
            })
            .collect()
    }
}

fn clock_note(obs: &Value) -> Option<String> {
    obs["note"].as_array()?.iter().find_map(|n| {
        n["text"]
            .as_str()
            .filter(|t| t.starts_with(HUB_CLOCK_NOTE))
            .map(str::to_owned)
    })
}

#[tokio::test]
async fn readings_before_sync_are_flagged_then_published_with_times_corrected_from_the_boot_clock()
{
    let hub = Hub::new();
    let clock = FakeClock::new(BOOT_A, EPOCH);
    clock.advance(Duration::from_secs(40));
    let (handle, writer) = hub.start(&clock);
    handle.submit_and_wait(frame(&clock, 61)).await.unwrap();

    // Before sync: stamped, flagged, published flagged with the hub's 1970 time.
    let records = hub.records();
    assert!(!records[0].clock_synced);
    let stamp = records[0]
        .boot
        .expect("boot id and boot-clock time recorded");
    assert_eq!((stamp.boot, stamp.since_boot_ms), (BootId(BOOT_A), 40_000));
    let before = &hub.published()[0];
    assert_eq!(before["effectiveDateTime"], "1970-01-01T00:00:40Z");
    assert!(clock_note(before)
        .unwrap()
        .contains("no correction is known"));

    // 20 s later network time arrives: the wall clock is stepped to the real time.
    clock.advance(Duration::from_secs(20));
    clock.set_wall(REAL);
    clock.report_sync(true);
    handle.submit_and_wait(frame(&clock, 62)).await.unwrap();
    Hub::stop(handle, writer).await;

    let published = hub.published();
    let corrected = &published[0];
    assert_eq!(
        corrected["effectiveDateTime"], "2026-12-05T07:59:40Z",
        "received 20 s of boot clock before the sync at 08:00"
    );
    let note = clock_note(corrected).unwrap();
    assert!(
        note.contains("corrected") && note.contains("1970-01-01T00:00:40Z"),
        "the Observation says it was corrected and from what: {note}"
    );
    assert_eq!(
        corrected["id"], before["id"],
        "the id stays that of the recorded time"
    );
    let after = &published[1];
    assert_eq!(after["effectiveDateTime"], "2026-12-05T08:00:00Z");
    assert_eq!(
        clock_note(after),
        None,
        "a reading after sync carries no clock note"
    );
    assert!(hub.records()[1].clock_synced);
}

#[tokio::test]
async fn a_boot_that_never_synced_stays_flagged_even_where_a_synced_reading_made_a_template() {
    let hub = Hub::new();
    let clock = FakeClock::new(BOOT_A, REAL);
    clock.report_sync(true);
    let (handle, writer) = hub.start(&clock);
    handle.submit_and_wait(frame(&clock, 70)).await.unwrap();
    Hub::stop(handle, writer).await;

    // Power cut; the hub comes back at 1970 with no network, then another boot syncs.
    clock.reboot(BOOT_B, EPOCH);
    clock.advance(Duration::from_secs(5));
    let (handle, writer) = hub.start(&clock);
    handle.submit_and_wait(frame(&clock, 71)).await.unwrap();
    Hub::stop(handle, writer).await;
    clock.reboot(0xc, EPOCH);
    clock.advance(Duration::from_secs(5));
    let (handle, writer) = hub.start(&clock);
    clock.set_wall(REAL + time::Duration::hours(1));
    clock.report_sync(true);
    handle.submit_and_wait(frame(&clock, 72)).await.unwrap();
    Hub::stop(handle, writer).await;

    let published = hub.published();
    assert_eq!(clock_note(&published[0]), None, "synced at receipt");
    assert_eq!(
        published[1]["effectiveDateTime"], "1970-01-01T00:00:05Z",
        "boot B never synced: nothing corrects it"
    );
    assert!(
        clock_note(&published[1])
            .unwrap()
            .contains("no correction is known"),
        "same device, patient, metric and unit as the synced reading before it, yet flagged: {}",
        published[1]
    );
    assert_eq!(clock_note(&published[2]), None);
}

#[tokio::test]
async fn a_step_of_the_wall_clock_without_timesyncd_counts_as_sync() {
    let hub = Hub::new();
    let clock = FakeClock::new(BOOT_A, EPOCH);
    let (handle, writer) = hub.start(&clock);
    clock.advance(Duration::from_secs(10));
    handle.submit_and_wait(frame(&clock, 80)).await.unwrap();
    clock.advance(Duration::from_secs(10));
    clock.set_wall(REAL); // set by chrony, ntpdate or an operator: no flag file
    handle.submit_and_wait(frame(&clock, 81)).await.unwrap();
    Hub::stop(handle, writer).await;

    let records = hub.records();
    assert_eq!(
        records.iter().map(|r| r.clock_synced).collect::<Vec<_>>(),
        [false, true]
    );
    let published = hub.published();
    assert_eq!(published[0]["effectiveDateTime"], "2026-12-05T07:59:50Z");
    assert!(clock_note(&published[0]).unwrap().contains("corrected"));
}

/// Only a reading received before sync is ever corrected from its boot's anchor, so only it
/// carries the boot stamp: a synced reading's row is 18 bytes shorter (issue 18, bytes
/// written per reading).
#[tokio::test]
async fn a_reading_received_after_sync_is_stored_without_a_boot_stamp() {
    let hub = Hub::new();
    let clock = FakeClock::new(BOOT_A, EPOCH);
    clock.advance(Duration::from_secs(40));
    let (handle, writer) = hub.start(&clock);
    handle.submit_and_wait(frame(&clock, 61)).await.unwrap();
    clock.set_wall(REAL);
    clock.report_sync(true);
    handle.submit_and_wait(frame(&clock, 62)).await.unwrap();
    Hub::stop(handle, writer).await;

    let records = hub.records();
    assert!(!records[0].clock_synced);
    assert!(records[0].boot.is_some(), "before sync: stamped");
    assert!(records[1].clock_synced);
    assert_eq!(records[1].boot, None, "after sync: no stamp");
}
