//! The outbox as the publisher sees it: decrypts rows and renders each into the payload the
//! platform receives (a FHIR Observation for readings, the event JSON for alerts).
//!
//! Rendering happens here, at publish time, from the stored reading: the outbox keeps the
//! compact, exact reading, and FHIR ids are deterministic, so a row rendered twice (after a
//! reconnect) gives the identical Observation and the platform deduplicates by id.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::config::{Config, Setting};
use crate::fhir::{self, ObservationContext, ObservationKey, RecordingSetting};
use crate::nhs_number::NhsNumber;
use crate::reading::Metric;
use crate::store::{Lane, Outbox, ReadingRecord, Record};
use crate::uplink::{OutboxSource, Outgoing, SourceError};

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
    let nhs = match &r.nhs_number {
        Some(n) => {
            Some(NhsNumber::parse(n).map_err(|e| format!("stored NHS Number invalid: {e}"))?)
        }
        None => None,
    };
    let ctx = ObservationContext {
        gateway_id: gateway,
        device_id: &r.device_id,
        device_display: displays.get(&r.device_id).map(String::as_str),
        nhs_number: nhs.as_ref(),
        setting: match setting {
            Setting::Residential => RecordingSetting::Residential,
            Setting::Clinical => RecordingSetting::Clinical,
        },
        effective: effective_time(r),
    };
    fhir::observation_json(&ctx, &r.readings).map_err(|e| format!("cannot render FHIR: {e}"))
}

/// [`OutboxSource`] over the real outbox (the publisher's own connection).
pub struct PublishSource {
    outbox: Outbox,
    gateway: String,
    setting: Setting,
    displays: HashMap<String, String>,
}

impl PublishSource {
    pub fn new(outbox: Outbox, gateway: String, config: &Config) -> Self {
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
        PublishSource {
            outbox,
            gateway,
            setting: config.gateway.setting,
            displays,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

/// Below this many rows a batch is rendered on the calling thread (a second thread costs
/// more than it saves).
const PARALLEL_RENDER_MIN: usize = 64;

/// What rendering needs (no database handle, so it can be shared across threads).
struct Renderer<'a> {
    gateway: &'a str,
    setting: Setting,
    displays: &'a HashMap<String, String>,
}

impl Renderer<'_> {
    fn render(&self, record: &Record) -> Result<Vec<u8>, String> {
        match record {
            Record::Reading(r) => render_reading(self.gateway, self.setting, self.displays, r),
            Record::Alert(a) => serde_json::to_vec(&a.event).map_err(|e| e.to_string()),
            Record::Derived(d) => serde_json::to_vec(&d.observation).map_err(|e| e.to_string()),
        }
    }
}

impl PublishSource {
    /// Renders a batch in order. Large batches are split over two threads: rendering FHIR is
    /// the publisher's main CPU cost, and the network side runs on its own task meanwhile.
    fn render_all(&self, rows: &[(i64, Record)]) -> Vec<Result<Vec<u8>, String>> {
        let r = Renderer {
            gateway: &self.gateway,
            setting: self.setting,
            displays: &self.displays,
        };
        let r = &r;
        if rows.len() < PARALLEL_RENDER_MIN {
            return rows.iter().map(|(_, rec)| r.render(rec)).collect();
        }
        let (first, second) = rows.split_at(rows.len() / 2);
        std::thread::scope(|scope| {
            let helper = scope.spawn(move || {
                second
                    .iter()
                    .map(|(_, rec)| r.render(rec))
                    .collect::<Vec<_>>()
            });
            let mut out: Vec<_> = first.iter().map(|(_, rec)| r.render(rec)).collect();
            match helper.join() {
                Ok(rest) => out.extend(rest),
                // A panic while rendering is a bug; render the rest here rather than lose rows.
                Err(_) => out.extend(second.iter().map(|(_, rec)| r.render(rec))),
            }
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
        let rows = self
            .outbox
            .pending(lane, after, limit)
            .map_err(unavailable)?;
        let rendered = self.render_all(&rows);
        let mut out = Vec::with_capacity(rows.len());
        for ((row_id, _), payload) in rows.into_iter().zip(rendered) {
            match payload {
                Ok(payload) => out.push(Outgoing {
                    row_id,
                    lane,
                    payload,
                }),
                Err(why) => {
                    // Kept, never dropped: it shows as refused in `status` for a person to act on.
                    tracing::error!(row_id, reason = %why, "outbox row cannot be rendered; kept and reported");
                    self.outbox
                        .mark_refused(row_id, &why, OffsetDateTime::now_utc())
                        .map_err(unavailable)?;
                }
            }
        }
        Ok(out)
    }

    fn mark_delivered(&mut self, row_ids: &[i64]) -> Result<(), SourceError> {
        self.outbox
            .mark_delivered(row_ids, OffsetDateTime::now_utc())
            .map_err(unavailable)
    }

    fn mark_refused(&mut self, row_id: i64, reason: &str) -> Result<(), SourceError> {
        self.outbox
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
            device_id: format!("dev-{}", i % 3),
            patient_id: "p1".into(),
            nhs_number: Some("9434765919".into()),
            received_at: time::macros::datetime!(2026-11-23 10:00 UTC) + time::Duration::seconds(i),
            clock_synced: true,
            readings: vec![Reading::canonical(
                Metric::HeartRate,
                Decimal::int(50 + i % 60),
            )],
        })
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
}
