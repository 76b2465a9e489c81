//! Reading -> FHIR R4 UK Core Observation JSON (and the NEWS2 total score Observation).
//!
//! What it does: [`observation`] turns one [`Reading`], or one blood-pressure set (systolic with
//! an optional diastolic), into one Observation shaped to the UK Core vital-sign profiles of the
//! STU3 draft sequence (clinical.md §1): profile in `meta.profile`, `status` `final`, one
//! `vital-signs` category where the profile requires it, exactly one LOINC and at least one SNOMED
//! CT coding for vital signs, UCUM `valueQuantity` in the unit the profile fixes, `subject` by
//! NHS Number identifier, `effectiveDateTime` with its UTC offset, the device by identifier, the
//! UK Core recording-setting extension, and a deterministic id ([`observation_id`], UUID v5 of
//! gateway, device, metric or panel and time) so a redelivery is idempotent on the platform.
//! [`group_for_fhir`] splits one decoded frame into the groups that become one Observation each.
//! [`news2_observation`] builds the `UKCore-Observation-EarlyWarningTotalScore`.
//!
//! What it deliberately does not do: no IO, no clock (the measurement time is an argument), no
//! Bundle, no Patient or Device resources (references are logical, by identifier; clinical.md
//! §1.5, §1.6), no NEWS2 arithmetic (it only checks the score it is given is self-consistent).
//! Only this module knows FHIR JSON. Every code and fixed string lives in [`codes`] as a table.
//!
//! Decisions (each one also noted where it is implemented):
//! - **Units.** The Observation carries the unit the UK Core profile fixes (our canonical unit).
//!   A reading in another accepted unit (`[degF]`, `[lb_av]`, `kPa`, `m`, `[in_i]`, `mg/dL`) is
//!   converted ([`quantity`]) and the device's original value and unit go into `note`, because a
//!   profile we claim but break is a reading the platform may reject, i.e. a lost reading.
//! - **Absent values** never become numbers: `dataAbsentReason` (data-absent-reason code system)
//!   NaN -> `not-a-number`, +INF -> `positive-infinity`, −INF -> `negative-infinity`, NRes (outside
//!   the device's range) -> `error`, missing marker (e.g. no finger) -> `unknown`, each with a
//!   `text` saying what the device sent.
//! - **Device flags** (`sensor_off`, `motion`, ...) go into one `note` ("vitalgate device flags:
//!   low_perfusion, motion"): valid on every profile (InspiredOxygen forbids `interpretation`,
//!   which in R4 is about the value's normality, not signal quality) and visible to clinicians.
//! - **Hub clock not synchronised at receipt** (no RTC): a `note` starting `vitalgate hub
//!   clock:`, with `effectiveDateTime` corrected from the boot clock when the boot synced
//!   (the recorded time in the note, the id unchanged); see [`clock`].
//! - **No NHS Number configured**: `subject.identifier` uses [`codes::GATEWAY_PATIENT_SYSTEM`]
//!   with the gateway id; the platform resolves the patient from its enrolment of that gateway.
//! - **Mean BP** is its own `UKCore-Observation-VitalSigns` Observation (LOINC 8478-0): the UK
//!   Core BP panel slicing is closed on `code.text` and has no mean slice (clinical.md §1.3).
//! - **Pulse rate** uses the HeartRate profile with SNOMED 78564009 Pulse rate; **perfusion
//!   index** has no UK Core profile and no verified SNOMED/LOINC code, so it claims the generic
//!   `UKCore-Observation` with a local code; **BMI** and **height** use the UK Core BMI and
//!   BodyHeight profiles (height in `cm`, which both UK Core and base R4 accept, §1.4);
//!   **inspired oxygen** follows §1.7 (flow 0 -> "Breathing room air" without value).

mod clock;
pub mod codes;
mod doc;
mod news2;
mod quantity;
mod template;

pub use clock::{observation_json_with_clock, observation_with_clock, HubClock, HUB_CLOCK_NOTE};
pub use news2::{news2_observation, News2Score, News2SubScores, Spo2Scale};
pub use template::Template;

use std::borrow::Cow;

use serde_json::{Number, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::nhs_number::NhsNumber;
use crate::reading::{
    Absent, Decimal, Flag, InvalidReading, Metric, Reading, Unit, Value as RValue,
};

use codes::{Code, MetricCodes};
use doc::CodeableConcept;

/// Where the measurement was taken (UK Core `Extension-UKCore-RecordingSetting`, clinical.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingSetting {
    /// At home (a home hub).
    Residential,
    /// On a ward (a bedside gateway).
    Clinical,
}

/// Everything an Observation needs besides the readings.
#[derive(Debug, Clone)]
pub struct ObservationContext<'a> {
    pub gateway_id: &'a str,
    /// The device's stable identifier (serial number or config id), unique within the gateway.
    pub device_id: &'a str,
    pub device_display: Option<&'a str>,
    /// `None`: the subject is identified by gateway ([`codes::GATEWAY_PATIENT_SYSTEM`]).
    pub nhs_number: Option<&'a NhsNumber>,
    pub setting: RecordingSetting,
    /// When the measurement was taken, with its UTC offset.
    pub effective: OffsetDateTime,
}

/// What an Observation is about, for its deterministic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObservationKey {
    Metric(Metric),
    /// Systolic (+ diastolic) blood pressure panel.
    BloodPressurePanel,
    /// NEWS2 total score.
    News2,
}

impl ObservationKey {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservationKey::Metric(m) => m.as_str(),
            ObservationKey::BloodPressurePanel => "blood_pressure_panel",
            ObservationKey::News2 => "news2_total_score",
        }
    }
}

/// UUID v5 namespace of Observation ids: `uuid5(NAMESPACE_URL,
/// "https://github.com/vitalgate/vitalgate/fhir/observation-id")`. Never change it: every id the
/// platform has already stored was derived from it, and a new namespace would turn redeliveries
/// into duplicates.
pub const OBSERVATION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x2fddebdb_1235_52ad_ab35_616cf2add1e1);

/// Deterministic Observation id: UUID v5 of gateway, device, key and the instant (offset does not
/// matter: 10:00+01:00 and 09:00Z are the same measurement). Fields are length-prefixed so no two
/// different tuples share a name.
pub fn observation_id(
    gateway: &str,
    device: &str,
    key: ObservationKey,
    time: OffsetDateTime,
) -> Uuid {
    let name = format!(
        "{}:{gateway}|{}:{device}|{}|{}",
        gateway.len(),
        device.len(),
        key.as_str(),
        time.unix_timestamp_nanos()
    );
    Uuid::new_v5(&OBSERVATION_ID_NAMESPACE, name.as_bytes())
}

/// Why readings could not become an Observation. Each message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirError {
    #[error("no readings given: an Observation needs one reading or one blood-pressure set")]
    NoReadings,
    #[error("readings {metrics:?} do not form one Observation: pass one reading, or one systolic_bp with at most one diastolic_bp; split frames with fhir::group_for_fhir (mean_bp always goes alone: the UK Core BP panel slicing is closed, clinical.md §1.3)")]
    NotOneObservation { metrics: Vec<Metric> },
    #[error("reading refused before FHIR mapping: {0}")]
    InvalidReading(#[from] InvalidReading),
    #[error("value {value} is too large or too precise to write as a FHIR decimal; this is a decoding fault")]
    ValueOutOfRange { value: Decimal },
    #[error("no conversion from {from} to {to} is defined; add one in fhir/quantity.rs or refuse the unit at ingest")]
    NoConversion { from: Unit, to: Unit },
    #[error("effective time {0} cannot be a FHIR dateTime (years 0001-9999, UTC offset within ±14:00 in whole minutes); check the gateway clock and the device time correction")]
    EffectiveTime(String),
    #[error("NEWS2 {parameter} sub-score {score} is impossible (allowed: {allowed:?}, RCP NEWS2 Chart 1, clinical.md §2.1)")]
    News2SubScore {
        parameter: &'static str,
        score: u8,
        allowed: &'static [u8],
    },
    #[error("NEWS2 total {total} is not the sum of its sub-scores ({sum}); the score was built wrongly and must not be sent")]
    News2Total { total: u8, sum: u32 },
    #[error("cannot serialize the Observation as JSON: {0}; this is a bug, please report it")]
    Serialize(String),
}

/// One Observation for `readings` (see the module docs). Pure: same input, same JSON.
pub fn observation(ctx: &ObservationContext, readings: &[Reading]) -> Result<Value, FhirError> {
    to_value(&build(ctx, readings)?)
}

/// [`observation`] as the JSON bytes the platform receives, serialized without building a
/// `Value` first (the publisher's hot path; the bytes are identical, see `doc.rs`).
pub fn observation_json(
    ctx: &ObservationContext,
    readings: &[Reading],
) -> Result<Vec<u8>, FhirError> {
    let doc = build(ctx, readings)?;
    let mut out = Vec::with_capacity(1536);
    serde_json::to_writer(&mut out, &doc).map_err(|e| FhirError::Serialize(e.to_string()))?;
    Ok(out)
}

fn build<'a>(
    ctx: &ObservationContext<'a>,
    readings: &[Reading],
) -> Result<doc::Observation<'a>, FhirError> {
    for r in readings {
        r.validate()?;
    }
    match readings {
        [] => Err(FhirError::NoReadings),
        [r] if r.metric != Metric::SystolicBp => single(ctx, r),
        _ => bp_panel(ctx, readings),
    }
}

pub(crate) fn to_value(doc: &doc::Observation) -> Result<Value, FhirError> {
    serde_json::to_value(doc).map_err(|e| FhirError::Serialize(e.to_string()))
}

/// Splits one frame's readings into the groups that become one Observation each: the k-th
/// systolic with the k-th diastolic (a BP panel, placed where the systolic was), everything
/// else (including mean BP and unpaired diastolics) alone. Every reading is in exactly one group.
pub fn group_for_fhir(readings: &[Reading]) -> Vec<Vec<Reading>> {
    let diastolics: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.metric == Metric::DiastolicBp)
        .collect();
    let systolic_count = readings
        .iter()
        .filter(|r| r.metric == Metric::SystolicBp)
        .count();
    let (mut sys_seen, mut dia_seen) = (0usize, 0usize);
    let mut groups = Vec::new();
    for r in readings {
        match r.metric {
            Metric::SystolicBp => {
                let mut g = vec![r.clone()];
                if let Some(d) = diastolics.get(sys_seen) {
                    g.push((*d).clone());
                }
                sys_seen += 1;
                groups.push(g);
            }
            Metric::DiastolicBp => {
                if dia_seen >= systolic_count {
                    groups.push(vec![r.clone()]);
                }
                dia_seen += 1;
            }
            _ => groups.push(vec![r.clone()]),
        }
    }
    groups
}

fn single<'a>(
    ctx: &ObservationContext<'a>,
    r: &Reading,
) -> Result<doc::Observation<'a>, FhirError> {
    let mut notes = Vec::new();
    let mut value_concept = None;
    let mut value_quantity = None;
    let codes = match (r.metric, r.value) {
        (Metric::Acvpu, RValue::Code(c)) => {
            let v = codes::acvpu_value(c);
            value_concept = Some(CodeableConcept::new(&[v], Some(v.display)));
            codes::metric(Metric::Acvpu)
        }
        (Metric::InspiredOxygen, RValue::Absent(_)) => codes::INSPIRED_OXYGEN_UNKNOWN,
        (Metric::InspiredOxygen, RValue::Number(d)) if d.mantissa == 0 => {
            codes::inspired_oxygen(false)
        }
        (m, RValue::Number(d)) => {
            value_quantity = Some(quantity_for(m, d, r.unit, &mut notes)?);
            codes::metric(m)
        }
        (m, _) => codes::metric(m),
    };
    let mut obs = skeleton(ctx, &codes, ObservationKey::Metric(r.metric))?;
    obs.value_codeable_concept = value_concept;
    obs.value_quantity = value_quantity;
    if let (None, None, RValue::Absent(a)) =
        (&obs.value_codeable_concept, &obs.value_quantity, r.value)
    {
        obs.data_absent_reason = Some(data_absent_reason(a));
    }
    push_flags(&mut notes, &r.flags);
    Ok(finish(obs, notes))
}

fn bp_panel<'a>(
    ctx: &ObservationContext<'a>,
    readings: &[Reading],
) -> Result<doc::Observation<'a>, FhirError> {
    let count = |m| readings.iter().filter(|r| r.metric == m).count();
    let others = readings
        .iter()
        .any(|r| !matches!(r.metric, Metric::SystolicBp | Metric::DiastolicBp));
    if count(Metric::SystolicBp) != 1 || count(Metric::DiastolicBp) > 1 || others {
        return Err(FhirError::NotOneObservation {
            metrics: readings.iter().map(|r| r.metric).collect(),
        });
    }
    let mut ordered: Vec<&Reading> = readings.iter().collect();
    ordered.sort_by_key(|r| r.metric != Metric::SystolicBp);
    let mut notes = Vec::new();
    let mut flags: Vec<Flag> = Vec::new();
    let mut components = Vec::new();
    for r in ordered {
        let Some((codings, text)) = codes::bp_component(r.metric) else {
            continue;
        };
        let mut c = doc::Component {
            code: CodeableConcept::new(codings, Some(text)),
            data_absent_reason: None,
            value_quantity: None,
        };
        match r.value {
            RValue::Number(d) => {
                c.value_quantity = Some(quantity_for(r.metric, d, r.unit, &mut notes)?);
            }
            RValue::Absent(a) => c.data_absent_reason = Some(data_absent_reason(a)),
            RValue::Code(_) => {
                return Err(InvalidReading::UnexpectedCode { metric: r.metric }.into())
            }
        }
        components.push(c);
        flags.extend(r.flags.iter().copied());
    }
    let mut obs = skeleton(ctx, &codes::BP_PANEL, ObservationKey::BloodPressurePanel)?;
    obs.component = components;
    flags.sort();
    flags.dedup();
    push_flags(&mut notes, &flags);
    Ok(finish(obs, notes))
}

/// The parts every Observation shares: id, identifier, profile, extension, status, category,
/// code, subject, effective, device.
fn skeleton<'a>(
    ctx: &ObservationContext<'a>,
    codes: &MetricCodes,
    key: ObservationKey,
) -> Result<doc::Observation<'a>, FhirError> {
    let code = doc::cached(doc::PartKey::code(codes), || {
        CodeableConcept::new(codes.codings, Some(codes.text))
    })?;
    let mut obs = common(ctx, codes.profile, codes.category, key, code)?;
    obs.device = Some(doc::DeviceRef {
        display: ctx.device_display,
        identifier: doc::Identifier {
            system: codes::DEVICE_SYSTEM,
            value: Cow::Owned(format!("{}/{}", ctx.gateway_id, ctx.device_id)),
        },
        kind: "Device",
    });
    Ok(obs)
}

/// Fields shared with the NEWS2 Observation (which has no device).
pub(crate) fn common<'a>(
    ctx: &ObservationContext<'a>,
    profile: &'static str,
    category: codes::Category,
    key: ObservationKey,
    code: doc::Part<CodeableConcept<'a>>,
) -> Result<doc::Observation<'a>, FhirError> {
    let id = observation_id(ctx.gateway_id, ctx.device_id, key, ctx.effective).to_string();
    let subject = match ctx.nhs_number {
        Some(n) => doc::Identifier {
            system: codes::NHS_NUMBER_SYSTEM,
            value: Cow::Borrowed(n.expose()),
        },
        None => doc::Identifier {
            system: codes::GATEWAY_PATIENT_SYSTEM,
            value: Cow::Borrowed(ctx.gateway_id),
        },
    };
    let setting = ctx.setting;
    Ok(doc::Observation {
        category: doc::cached(doc::PartKey::Category(category), || {
            [CodeableConcept::new(&[category.code()], None)]
        })?,
        code,
        component: Vec::new(),
        data_absent_reason: None,
        derived_from: Vec::new(),
        device: None,
        effective_date_time: fhir_date_time(ctx.effective)?,
        extension: doc::cached(doc::PartKey::Setting(setting), || {
            let (code, display) = match setting {
                RecordingSetting::Residential => ("residential", "Residential"),
                RecordingSetting::Clinical => ("clinical", "Clinical"),
            };
            let coding = Code {
                system: codes::RECORDING_SETTING_SYSTEM,
                code,
                display,
            };
            [doc::Extension {
                url: codes::RECORDING_SETTING_URL,
                value_codeable_concept: CodeableConcept::new(&[coding], None),
            }]
        })?,
        identifier: [doc::Identifier {
            system: codes::UUID_IDENTIFIER_SYSTEM,
            value: Cow::Owned(id.clone()),
        }],
        id,
        meta: doc::cached(doc::PartKey::Profile(doc::addr(profile)), || doc::Meta {
            profile: [profile],
        })?,
        note: Vec::new(),
        resource_type: "Observation",
        status: "final",
        subject: doc::SubjectRef {
            identifier: subject,
            kind: "Patient",
        },
        value_codeable_concept: None,
        value_quantity: None,
    })
}

/// RFC 3339 with offset, restricted to what the FHIR `dateTime` pattern accepts.
fn fhir_date_time(t: OffsetDateTime) -> Result<String, FhirError> {
    let bad = || FhirError::EffectiveTime(format!("{t}"));
    let offset_ok = t.offset().whole_seconds().unsigned_abs() <= 14 * 3600
        && t.offset().seconds_past_minute() == 0;
    if !(1..=9999).contains(&t.year()) || !offset_ok {
        return Err(bad());
    }
    t.format(&Rfc3339).map_err(|_| bad())
}

/// UCUM `valueQuantity` in the metric's canonical (UK Core) unit, converting if needed.
fn quantity_for(
    metric: Metric,
    value: Decimal,
    unit: Option<Unit>,
    notes: &mut Vec<String>,
) -> Result<doc::Quantity, FhirError> {
    let target = metric
        .canonical_unit()
        .ok_or(InvalidReading::UnexpectedCode { metric })?;
    let from = unit.ok_or(InvalidReading::MissingUnit { metric })?;
    let converted = quantity::convert(value, from, target)?;
    if from != target {
        notes.push(format!(
            "Device reported {value} {from}; converted to {target} as the UK Core profile requires"
        ));
    }
    Ok(doc::Quantity {
        code: target.ucum(),
        system: codes::UCUM,
        unit: codes::unit_display(target),
        value: quantity::json_number(converted)?,
    })
}

pub(crate) fn quantity_score(score: u8) -> doc::Quantity {
    doc::Quantity {
        code: "{ScoreOf}",
        system: codes::UCUM,
        unit: "score of",
        value: Number::from(score),
    }
}

/// `dataAbsentReason` for a special value (module docs, "Absent values").
fn data_absent_reason(a: Absent) -> CodeableConcept<'static> {
    let (code, display, text) = match a {
        Absent::Nan => (
            "not-a-number",
            "Not a Number (NaN)",
            "The device reported no valid value (NaN)",
        ),
        Absent::PosInf => (
            "positive-infinity",
            "Positive Infinity (PINF)",
            "The device reported +infinity",
        ),
        Absent::NegInf => (
            "negative-infinity",
            "Negative Infinity (NINF)",
            "The device reported -infinity",
        ),
        Absent::Nres => (
            "error",
            "Error",
            "The value was outside the device's measurement range (NRes)",
        ),
        Absent::Missing => (
            "unknown",
            "Unknown",
            "The device sent its 'no measurement' marker (e.g. no finger in the probe)",
        ),
    };
    let coding = Code {
        system: codes::DATA_ABSENT_REASON,
        code,
        display,
    };
    CodeableConcept::new(&[coding], Some(text))
}

fn push_flags(notes: &mut Vec<String>, flags: &[Flag]) {
    let names: Vec<String> = flags
        .iter()
        .filter_map(|f| serde_json::to_value(f).ok())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if !names.is_empty() {
        notes.push(format!("vitalgate device flags: {}", names.join(", ")));
    }
}

fn finish<'a>(mut obs: doc::Observation<'a>, notes: Vec<String>) -> doc::Observation<'a> {
    obs.note = notes.into_iter().map(|text| doc::Note { text }).collect();
    obs
}

#[cfg(test)]
mod tests;
