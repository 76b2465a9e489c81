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

/// Who a BLE device's readings belong to.
#[derive(Debug, Clone)]
pub struct PatientOf {
    pub patient_id: Arc<str>,
    pub nhs_number: Option<Arc<str>>,
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
