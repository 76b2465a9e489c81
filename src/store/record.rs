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
///
/// Stored in a compact form (short keys, integer times, exact decimals as mantissa and
/// exponent): the outbox holds millions of these on an SD card, and the JSON contract of
/// `Reading` is for people and the `decode` command, not for storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// The configured device id.
    #[serde(rename = "d")]
    pub device_id: String,
    /// The pseudonymous patient id from the config (never the NHS Number).
    #[serde(rename = "p")]
    pub patient_id: String,
    /// The patient's NHS Number at the time of the reading, if configured. Stored so a later
    /// config change cannot re-attribute an old reading. Encrypted with the rest of the row.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nhs_number: Option<String>,
    /// Gateway clock when ingest received the reading.
    #[serde(rename = "t", with = "compact::timestamp")]
    pub received_at: OffsetDateTime,
    /// Whether the gateway clock was known to be synchronised at `received_at`.
    #[serde(rename = "s")]
    pub clock_synced: bool,
    #[serde(rename = "r", with = "compact::readings")]
    pub readings: Vec<Reading>,
}

/// The storage forms of times and readings.
mod compact {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit, Value};

    /// A time as (unix seconds, nanoseconds, UTC offset in seconds): always representable,
    /// keeps the device's offset, and costs a few bytes instead of an RFC 3339 string.
    #[derive(Serialize, Deserialize)]
    pub struct Time(i64, u32, i32);

    impl From<::time::OffsetDateTime> for Time {
        fn from(t: ::time::OffsetDateTime) -> Self {
            Time(
                t.unix_timestamp(),
                t.nanosecond(),
                t.offset().whole_seconds(),
            )
        }
    }

    impl TryFrom<Time> for ::time::OffsetDateTime {
        type Error = String;
        fn try_from(Time(s, ns, off): Time) -> Result<Self, String> {
            let utc = ::time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| e.to_string())?;
            let t = utc.replace_nanosecond(ns).map_err(|e| e.to_string())?;
            let offset = ::time::UtcOffset::from_whole_seconds(off).map_err(|e| e.to_string())?;
            Ok(t.to_offset(offset))
        }
    }

    pub mod timestamp {
        use super::*;
        pub fn serialize<S: Serializer>(
            t: &::time::OffsetDateTime,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            Time::from(*t).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<::time::OffsetDateTime, D::Error> {
            Time::deserialize(d)?
                .try_into()
                .map_err(serde::de::Error::custom)
        }
    }

    #[derive(Serialize, Deserialize)]
    enum StoredValue {
        N(i64, i8),
        C(Acvpu),
        A(Absent),
    }

    #[derive(Serialize, Deserialize)]
    struct StoredReading {
        m: Metric,
        v: StoredValue,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<Unit>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<Time>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        f: Vec<Flag>,
    }

    pub mod readings {
        use super::*;
        pub fn serialize<S: Serializer>(rs: &[Reading], s: S) -> Result<S::Ok, S::Error> {
            let stored: Vec<StoredReading> = rs
                .iter()
                .map(|r| StoredReading {
                    m: r.metric,
                    v: match r.value {
                        Value::Number(d) => StoredValue::N(d.mantissa, d.exponent),
                        Value::Code(c) => StoredValue::C(c),
                        Value::Absent(a) => StoredValue::A(a),
                    },
                    u: r.unit,
                    t: r.device_time.map(Time::from),
                    f: r.flags.clone(),
                })
                .collect();
            stored.serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reading>, D::Error> {
            let stored = Vec::<StoredReading>::deserialize(d)?;
            stored
                .into_iter()
                .map(|r| {
                    Ok(Reading {
                        metric: r.m,
                        value: match r.v {
                            StoredValue::N(m, e) => Value::Number(Decimal::new(m, e)),
                            StoredValue::C(c) => Value::Code(c),
                            StoredValue::A(a) => Value::Absent(a),
                        },
                        unit: r.u,
                        device_time: r
                            .t
                            .map(::time::OffsetDateTime::try_from)
                            .transpose()
                            .map_err(serde::de::Error::custom)?,
                        flags: r.f,
                    })
                })
                .collect()
        }
    }
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
