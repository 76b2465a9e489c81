//! What one outbox row holds, before sealing: a [`Record`], stored as CBOR (`ciborium`).
//!
//! One row is one message to the platform: a single reading, or readings taken together that
//! become one FHIR Observation (a blood-pressure set), or an alert event. Keeping that unit in
//! one row makes delivery accounting exact: one PUBACK marks one row.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::reading::Reading;

/// The outbox lanes. The publisher always drains `Alert` before `Reading`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Alert = 0,
    Reading = 1,
}

impl Lane {
    pub fn from_i64(v: i64) -> Option<Lane> {
        match v {
            0 => Some(Lane::Alert),
            1 => Some(Lane::Reading),
            _ => None,
        }
    }
}

/// Readings from one device that become one Observation (one reading, or a BP set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// The configured device id.
    pub device_id: String,
    /// The pseudonymous patient id from the config (never the NHS Number).
    pub patient_id: String,
    /// The patient's NHS Number at the time of the reading, if configured. Stored so a later
    /// config change cannot re-attribute an old reading. Encrypted with the rest of the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhs_number: Option<String>,
    /// Gateway clock when ingest received the reading.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Whether the gateway clock was known to be synchronised at `received_at`.
    pub clock_synced: bool,
    pub readings: Vec<Reading>,
}

/// An alert event, as published on the alert topic (its JSON is kept verbatim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub patient_id: String,
    pub event: serde_json::Value,
}

/// A derived observation (e.g. a NEWS2 total score) already rendered as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedRecord {
    pub patient_id: String,
    pub observation: serde_json::Value,
}

/// The plaintext of one outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Reading(ReadingRecord),
    Alert(AlertRecord),
    Derived(DerivedRecord),
}

impl Record {
    /// Stored in the `kind` column and bound into the AEAD's associated data.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Reading(_) => 1,
            Record::Alert(_) => 2,
            Record::Derived(_) => 3,
        }
    }

    pub fn lane(&self) -> Lane {
        match self {
            Record::Alert(_) => Lane::Alert,
            Record::Reading(_) | Record::Derived(_) => Lane::Reading,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }
}
