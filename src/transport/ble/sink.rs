//! The daemon's [`BleSink`]: readings go to ingest with `submit_and_wait` (returning only once
//! committed, cursor included), link states to the status [`Registry`].
//!
//! Ready-made so the daemon only has to build it: the last RACP sequence numbers must be read
//! from the outbox (`Outbox::device_state(device, RACP_CURSOR_KEY)`) before the outbox moves into
//! the ingest writer, and passed to [`IngestBleSink::new`]; afterwards the sink keeps them up
//! to date itself from the cursors it commits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::{BleSink, SinkError, RACP_CURSOR_KEY};
use crate::ingest::{Frame, IngestHandle};
use crate::reading::Reading;
use crate::status::Registry;
use crate::transport::LinkState;

/// Who a BLE device's readings belong to. `Debug` masks the NHS Number.
#[derive(Clone)]
pub struct PatientOf {
    pub patient_id: Arc<str>,
    pub nhs_number: Option<Arc<str>>,
}

impl std::fmt::Debug for PatientOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientOf")
            .field("patient_id", &self.patient_id)
            .field(
                "nhs_number",
                &crate::redact::MaskedNhs(self.nhs_number.as_deref()),
            )
            .finish()
    }
}

/// [`BleSink`] over ingest and the status registry.
pub struct IngestBleSink {
    ingest: IngestHandle,
    registry: Registry,
    patients: HashMap<String, PatientOf>,
    last_seq: Mutex<HashMap<String, u16>>,
    clock_synced: fn() -> bool,
}

impl IngestBleSink {
    /// `patients`: device id -> patient; `last_seq`: device id -> committed `racp_last_seq`
    /// (read from the outbox at startup); `clock_synced`: the daemon's NTP check.
    pub fn new(
        ingest: IngestHandle,
        registry: Registry,
        patients: HashMap<String, PatientOf>,
        last_seq: HashMap<String, u16>,
        clock_synced: fn() -> bool,
    ) -> Self {
        IngestBleSink {
            ingest,
            registry,
            patients,
            last_seq: Mutex::new(last_seq),
            clock_synced,
        }
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, HashMap<String, u16>> {
        self.last_seq.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The committed `racp_last_seq` of every RACP device, read from the outbox at startup (before
/// the outbox moves into the ingest writer), for [`IngestBleSink::new`]. A missing or unreadable
/// value means "no record yet": the first download then asks for all records, and ingest keeps
/// the sequence numbers it commits, so nothing is lost (at worst records are fetched again).
pub fn load_last_seqs(
    outbox: &crate::store::Outbox,
    devices: &[super::BleDeviceConfig],
) -> HashMap<String, u16> {
    devices
        .iter()
        .filter(|d| d.has_racp)
        .filter_map(|d| {
            let value = outbox.device_state(&d.id, RACP_CURSOR_KEY).ok()??;
            match value.parse::<u16>() {
                Ok(seq) => Some((d.id.clone(), seq)),
                Err(_) => {
                    tracing::warn!(device = %d.id, %value, "stored racp_last_seq is not a number; the next download asks for all records");
                    None
                }
            }
        })
        .collect()
}

impl BleSink for IngestBleSink {
    fn readings(
        &self,
        device_id: &str,
        readings: Vec<Reading>,
        cursor: Option<(String, String)>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let device = device_id.to_string();
        async move {
            let patient = self.patients.get(&device).ok_or_else(|| {
                SinkError(format!("BLE device {device} has no patient configured; add it to a patient in the config"))
            })?;
            let n = readings.len() as u64;
            let now = OffsetDateTime::now_utc();
            let seq = cursor
                .as_ref()
                .filter(|(k, _)| k == RACP_CURSOR_KEY)
                .and_then(|(_, v)| v.parse::<u16>().ok());
            let frame = Frame {
                device_id: Arc::from(device.as_str()),
                patient_id: patient.patient_id.clone(),
                nhs_number: patient.nhs_number.clone(),
                readings,
                received_at: now,
                clock_synced: (self.clock_synced)(),
                cursor,
                done: None,
            };
            self.ingest
                .submit_and_wait(frame)
                .await
                .map_err(|e| SinkError(e.to_string()))?;
            if let Some(seq) = seq {
                self.seqs().insert(device.clone(), seq);
            }
            self.registry.update(&device, |d| {
                d.frames += 1;
                d.readings += n;
                d.last_data_at = Some(now);
            });
            Ok(())
        }
    }

    fn state(&self, device_id: &str, state: LinkState, last_error: Option<String>) {
        self.registry.update(device_id, |d| {
            d.state = state;
            match (state, last_error) {
                (_, Some(e)) => d.last_error = Some(e),
                // A working connection clears the previous problem.
                (LinkState::Connected, None) => d.last_error = None,
                _ => {}
            }
        });
    }

    fn last_seq(&self, device_id: &str) -> Option<u16> {
        self.seqs().get(device_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{GroupCommit, NoHook};
    use crate::reading::{Decimal, Metric};
    use crate::store::crypto::MasterKey;
    use crate::store::outbox::Outbox;

    fn glucose() -> Reading {
        Reading::canonical(Metric::BloodGlucose, Decimal::new(52, -1))
    }

    fn sink_over(
        outbox: Outbox,
        registry: &Registry,
    ) -> (IngestBleSink, std::thread::JoinHandle<Outbox>) {
        let (ingest, writer) = crate::ingest::start(
            outbox,
            GroupCommit::default(),
            Arc::new(tokio::sync::Notify::new()),
            Box::new(NoHook),
        )
        .unwrap();
        let patients = HashMap::from([(
            "meter".to_string(),
            PatientOf {
                patient_id: Arc::from("p1"),
                nhs_number: None,
            },
        )]);
        let last = HashMap::from([("meter".to_string(), 1u16)]);
        (
            IngestBleSink::new(ingest, registry.clone(), patients, last, || true),
            writer,
        )
    }

    #[tokio::test]
    async fn readings_commit_the_racp_cursor_with_the_reading_and_advance_last_seq() {
        // DESIGN: Frame.cursor commits device state atomically with the readings
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let registry = Registry::default();
        registry.add("meter", "p1", "ble-glucose", None);
        let (sink, writer) = sink_over(outbox, &registry);
        assert_eq!(sink.last_seq("meter"), Some(1));

        sink.readings(
            "meter",
            vec![glucose()],
            Some((RACP_CURSOR_KEY.into(), "2".into())),
        )
        .await
        .unwrap();
        assert_eq!(sink.last_seq("meter"), Some(2));
        let status = registry.snapshot(OffsetDateTime::now_utc());
        assert_eq!((status[0].frames, status[0].readings), (1, 1));

        drop(sink);
        let outbox = writer.join().unwrap();
        assert_eq!(
            outbox
                .device_state("meter", RACP_CURSOR_KEY)
                .unwrap()
                .as_deref(),
            Some("2")
        );
    }

    #[test]
    fn load_last_seqs_reads_racp_devices_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        outbox
            .set_device_state("meter", RACP_CURSOR_KEY, "41")
            .unwrap();
        outbox
            .set_device_state("meter2", RACP_CURSOR_KEY, "x")
            .unwrap();
        outbox
            .set_device_state("cuff", RACP_CURSOR_KEY, "7")
            .unwrap();
        let dev = |id: &str, racp| {
            super::super::BleDeviceConfig::new(
                id,
                "AA:00:00:00:00:01",
                "ble-glucose",
                &["2a18"],
                Default::default(),
                racp,
            )
            .unwrap()
        };
        let seqs = load_last_seqs(
            &outbox,
            &[
                dev("meter", true),
                dev("meter2", true),
                dev("cuff", false),
                dev("new", true),
            ],
        );
        assert_eq!(seqs, HashMap::from([("meter".to_string(), 41)]));
    }

    #[tokio::test]
    async fn readings_from_a_device_without_a_patient_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let (sink, _writer) = sink_over(outbox, &Registry::default());
        let err = sink
            .readings("stranger", vec![glucose()], None)
            .await
            .unwrap_err();
        assert!(err.0.contains("no patient configured"), "{err}");
    }

    #[test]
    fn state_connected_clears_the_last_error_and_other_states_keep_it() {
        let registry = Registry::default();
        registry.add("cuff", "p1", "ble-blood-pressure", None);
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let (sink, _writer) = sink_over(outbox, &registry);
        let now = OffsetDateTime::now_utc;
        sink.state(
            "cuff",
            LinkState::Disconnected,
            Some("needs bonding".into()),
        );
        sink.state("cuff", LinkState::Disconnected, None);
        assert_eq!(
            registry.snapshot(now())[0].last_error.as_deref(),
            Some("needs bonding")
        );
        sink.state("cuff", LinkState::Connected, None);
        let s = &registry.snapshot(now())[0];
        assert_eq!(
            (s.state, s.last_error.as_deref()),
            (LinkState::Connected, None)
        );
    }
}
