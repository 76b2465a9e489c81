//! The outbox as the publisher sees it: decrypts rows and renders each into the payload the
//! platform receives (a FHIR Observation for readings, the event JSON for alerts).
//!
//! Rendering happens here, at publish time, from the stored reading: the outbox keeps the
//! compact, exact reading, and FHIR ids are deterministic, so a row rendered twice (after a
//! reconnect) gives the identical Observation and the platform deduplicates by id.

mod clock;
mod read_ahead;

pub use clock::hub_clock;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use time::OffsetDateTime;

use crate::config::{Config, Setting};
use crate::fhir::{self, ObservationContext, ObservationKey, RecordingSetting};
use crate::nhs_number::NhsNumber;
use crate::reading::{Metric, Unit};
use crate::store::{Lane, Outbox, ReadingRecord, Record};
use crate::uplink::{OutboxSource, Outgoing, SourceError};
pub use read_ahead::SourceTimings;
use read_ahead::{ReadAhead, Request};

/// When a record's measurement was taken: the device's time when it gave one, else when the
/// gateway received it.
pub fn effective_time(r: &ReadingRecord) -> OffsetDateTime {
    r.readings
        .iter()
        .find_map(|x| x.device_time)
        .unwrap_or(r.received_at)
}

/// The FHIR Observation id a reading record will be published under (alerts reference it).
pub fn observation_id(gateway: &str, r: &ReadingRecord) -> uuid::Uuid {
    let key = match r.readings.first().map(|x| x.metric) {
        Some(Metric::SystolicBp) => ObservationKey::BloodPressurePanel,
        Some(m) => ObservationKey::Metric(m),
        None => ObservationKey::Metric(Metric::HeartRate),
    };
    fhir::observation_id(gateway, &r.device_id, key, effective_time(r))
}

/// Renders one reading record as FHIR JSON bytes.
pub fn render_reading(
    gateway: &str,
    setting: Setting,
    displays: &HashMap<String, String>,
    r: &ReadingRecord,
) -> Result<Vec<u8>, String> {
    let nhs = parse_nhs_number(r)?;
    let ctx = observation_context(gateway, setting, displays, r, nhs.as_ref());
    fhir::observation_json(&ctx, &r.readings).map_err(|e| format!("cannot render FHIR: {e}"))
}

fn parse_nhs_number(r: &ReadingRecord) -> Result<Option<NhsNumber>, String> {
    r.nhs_number
        .as_deref()
        .map(NhsNumber::parse)
        .transpose()
        .map_err(|e| format!("stored NHS Number invalid: {e}"))
}

fn observation_context<'a>(
    gateway: &'a str,
    setting: Setting,
    displays: &'a HashMap<String, String>,
    r: &'a ReadingRecord,
    nhs: Option<&'a NhsNumber>,
) -> ObservationContext<'a> {
    ObservationContext {
        gateway_id: gateway,
        device_id: &r.device_id,
        device_display: displays.get(&*r.device_id).map(String::as_str),
        nhs_number: nhs,
        setting: match setting {
            Setting::Residential => RecordingSetting::Residential,
            Setting::Clinical => RecordingSetting::Clinical,
        },
        effective: effective_time(r),
    }
}

/// [`OutboxSource`] over the real outbox (the publisher's own connection).
///
/// While the publisher sends one batch, the next is read, decrypted and rendered ahead on a
/// worker thread ([`read_ahead`]), so the network never waits for the disk or for FHIR.
pub struct PublishSource {
    outbox: SharedOutbox,
    render: Arc<RenderContext>,
    ahead: ReadAhead,
}

/// One connection, shared by the publisher (marks) and the read-ahead worker (reads). The lock
/// is held for SQL and decryption only; rendering happens outside it.
pub(crate) type SharedOutbox = Arc<Mutex<Outbox>>;

/// Locks the outbox. A panic elsewhere while holding it leaves the SQLite connection usable
/// (every write is one transaction), so a poisoned lock is taken over rather than failing.
pub(crate) fn lock(outbox: &SharedOutbox) -> MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PublishSource {
    /// Reads, read-ahead and delivery marks all on `outbox`'s one connection.
    pub fn new(outbox: Outbox, gateway: String, config: &Config) -> Self {
        Self::build(outbox, None, gateway, config)
    }

    /// As [`PublishSource::new`], with `reader`, a second connection to the same outbox, for
    /// the read-ahead. With one connection, a delivery mark waits for the lock while the
    /// read-ahead worker reads and decrypts a batch under it; on a busy machine the worker
    /// can lose its CPU while holding it, and the publisher (and the broker behind it) then
    /// stalls until the worker runs again. With two, the marks never wait on the read-ahead.
    pub fn with_reader(outbox: Outbox, reader: Outbox, gateway: String, config: &Config) -> Self {
        Self::build(outbox, Some(reader), gateway, config)
    }

    fn build(outbox: Outbox, reader: Option<Outbox>, gateway: String, config: &Config) -> Self {
        // Delivery marks need not survive a power cut: a lost mark only re-sends rows, under the
        // same deterministic FHIR ids, which the platform deduplicates (at-least-once). Without
        // an fsync per mark the publisher does not stall on the disk between PUBACKs. Readings
        // themselves stay FULL: they are written by ingest's own connection.
        if let Err(e) = outbox
            .connection()
            .pragma_update(None, "synchronous", "NORMAL")
        {
            tracing::warn!(error = %e, "publisher: cannot relax synchronous for delivery marks; keeping FULL");
        }
        let displays = config
            .devices
            .iter()
            .filter_map(|d| d.display.clone().map(|n| (d.id.clone(), n)))
            .collect();
        let render = Arc::new(RenderContext {
            gateway,
            setting: config.gateway.setting,
            displays,
            templates: Templates::default(),
            anchors: clock::Anchors::default(),
        });
        let outbox = Arc::new(Mutex::new(outbox));
        let reads = match reader {
            Some(reader) => Arc::new(Mutex::new(reader)),
            None => outbox.clone(),
        };
        let ahead = ReadAhead::start(reads, outbox.clone(), render.clone());
        PublishSource {
            outbox,
            render,
            ahead,
        }
    }

    /// How many batches the read-ahead served (the rest were read on demand).
    pub fn batches_read_ahead(&self) -> u64 {
        self.ahead.used()
    }

    /// Where the publisher's calls into this source spent their time (benchmarks).
    pub fn timings(&self) -> Arc<SourceTimings> {
        self.ahead.timings().clone()
    }
}

fn unavailable(e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

/// Below this many rows a batch is rendered on the calling thread (a second thread costs
/// more than it saves).
const PARALLEL_RENDER_MIN: usize = 64;

/// What rendering needs (no database handle, so it can be shared across threads).
pub(crate) struct RenderContext {
    gateway: String,
    setting: Setting,
    displays: HashMap<String, String>,
    templates: Templates,
    /// Clock anchors: a reading not synchronised at receipt never takes a template (it
    /// carries a clock note and maybe a corrected time).
    anchors: clock::Anchors,
}

/// At most this many Observation templates are kept (one per device, patient, metric and
/// unit seen); past it, further shapes are rendered in full. A gateway has a handful.
const MAX_TEMPLATES: usize = 1024;

/// [`fhir::Template`]s by device, then by (stored NHS Number, metric, unit): everything that
/// decides an Observation's shape besides what the [`RenderContext`] fixes. `None` records
/// that a shape has no template, so it is not tried again.
#[derive(Default)]
struct Templates {
    by_device: RwLock<HashMap<String, Vec<TemplateEntry>>>,
}

struct TemplateEntry {
    nhs_number: Option<String>,
    metric: Metric,
    unit: Unit,
    template: Option<fhir::Template>,
}

impl TemplateEntry {
    fn serves(&self, r: &ReadingRecord, metric: Metric, unit: Unit) -> bool {
        self.metric == metric
            && self.unit == unit
            && self.nhs_number.as_deref() == r.nhs_number.as_deref()
    }
}

/// A row and its payload, or why it cannot be rendered.
pub(crate) type Rendered = (i64, Result<Vec<u8>, String>);

impl RenderContext {
    fn render(&self, record: &Record) -> Result<Vec<u8>, String> {
        match record {
            Record::Reading(r) if !r.clock_synced => {
                let nhs = parse_nhs_number(r)?;
                let ctx = observation_context(
                    &self.gateway,
                    self.setting,
                    &self.displays,
                    r,
                    nhs.as_ref(),
                );
                fhir::observation_json_with_clock(&ctx, &r.readings, self.anchors.hub_clock(r))
                    .map_err(|e| format!("cannot render FHIR: {e}"))
            }
            Record::Reading(r) => match self.render_from_template(r) {
                Some(bytes) => Ok(bytes),
                None => render_reading(&self.gateway, self.setting, &self.displays, r),
            },
            Record::Alert(a) => serde_json::to_vec(&a.event).map_err(|e| e.to_string()),
            Record::Derived(d) => serde_json::to_vec(&d.observation).map_err(|e| e.to_string()),
        }
    }

    /// `r`'s Observation from its shape's template (the same bytes as [`render_reading`]), or
    /// `None` when it has no template: then it is rendered in full, which also reports any
    /// error.
    fn render_from_template(&self, r: &ReadingRecord) -> Option<Vec<u8>> {
        let [reading] = r.readings.as_slice() else {
            return None;
        };
        // Only a plain reading can say whether its shape has a template: a flagged or absent
        // first reading must not leave the shape's later plain readings without one.
        if !fhir::Template::is_plain(reading) {
            return None;
        }
        let unit = reading.unit?;
        let render = |t: &fhir::Template| {
            t.render(&self.gateway, &r.device_id, effective_time(r), reading)
                .ok()
                .flatten()
        };
        {
            let by_device = self
                .templates
                .by_device
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = by_device
                .get(&*r.device_id)
                .and_then(|entries| entries.iter().find(|e| e.serves(r, reading.metric, unit)))
            {
                return entry.template.as_ref().and_then(render);
            }
        }
        let nhs = parse_nhs_number(r).ok()?;
        let ctx = observation_context(&self.gateway, self.setting, &self.displays, r, nhs.as_ref());
        let template = fhir::Template::for_reading(&ctx, reading).ok()?;
        let out = template.as_ref().and_then(render);
        let mut by_device = self
            .templates
            .by_device
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let kept: usize = by_device.values().map(Vec::len).sum();
        if kept < MAX_TEMPLATES {
            let entries = by_device.entry(String::from(&*r.device_id)).or_default();
            if !entries.iter().any(|e| e.serves(r, reading.metric, unit)) {
                entries.push(TemplateEntry {
                    nhs_number: r.nhs_number.as_deref().map(String::from),
                    metric: reading.metric,
                    unit,
                    template,
                });
            }
        }
        out
    }

    /// Renders a batch in order on the calling thread.
    pub(crate) fn render_rows(&self, rows: Vec<(i64, Record)>) -> Vec<Rendered> {
        rows.into_iter()
            .map(|(id, rec)| (id, self.render_row(id, &rec)))
            .collect()
    }

    /// Renders one row, named as the thread's work: a panic in it (a bug) leaves a breadcrumb
    /// that makes the next start quarantine this row instead of crashing on it again
    /// ([`crate::crash`], HAZ-16).
    fn render_row(&self, id: i64, rec: &Record) -> Result<Vec<u8>, String> {
        crate::crash::during(crate::crash::Current::Row(id), || self.render(rec))
    }

    /// Renders a batch in order. Large batches are split over two threads: when the
    /// read-ahead has nothing ready, the publisher is waiting for this.
    fn render_all(&self, mut rows: Vec<(i64, Record)>) -> Vec<Rendered> {
        if rows.len() < PARALLEL_RENDER_MIN {
            return self.render_rows(rows);
        }
        let second = rows.split_off(rows.len() / 2);
        std::thread::scope(|scope| {
            let helper = scope.spawn(|| {
                second
                    .iter()
                    .map(|(id, rec)| (*id, self.render_row(*id, rec)))
                    .collect::<Vec<_>>()
            });
            let mut out = self.render_rows(rows);
            // The daemon aborts on a panic (crate::crash); elsewhere (tests) it goes on up.
            out.extend(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
            out
        })
    }
}

impl OutboxSource for PublishSource {
    fn next_batch(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Outgoing>, SourceError> {
        let request = Request { lane, after, limit };
        self.render.anchors.refresh(&lock(&self.outbox));
        let rendered = match self.ahead.take(request) {
            Some(ready) => ready,
            None => {
                let started = std::time::Instant::now();
                let rows = lock(&self.outbox)
                    .pending(lane, after, limit)
                    .map_err(unavailable)?;
                let rendered = self.render.render_all(rows);
                let t = self.ahead.timings();
                SourceTimings::add_time(&t.on_demand, &t.on_demand_ns, started);
                rendered
            }
        };
        if rendered.len() == limit {
            if let Some((last, _)) = rendered.last() {
                // A full batch: more are likely waiting behind it.
                self.ahead.request(Request {
                    lane,
                    after: *last,
                    limit,
                });
            }
        }
        let mut out = Vec::with_capacity(rendered.len());
        for (row_id, payload) in rendered {
            match payload {
                Ok(payload) => out.push(Outgoing {
                    row_id,
                    lane,
                    payload,
                }),
                Err(why) => {
                    // Kept, never dropped: it shows as refused in `status` for a person to act on.
                    tracing::error!(row_id, reason = %why, "outbox row cannot be rendered; kept and reported");
                    lock(&self.outbox)
                        .mark_refused(row_id, &why, OffsetDateTime::now_utc())
                        .map_err(unavailable)?;
                }
            }
        }
        Ok(out)
    }

    fn mark_delivered(&mut self, row_ids: &[i64]) -> Result<(), SourceError> {
        let started = std::time::Instant::now();
        let marked = lock(&self.outbox)
            .mark_delivered(row_ids, OffsetDateTime::now_utc())
            .map_err(unavailable);
        let t = self.ahead.timings();
        SourceTimings::add_time(&t.marks, &t.marks_ns, started);
        marked
    }

    fn mark_refused(&mut self, row_id: i64, reason: &str) -> Result<(), SourceError> {
        lock(&self.outbox)
            .mark_refused(row_id, reason, OffsetDateTime::now_utc())
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Decimal, Reading};
    use crate::store::MasterKey;

    fn record(i: i64) -> Record {
        Record::Reading(ReadingRecord {
            device_id: format!("dev-{}", i % 3).into(),
            patient_id: "p1".into(),
            nhs_number: Some("9434765919".into()),
            received_at: time::macros::datetime!(2026-11-23 10:00 UTC) + time::Duration::seconds(i),
            clock_synced: true,
            readings: vec![Reading::canonical(
                Metric::HeartRate,
                Decimal::int(50 + i % 60),
            )],
            boot: None,
        })
    }

    fn source_with(n: i64) -> (tempfile::TempDir, PublishSource, Vec<i64>, Config) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::demo(dir.path()).unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let records: Vec<Record> = (0..n).map(record).collect();
        let ids = outbox.append(&records, OffsetDateTime::now_utc()).unwrap();
        let source = PublishSource::new(outbox, "gw".into(), &config);
        (dir, source, ids, config)
    }

    fn ids_of(batch: &[Outgoing]) -> Vec<i64> {
        batch.iter().map(|o| o.row_id).collect()
    }

    /// Reads batch after batch as the publisher does; returns every row id seen.
    fn drain(source: &mut PublishSource, limit: usize) -> Vec<i64> {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let batch = source.next_batch(Lane::Reading, after, limit).unwrap();
            let Some(last) = batch.last() else {
                return seen;
            };
            after = last.row_id;
            seen.extend(ids_of(&batch));
        }
    }

    #[test]
    fn batches_read_ahead_give_every_row_once_in_order_with_identical_payloads() {
        let (_dir, mut source, ids, config) = source_with(1000);
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let batch = source.next_batch(Lane::Reading, after, 64).unwrap();
            let Some(last) = batch.last() else { break };
            after = last.row_id;
            for o in &batch {
                let Some(Record::Reading(r)) = lock(&source.outbox).get(o.row_id).unwrap() else {
                    panic!("row {} is not a reading", o.row_id)
                };
                let alone =
                    render_reading("gw", config.gateway.setting, &HashMap::new(), &r).unwrap();
                assert_eq!(o.payload, alone, "row {}", o.row_id);
            }
            seen.extend(ids_of(&batch));
        }
        assert_eq!(seen, ids);
        assert!(
            source.batches_read_ahead() >= 10,
            "the read-ahead served {} of 16 batches",
            source.batches_read_ahead()
        );
    }

    /// `read_ahead::READY_AHEAD` batches wait for a publisher that is busy elsewhere (so a
    /// worker that waits for a CPU does not stall the drain), and no more (memory).
    #[test]
    fn the_read_ahead_keeps_its_batches_ready_and_no_more() {
        use std::sync::atomic::Ordering;
        let (_dir, mut source, ids, _) = source_with(1000);
        let timings = source.timings();
        let read_ahead = || timings.read_ahead.load(Ordering::Relaxed);
        let wait_for = |n: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while read_ahead() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {n} batches read ahead",
                    read_ahead()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let first = source.next_batch(Lane::Reading, 0, 100).unwrap();
        wait_for(read_ahead::READY_AHEAD as u64);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            read_ahead(),
            read_ahead::READY_AHEAD as u64,
            "read ahead beyond its bound"
        );
        let second = source
            .next_batch(Lane::Reading, first[99].row_id, 100)
            .unwrap();
        assert_eq!(ids_of(&second), ids[100..200]);
        wait_for(read_ahead::READY_AHEAD as u64 + 1);
        let third = source
            .next_batch(Lane::Reading, second[99].row_id, 100)
            .unwrap();
        assert_eq!(ids_of(&third), ids[200..300]);
        assert_eq!(source.batches_read_ahead(), 2);
        assert_eq!(
            timings.waited.load(Ordering::Relaxed),
            0,
            "the publisher waited for a batch that was ready"
        );
    }

    #[test]
    fn after_a_reconnect_reading_from_the_start_ignores_what_was_read_ahead() {
        let (_dir, mut source, ids, _) = source_with(300);
        let first = source.next_batch(Lane::Reading, 0, 100).unwrap();
        assert_eq!(ids_of(&first), ids[..100]);
        // The publisher reconnects: nothing acknowledged, it starts again from the beginning.
        assert_eq!(drain(&mut source, 100), ids);
    }

    #[test]
    fn rows_delivered_while_a_batch_was_read_ahead_are_not_sent_again_after_a_restart() {
        let (_dir, mut source, ids, _) = source_with(300);
        let first = source.next_batch(Lane::Reading, 0, 100).unwrap();
        source.mark_delivered(&ids_of(&first)).unwrap();
        assert_eq!(drain(&mut source, 100), ids[100..]);
    }

    #[test]
    fn rows_committed_after_a_short_batch_are_read_on_the_next_call() {
        let (_dir, mut source, ids, _) = source_with(50);
        let batch = source.next_batch(Lane::Reading, 0, 100).unwrap();
        assert_eq!(ids_of(&batch), ids);
        let more: Vec<Record> = (50..120).map(record).collect();
        let more_ids = lock(&source.outbox)
            .append(&more, OffsetDateTime::now_utc())
            .unwrap();
        let next = source.next_batch(Lane::Reading, ids[49], 100).unwrap();
        assert_eq!(ids_of(&next), more_ids);
    }

    /// `read_ahead`'s module docs: in a drain, no delivery mark pays for a checkpoint; the
    /// `outbox-checkpoint` thread copies the WAL into the database instead.
    #[test]
    fn while_reading_ahead_the_wal_is_checkpointed_off_the_publishers_connection() {
        let (dir, mut source, _, _) = source_with(3000);
        let db = dir.path().join("outbox.db");
        let auto_checkpoint = |source: &PublishSource| -> i64 {
            lock(&source.outbox)
                .connection()
                .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        wait_for("the publisher's connection still checkpoints", &|| {
            auto_checkpoint(&source) == 0
        });
        let before = std::fs::metadata(&db).unwrap().len();
        let first = source.next_batch(Lane::Reading, 0, 100).unwrap();
        source.mark_delivered(&ids_of(&first)).unwrap();
        std::thread::sleep(read_ahead::CHECKPOINT_EVERY + std::time::Duration::from_millis(50));
        // Served ahead; the worker then reads the next one and, the interval being over,
        // asks for a checkpoint.
        let second = source
            .next_batch(Lane::Reading, first[99].row_id, 100)
            .unwrap();
        assert_eq!(second.len(), 100);
        wait_for("no checkpoint copied the WAL into the database", &|| {
            std::fs::metadata(&db).unwrap().len() > before
        });
    }

    #[test]
    fn a_large_batch_rendered_on_two_threads_keeps_row_order_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::demo(dir.path()).unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let path = dir.path().join("outbox.db");
        let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
        let records: Vec<Record> = (0..300).map(record).collect();
        let ids = outbox.append(&records, OffsetDateTime::now_utc()).unwrap();
        let mut source = PublishSource::new(outbox, "gw".into(), &config);
        let batch = source.next_batch(Lane::Reading, 0, 1000).unwrap();
        assert_eq!(batch.iter().map(|o| o.row_id).collect::<Vec<_>>(), ids);
        for (o, rec) in batch.iter().zip(&records) {
            let Record::Reading(r) = rec else {
                unreachable!()
            };
            let alone = render_reading("gw", config.gateway.setting, &HashMap::new(), r).unwrap();
            assert_eq!(o.payload, alone, "row {}", o.row_id);
        }
    }

    /// Rows of one shape render from a template (`fhir::template`); each must still be the
    /// full render's bytes, across devices (with and without a display name), patients (two
    /// NHS Numbers and none), metrics, times and values, and rows of other shapes (flags, an
    /// absent value, a converted unit) in between.
    #[test]
    fn readings_rendered_from_templates_are_the_full_renders_bytes() {
        use crate::reading::{Absent, Flag, Unit};
        let displays: HashMap<String, String> =
            [("dev-a".to_string(), "Oximeter \"A\"".to_string())].into();
        let render = RenderContext {
            gateway: "gw-1".into(),
            setting: Setting::Clinical,
            displays: displays.clone(),
            templates: Templates::default(),
            anchors: clock::Anchors::default(),
        };
        // Each shape's first reading is one a template cannot be made from (flagged, absent):
        // its later plain readings must still get their template.
        let readings = |i: i64| {
            vec![
                Reading::canonical(Metric::HeartRate, Decimal::int(60)).with_flags([Flag::Motion]),
                Reading::canonical(Metric::HeartRate, Decimal::int(50 + i)),
                Reading::absent(Metric::Spo2, Absent::Missing),
                Reading::canonical(Metric::Spo2, Decimal::int(90 + i)),
                Reading::canonical(Metric::BodyTemperature, Decimal::new(365 + i, -1)),
                Reading::number(
                    Metric::BodyTemperature,
                    Decimal::new(990 + i, -1),
                    Unit::Fahrenheit,
                ),
            ]
        };
        let mut rendered = 0;
        for i in 0..4 {
            for device in ["dev-a", "dev-b"] {
                for nhs in [Some("9434765919"), Some("9000000009"), None] {
                    for reading in readings(i) {
                        let r = ReadingRecord {
                            device_id: device.into(),
                            patient_id: "p1".into(),
                            nhs_number: nhs.map(Into::into),
                            received_at: time::macros::datetime!(2026-11-23 10:00 +01:00)
                                + time::Duration::milliseconds(1234 * i),
                            clock_synced: true,
                            readings: vec![reading],
                            boot: None,
                        };
                        let full =
                            render_reading("gw-1", Setting::Clinical, &displays, &r).unwrap();
                        let got = render.render(&Record::Reading(r.clone())).unwrap();
                        assert_eq!(
                            String::from_utf8(got).unwrap(),
                            String::from_utf8(full).unwrap(),
                            "{r:?}"
                        );
                        rendered += 1;
                    }
                }
            }
        }
        assert_eq!(rendered, 4 * 2 * 3 * 6);
        let by_device = render.templates.by_device.read().unwrap();
        let templates: usize = by_device
            .values()
            .flatten()
            .filter(|e| e.template.is_some())
            .count();
        // Heart rate, SpO2 and Celsius temperature, for each device and patient.
        assert_eq!(templates, 3 * 2 * 3);
    }
}
