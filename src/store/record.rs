//! What one outbox row holds, before sealing: a [`Record`]. Readings (nearly every row) are
//! stored packed (`packed.rs`: codes and varints, about half the CBOR size, issue 18);
//! alerts and derived records as CBOR (`ciborium`). Rows written before as CBOR readings
//! stay readable: `cbor4ii` reads them (the faster), `ciborium` what `cbor4ii` refuses. See
//! [`Record::encode`] and [`Record::decode`].
//!
//! One row is one message to the platform: a single reading, or readings taken together that
//! become one FHIR Observation (a blood-pressure set), or an alert event. Keeping that unit in
//! one row makes delivery accounting exact: one PUBACK marks one row.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::reading::Reading;

mod packed;

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
///
/// `Debug` is written by hand: it masks the NHS Number.
///
/// The three texts are shared (`Arc<str>`), not owned: the ingest writer makes a record per
/// reading from the frame's own `Arc`s, which costs a reference count each instead of an
/// allocation, a copy and a free (issue 18, acceptance 4).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// The configured device id.
    #[serde(rename = "d", with = "shared_text")]
    pub device_id: Arc<str>,
    /// The pseudonymous patient id from the config (never the NHS Number).
    #[serde(rename = "p", with = "shared_text")]
    pub patient_id: Arc<str>,
    /// The patient's NHS Number at the time of the reading, if configured. Stored so a later
    /// config change cannot re-attribute an old reading. Encrypted with the rest of the row.
    #[serde(
        rename = "n",
        default,
        skip_serializing_if = "Option::is_none",
        with = "shared_text::optional"
    )]
    pub nhs_number: Option<Arc<str>>,
    /// Gateway clock when ingest received the reading.
    #[serde(rename = "t", with = "compact::timestamp")]
    pub received_at: OffsetDateTime,
    /// Whether the gateway clock was known to be synchronised at `received_at`.
    #[serde(rename = "s")]
    pub clock_synced: bool,
    #[serde(rename = "r", with = "compact::readings")]
    pub readings: Vec<Reading>,
    /// Boot id and boot-clock time at receipt (`crate::clock`): corrects `received_at` once
    /// the clock syncs. Absent in records written before issue 15 (they read as `None`).
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::clock::BootStamp>,
}

impl std::fmt::Debug for ReadingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadingRecord")
            .field("device_id", &self.device_id)
            .field("patient_id", &self.patient_id)
            .field(
                "nhs_number",
                &crate::redact::MaskedNhs(self.nhs_number.as_deref()),
            )
            .field("received_at", &self.received_at)
            .field("clock_synced", &self.clock_synced)
            .field("readings", &self.readings)
            .field("boot", &self.boot)
            .finish()
    }
}

/// `Arc<str>` through serde as a plain string (serde's own impl needs its `rc` feature, which
/// would rebuild every crate that uses serde for two fields).
mod shared_text {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }

    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(text: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
            match text {
                Some(t) => s.serialize_some(&**t),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
            Option::<String>::deserialize(d).map(|t| t.map(Arc::from))
        }
    }
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
///
/// The JSON's `subject` holds the NHS Number: `Debug` shows it scrubbed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedRecord {
    pub patient_id: String,
    pub observation: serde_json::Value,
}

impl std::fmt::Debug for DerivedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedRecord")
            .field("patient_id", &self.patient_id)
            .field(
                "observation",
                &crate::redact::ScrubbedJson(&self.observation),
            )
            .finish()
    }
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

    /// The plaintext of the row. Readings are packed (`packed.rs`, starting with its
    /// format byte); alerts and derived records are CBOR through `ciborium`: their JSON can
    /// hold `null`, which `cbor4ii`'s serde encoder writes as an empty array.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// [`Record::encode`], appended to `out` ([`Record::encode_row`] writes an alert or a
    /// derived record this way, after its nonce's room).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Record::Reading(r) => {
                packed::encode_into(r, out);
                Ok(())
            }
            Record::Alert(_) | Record::Derived(_) => {
                out.reserve(128);
                ciborium::into_writer(self, out).map_err(|e| e.to_string())
            }
        }
    }

    /// The row the ingest writer seals in place, written into `buf` from `at` on (one
    /// buffer holds every row of a batch, end to end): `room_before` bytes for the nonce,
    /// the plaintext, `room_after` bytes for the tag. Returns where the row ends: the row is
    /// `buf[at..end]`; what lies before `at` is never touched, what lies after `end` is left
    /// from earlier use and never read. A reading is packed straight into place, the buffer
    /// filled only when it grows (issue 18, acceptance 4).
    pub fn encode_row(
        &self,
        buf: &mut Vec<u8>,
        at: usize,
        room_before: usize,
        room_after: usize,
    ) -> Result<usize, String> {
        match self {
            Record::Reading(r) => {
                Ok(packed::encode_at(r, buf, at + room_before, room_after) + room_after)
            }
            Record::Alert(_) | Record::Derived(_) => {
                buf.truncate(at);
                buf.resize(at + room_before, 0);
                self.encode_into(buf)?;
                let end = buf.len() + room_after;
                buf.resize(end, 0);
                Ok(end)
            }
        }
    }

    /// The `ciborium` encoding: alerts and derived records, and every row written before
    /// (readings included, until issue 18).
    #[cfg(test)]
    fn encode_with_ciborium(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(self, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Decodes a packed reading (told by its first byte); any other row is CBOR, decoded with
    /// `cbor4ii`, 2.5x faster than `ciborium` for a reading (the publisher decodes every row
    /// it sends), and falling back to `ciborium` for what `cbor4ii` refuses:
    /// `ciborium` shrinks floats to half precision when that is lossless, and `cbor4ii` reads
    /// those only with a feature. The tests below hold `cbor4ii` to giving exactly what
    /// `ciborium` gives, or an error. The plaintext is authenticated, so a refusal is a
    /// format matter, never damage.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.first() == Some(&packed::FORMAT) {
            return packed::decode(bytes).map(Record::Reading);
        }
        match cbor4ii::serde::from_slice(bytes) {
            Ok(record) => Ok(record),
            Err(fast) => ciborium::from_reader(bytes).map_err(|e| format!("{e} (cbor4ii: {fast})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Absent, Decimal, Flag, Metric, Value};

    fn legacy(record: &Record) -> Vec<u8> {
        record.encode_with_ciborium().unwrap()
    }

    fn samples() -> Vec<Record> {
        let at = time::macros::datetime!(2026-12-03 09:30:01.250 +01:00);
        let mut records: Vec<Record> = Metric::ALL
            .iter()
            .map(|&m| {
                let r = match m.plausible_range() {
                    Some((lo, _)) => Reading::canonical(m, Decimal::from_f64(lo + 0.5).unwrap())
                        .at(at)
                        .with_flags([Flag::Motion]),
                    None => Reading::acvpu(crate::reading::Acvpu::V),
                };
                Record::Reading(ReadingRecord {
                    device_id: "ox-1".into(),
                    patient_id: "p1".into(),
                    nhs_number: Some("9434765919".into()),
                    received_at: at,
                    clock_synced: m != Metric::HeartRate,
                    readings: vec![r],
                    boot: None,
                })
            })
            .collect();
        let absent = Reading::absent(Metric::Spo2, Absent::Nres);
        records.push(Record::Reading(ReadingRecord {
            device_id: "ox-1".into(),
            patient_id: "p1".into(),
            nhs_number: None,
            received_at: at,
            clock_synced: true,
            readings: vec![absent],
            // A record written since issue 15: boot id and boot-clock time beside the wall clock.
            boot: Some(crate::clock::BootStamp {
                boot: crate::clock::BootId(u128::MAX - 7),
                since_boot_ms: 12_345_678,
            }),
        }));
        records.push(Record::Alert(AlertRecord {
            patient_id: "p1".into(),
            // 38.5 and 0.25 are exact in half precision, which ciborium used for them.
            event: serde_json::json!({"kind": "threshold", "value": 38.5, "limit": 0.25, "n": -3, "ok": true, "none": null, "list": [1, "a"]}),
        }));
        records.push(Record::Derived(DerivedRecord {
            patient_id: "p1".into(),
            observation: serde_json::json!({"resourceType": "Observation", "valueQuantity": {"value": 7}}),
        }));
        records
    }

    #[test]
    fn records_written_by_ciborium_decode_to_the_same_record() {
        for record in samples() {
            assert_eq!(Record::decode(&legacy(&record)).unwrap(), record);
        }
    }

    /// `ciborium`'s own reading of `bytes`; the fast path must match it or refuse.
    fn fast_path_agrees(bytes: &[u8]) -> Result<(), String> {
        let reference: Record = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        match cbor4ii::serde::from_slice::<Record>(bytes) {
            Ok(fast) if fast != reference => Err(format!("{fast:?} != {reference:?}")),
            _ => Ok(()),
        }
    }

    #[test]
    fn the_fast_decoder_reads_every_sample_as_ciborium_does_or_refuses() {
        for record in samples() {
            fast_path_agrees(&legacy(&record)).unwrap();
        }
    }

    #[test]
    fn readings_take_the_fast_path() {
        for record in samples()
            .into_iter()
            .filter(|r| matches!(r, Record::Reading(_)))
        {
            let fast: Record = cbor4ii::serde::from_slice(&legacy(&record)).unwrap();
            assert_eq!(fast, record);
        }
    }

    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            prop_oneof![
                Just(0.5f64),
                Just(38.5),
                Just(-2.0),
                Just(65504.0),
                Just(1e-7)
            ]
            .prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn reading_record() -> impl proptest::strategy::Strategy<Value = Record> {
        use crate::reading::{Acvpu, Unit};
        use proptest::prelude::*;
        use proptest::sample::select;
        let value = prop_oneof![
            (any::<i64>(), any::<i8>()).prop_map(|(m, e)| Value::Number(Decimal::new(m, e))),
            select(vec![Acvpu::A, Acvpu::C, Acvpu::V, Acvpu::P, Acvpu::U]).prop_map(Value::Code),
            select(vec![
                Absent::Nan,
                Absent::Nres,
                Absent::PosInf,
                Absent::NegInf,
                Absent::Missing
            ])
            .prop_map(Value::Absent),
        ];
        // Every unit some metric accepts (the record does not check the pairing).
        let mut units: Vec<Unit> = Metric::ALL
            .iter()
            .flat_map(|m| m.accepted_units().iter().copied())
            .collect();
        units.sort_by_key(|u| format!("{u:?}"));
        units.dedup();
        let unit = proptest::option::of(select(units));
        let time = (
            -62_000_000_000i64..250_000_000_000,
            0u32..1_000_000_000,
            -50_400i32..50_400,
        )
            .prop_filter_map("representable", |(s, ns, off)| {
                let t = time::OffsetDateTime::from_unix_timestamp(s).ok()?;
                let t = t.replace_nanosecond(ns).ok()?;
                Some(t.to_offset(time::UtcOffset::from_whole_seconds(off).ok()?))
            });
        let flags = proptest::collection::vec(
            select(vec![
                Flag::SensorOff,
                Flag::Motion,
                Flag::LowBattery,
                Flag::TimeCorrected,
            ]),
            0..3,
        );
        let reading = (
            select(Metric::ALL.to_vec()),
            value,
            unit,
            proptest::option::of(time.clone()),
            flags,
        )
            .prop_map(|(metric, value, unit, device_time, flags)| Reading {
                metric,
                value,
                unit,
                device_time,
                flags,
            });
        (
            ".{0,16}",
            proptest::option::of("[0-9]{10}"),
            time,
            any::<bool>(),
            proptest::collection::vec(reading, 0..4),
            proptest::option::of(any::<(u64, u64, u64)>()),
        )
            .prop_map(
                |(device_id, nhs_number, received_at, clock_synced, readings, boot)| {
                    Record::Reading(ReadingRecord {
                        device_id: device_id.into(),
                        patient_id: "p1".into(),
                        nhs_number: nhs_number.map(Into::into),
                        received_at,
                        clock_synced,
                        readings,
                        boot: boot.map(crate::clock::BootStamp::from),
                    })
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn readings_are_stored_packed_and_read_back_exactly(record in reading_record()) {
            let bytes = record.encode().unwrap();
            proptest::prop_assert_eq!(bytes[0], packed::FORMAT);
            proptest::prop_assert_eq!(Record::decode(&bytes).unwrap(), record);
        }

        #[test]
        fn readings_stored_as_cbor_before_the_packed_form_still_read_back(record in reading_record()) {
            proptest::prop_assert_eq!(Record::decode(&legacy(&record)).unwrap(), record);
        }

        #[test]
        fn a_packed_reading_cut_short_or_extended_is_an_error_not_a_panic(record in reading_record()) {
            let bytes = record.encode().unwrap();
            for end in 0..bytes.len() {
                proptest::prop_assert!(Record::decode(&bytes[..end]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            proptest::prop_assert!(Record::decode(&longer).is_err());
        }

        #[test]
        fn any_alert_event_decodes_to_what_was_stored(event in json()) {
            let record = Record::Alert(AlertRecord { patient_id: "p1".into(), event });
            let bytes = record.encode().unwrap();
            proptest::prop_assert_eq!(Record::decode(&bytes).unwrap(), record);
            proptest::prop_assert!(fast_path_agrees(&bytes).is_ok());
        }
    }

    /// An oximeter reading as the simulator and most serial devices give it (device time,
    /// unit, boot stamp, NHS Number): packed, it is 55 % of its CBOR size or less (issue 18: the row size is
    /// the bytes written to the SD card per reading).
    #[test]
    fn a_packed_oximeter_reading_is_at_most_55_percent_of_its_cbor_size() {
        let at = time::macros::datetime!(2026-12-03 09:30:01.250_123_456 UTC);
        let record = Record::Reading(ReadingRecord {
            device_id: "sim-0".into(),
            patient_id: "p1".into(),
            nhs_number: Some("9434765919".into()),
            received_at: at,
            clock_synced: true,
            readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(97))
                .at(at - time::Duration::milliseconds(40))],
            boot: Some(crate::clock::BootStamp {
                boot: crate::clock::BootId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                since_boot_ms: 86_400_000,
            }),
        });
        let packed = record.encode().unwrap();
        let cbor = legacy(&record);
        assert!(
            packed.len() * 100 <= cbor.len() * 55,
            "packed {} bytes, CBOR {}",
            packed.len(),
            cbor.len()
        );
        assert_eq!(Record::decode(&packed).unwrap(), record);
    }

    /// The ingest writer's buffer, reused row after row without being cleared: each row is
    /// the room before, exactly its own plaintext, and the room after, whatever a longer row
    /// left behind it.
    #[test]
    fn rows_written_over_one_buffer_each_hold_exactly_their_own_plaintext() {
        let mut buffer = Vec::new();
        for record in &mixed_records() {
            let len = record.encode_row(&mut buffer, 0, 12, 16).unwrap();
            let plaintext = record.encode().unwrap();
            assert_eq!(len, 12 + plaintext.len() + 16, "{record:?}");
            assert_eq!(&buffer[12..len - 16], &plaintext[..], "{record:?}");
            assert!(buffer.len() >= len);
        }
    }

    /// A batch's rows written end to end into one buffer (the writer seals them all, then
    /// inserts them all): each holds its own plaintext, and writing one never changes the
    /// rows before it, whatever the buffer held from an earlier, longer batch.
    #[test]
    fn rows_written_end_to_end_leave_every_earlier_row_as_it_was() {
        let records = mixed_records();
        let mut buffer = vec![0xEE; 64 * 1024]; // what an earlier batch left
        for round in 0..2 {
            let mut rows = Vec::new();
            let mut at = 0;
            for record in &records {
                let end = record.encode_row(&mut buffer, at, 12, 16).unwrap();
                let plaintext = record.encode().unwrap();
                assert_eq!(&buffer[at + 12..end - 16], &plaintext[..], "{record:?}");
                // The sealing step, in place: the row's bytes are final from here on.
                buffer[at..end].fill(rows.len() as u8);
                rows.push((at, end, plaintext));
                at = end;
            }
            for (n, (from, end, plaintext)) in rows.iter().enumerate() {
                assert_eq!(
                    end - from,
                    12 + plaintext.len() + 16,
                    "round {round}, row {n}"
                );
                assert!(
                    buffer[*from..*end].iter().all(|&b| b == n as u8),
                    "round {round}: row {n} was overwritten by a later one"
                );
            }
        }
    }

    /// Long and short rows of every kind, in an order where a short row follows a long one.
    fn mixed_records() -> Vec<Record> {
        let mut records = samples();
        records.reverse(); // the longest rows (alerts, many readings) first, then short ones
        records.push(Record::Alert(AlertRecord {
            patient_id: "p1".into(),
            event: serde_json::json!({"alert_id": "a1"}),
        }));
        records.extend(samples());
        records
    }

    #[test]
    fn bytes_that_are_not_a_record_are_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff",
            b"\xa1\x61x\x01",
            &[0x9f; 64],
            b"\x01",
            &[0x01, 0x00, 0x7f],
        ] {
            assert!(Record::decode(bytes).is_err(), "{bytes:?}");
        }
    }
}
