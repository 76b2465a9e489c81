//! ORU^R01 (IHE PCD-01) to readings: the header the ACK needs, the bed and device the binding
//! needs, and one [`Row`] per OBX saying what became of it.
//!
//! Structure (segments, fields, repetitions, components) is split by the `hl7-parser` crate;
//! what the fields mean is decided here (protocols.md §3.2):
//! - OBX-2 empty is a containment row (MDS/VMD/CHAN), never a reading;
//! - OBX-11 other than `R`/`F`/`C`/`P` (e.g. `X`, "cannot be obtained"), or an empty OBX-5,
//!   gives no reading;
//! - demonstration or test data (MSH-11 `D`/`T`, OBX-8 `DEMO`/`D`/`T`) rejects the whole
//!   message, so a monitor left in demo mode can never put numbers on a patient's record;
//! - the time is OBX-14, else the enclosing OBR-7, else MSH-7 (NIBP's OBX-14 is the last cuff
//!   cycle, older than MSH-7), read in the monitor's zone;
//! - the code (OBX-3) and unit (OBX-6) must both be understood and agree, or the row is
//!   skipped with the reason: a value is never stored under a guessed unit.

use hl7_parser::message::{Field, Segment, Separators};
use hl7_parser::Message;
use time::OffsetDateTime;

use super::codes::{self, CodeMeaning};
use super::escape::unescape;
use super::time::{parse_timestamp, MonitorZone};
use crate::reading::{parse_exact, Metric, Reading};

/// MSH fields the ACK and the binding need (raw, as sent, components included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub field_separator: char,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub message_time: String,
    /// MSH-9.1 and MSH-9.2, e.g. `ORU` and `R01`.
    pub message_type: String,
    pub trigger: String,
    pub control_id: String,
    /// MSH-11.1: `P` production, `D` debugging, `T` training.
    pub processing_id: String,
    pub version: String,
    /// MSH-15 / MSH-16: `AL`, `NE`, `ER`, `SU` or empty.
    pub accept_ack: String,
    pub application_ack: String,
}

/// Why a message was not taken; the ACK code and ERR segment follow from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an HL7 message at all (no MSH, broken separators).
    #[error("not an HL7 v2 message: {0}")]
    NotHl7(String),
    /// Parsed, but a field is wrong; `at` names it (e.g. `OBX[3]-14`).
    #[error("malformed message: {at}: {reason}")]
    Malformed { at: String, reason: String },
    /// A message type or event vitalgate does not take (only ORU^R01).
    #[error("unsupported message: {0} (only ORU^R01 is accepted)")]
    UnsupportedEvent(String),
    /// Demonstration or test data.
    #[error("demonstration or test data ({0}): never stored as a patient reading")]
    DemoData(String),
}

impl Refusal {
    /// The HL7 table 0357 error code for the ERR segment.
    pub fn hl7_error_code(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::NotHl7(_) => ("100", "Segment sequence error"),
            Refusal::Malformed { .. } => ("102", "Data type error"),
            Refusal::UnsupportedEvent(_) => ("201", "Unsupported event code"),
            Refusal::DemoData(_) => ("202", "Unsupported processing id"),
        }
    }

    /// Whether the sender should not retry (AR) rather than may retry (AE).
    pub fn is_reject(&self) -> bool {
        !matches!(self, Refusal::Malformed { .. })
    }
}

/// What became of one OBX row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// A reading (its time is `device_time`).
    Reading(Reading),
    /// A containment row (MDS, VMD, channel): structure, not a measurement.
    Containment,
    /// No value (OBX-11 `X`, another non-result status, or an empty OBX-5).
    NoValue,
    /// Not turned into a reading, with the reason (unknown code, unit, type).
    Skipped(String),
}

/// One OBX row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based OBX position in the message (for messages and logs).
    pub index: usize,
    /// OBX-4, the containment path `MDS.VMD.CHAN.METRIC`.
    pub containment: String,
    /// OBX-3.1 as sent.
    pub code: String,
    /// OBX-18.1 when it is an EUI-64.
    pub equipment: Option<String>,
    pub outcome: RowOutcome,
}

impl Row {
    /// The channel this row's reading belongs to: the MDS and VMD of OBX-4 (`1.3` of
    /// `1.3.1.150456`), so two respiration rates of one monitor (impedance and capnography)
    /// stay two devices and keep distinct Observation ids.
    pub fn channel(&self) -> String {
        let mut parts = self.containment.split('.');
        match (parts.next(), parts.next()) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => format!("{a}.{b}"),
            (Some(a), _) if !a.is_empty() => a.to_string(),
            _ => "0".to_string(),
        }
    }
}

/// A decoded ORU^R01. Its `Debug` shows how many PID-3 identifiers it holds, never them.
#[derive(Clone, PartialEq)]
pub struct Oru {
    pub header: Header,
    /// PV1-3 as sent (`3West^301^1`), the bed.
    pub location: Option<String>,
    /// MSH-3's EUI-64 (component 2 when component 3 is `EUI-64`).
    pub device: Option<String>,
    /// PID-3 identifiers (CX.1 of each repetition). Patient data: never logged.
    pub patient_ids: Vec<String>,
    pub rows: Vec<Row>,
}

impl std::fmt::Debug for Oru {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oru")
            .field("header", &self.header)
            .field("location", &self.location)
            .field("device", &self.device)
            .field(
                "patient_ids",
                &format_args!("[{} redacted]", self.patient_ids.len()),
            )
            .field("rows", &self.rows)
            .finish()
    }
}

impl Oru {
    /// The readings, with the channel each belongs to.
    pub fn readings(&self) -> impl Iterator<Item = (String, &Reading)> + '_ {
        self.rows.iter().filter_map(|r| match &r.outcome {
            RowOutcome::Reading(x) => Some((r.channel(), x)),
            _ => None,
        })
    }

    /// Every EUI-64 the message names (MSH-3, then each OBX-18), for binding by device.
    pub fn equipment(&self) -> impl Iterator<Item = &str> + '_ {
        self.device
            .iter()
            .map(String::as_str)
            .chain(self.rows.iter().filter_map(|r| r.equipment.as_deref()))
    }
}

/// Segment terminators normalised to CR (monitors and simulators send LF or CRLF too), and
/// empty lines removed (a blank line is not a segment; `hl7-parser` would stop there).
fn normalise(text: &str) -> String {
    let t = text.replace("\r\n", "\r").replace('\n', "\r");
    t.split('\r')
        .filter(|seg| !seg.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\r")
}

fn raw<'a>(seg: &'a Segment<'_>, n: usize) -> &'a str {
    seg.field(n).map(|f| f.raw_value()).unwrap_or("")
}

fn component<'a>(field: Option<&'a Field<'_>>, n: usize) -> &'a str {
    field
        .and_then(|f| f.component(n))
        .map(|c| c.raw_value())
        .unwrap_or("")
}

fn is_eui64(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the MSH only: enough to answer any message that has one, even one refused later.
pub fn header(text: &str) -> Result<Header, Refusal> {
    let text = normalise(text);
    let first = text.split('\r').next().unwrap_or("");
    if !first.starts_with("MSH") || first.len() < 8 {
        return Err(Refusal::NotHl7(
            "the message does not start with an MSH segment".into(),
        ));
    }
    let msg = Message::parse(first).map_err(|e| Refusal::NotHl7(format!("MSH: {e}")))?;
    let msh = msg
        .segment("MSH")
        .ok_or_else(|| Refusal::NotHl7("no MSH segment".into()))?;
    header_of(msh, &msg.separators)
}

fn header_of(msh: &Segment<'_>, sep: &Separators) -> Result<Header, Refusal> {
    let h = Header {
        field_separator: sep.field,
        sending_application: raw(msh, 3).to_string(),
        sending_facility: raw(msh, 4).to_string(),
        receiving_application: raw(msh, 5).to_string(),
        receiving_facility: raw(msh, 6).to_string(),
        message_time: raw(msh, 7).to_string(),
        message_type: component(msh.field(9), 1).to_string(),
        trigger: component(msh.field(9), 2).to_string(),
        control_id: raw(msh, 10).to_string(),
        processing_id: component(msh.field(11), 1).to_string(),
        version: component(msh.field(12), 1).to_string(),
        accept_ack: raw(msh, 15).to_string(),
        application_ack: raw(msh, 16).to_string(),
    };
    if h.control_id.is_empty() {
        return Err(Refusal::Malformed {
            at: "MSH-10".into(),
            reason: "the message control id is empty".into(),
        });
    }
    Ok(h)
}

/// Decodes an ORU^R01; `zone` reads local timestamps.
pub fn decode(text: &str, zone: MonitorZone) -> Result<Oru, Refusal> {
    let text = normalise(text);
    if !text.starts_with("MSH") {
        return Err(Refusal::NotHl7(
            "the message does not start with an MSH segment".into(),
        ));
    }
    let msg = Message::parse(&text).map_err(|e| Refusal::NotHl7(e.to_string()))?;
    // hl7-parser returns what it could read and stops silently at a segment it cannot
    // parse: a message it did not read to the end is refused, never half-stored.
    let parsed = msg.segments().count();
    if parsed != text.split('\r').count() {
        return Err(Refusal::Malformed {
            at: format!("segment {}", parsed + 1),
            reason: "cannot be parsed (a segment is a 3-character name, then fields)".into(),
        });
    }
    let sep = msg.separators;
    let msh = msg
        .segment("MSH")
        .ok_or_else(|| Refusal::NotHl7("no MSH segment".into()))?;
    let header = header_of(msh, &sep)?;
    if header.message_type != "ORU" || header.trigger != "R01" {
        return Err(Refusal::UnsupportedEvent(format!(
            "{}^{}",
            header.message_type, header.trigger
        )));
    }
    if matches!(header.processing_id.as_str(), "D" | "T") {
        return Err(Refusal::DemoData(format!(
            "MSH-11 = {}",
            header.processing_id
        )));
    }
    let device = {
        let f = msh.field(3);
        let (id, kind) = (component(f, 2), component(f, 3));
        (kind.eq_ignore_ascii_case("EUI-64") && is_eui64(id)).then(|| id.to_ascii_uppercase())
    };
    let msh_time = header.message_time.clone();

    let mut location = None;
    let mut patient_ids = Vec::new();
    let mut obr_time: Option<String> = None;
    let mut rows = Vec::new();
    let mut obx_index = 0;
    for seg in msg.segments() {
        match seg.name {
            "PID" => {
                if let Some(f) = seg.field(3) {
                    for rep in f.repeats() {
                        let id = rep.component(1).map(|c| c.raw_value()).unwrap_or("");
                        if !id.is_empty() {
                            patient_ids.push(unescape(id, &sep));
                        }
                    }
                }
            }
            "PV1" => {
                let l = raw(seg, 3);
                if !l.is_empty() {
                    location = Some(l.to_string());
                }
            }
            "OBR" => {
                let t = raw(seg, 7);
                obr_time = (!t.is_empty()).then(|| t.to_string());
            }
            "OBX" => {
                obx_index += 1;
                let row = decode_obx(seg, obx_index, &sep, zone, obr_time.as_deref(), &msh_time)?;
                rows.push(row);
            }
            _ => {}
        }
    }
    Ok(Oru {
        header,
        location,
        device,
        patient_ids,
        rows,
    })
}

fn decode_obx(
    seg: &Segment<'_>,
    index: usize,
    sep: &Separators,
    zone: MonitorZone,
    obr_time: Option<&str>,
    msh_time: &str,
) -> Result<Row, Refusal> {
    let at = |n: usize| format!("OBX[{index}]-{n}");
    // Demo data anywhere rejects the whole message (Mindray marks every OBX-8 `DEMO`).
    if let Some(f) = seg.field(8) {
        for rep in f.repeats() {
            let flag = rep.raw_value().trim();
            if ["DEMO", "D", "T", "TEST"]
                .iter()
                .any(|d| flag.eq_ignore_ascii_case(d))
            {
                return Err(Refusal::DemoData(format!("{} = {flag}", at(8))));
            }
        }
    }
    let code = component(seg.field(3), 1).to_string();
    let system = component(seg.field(3), 3);
    let containment = raw(seg, 4).to_string();
    let equipment = {
        let e = component(seg.field(18), 1);
        is_eui64(e).then(|| e.to_ascii_uppercase())
    };
    let row = |outcome| Row {
        index,
        containment: containment.clone(),
        code: code.clone(),
        equipment: equipment.clone(),
        outcome,
    };
    let value_type = raw(seg, 2);
    if value_type.is_empty() {
        return Ok(row(RowOutcome::Containment));
    }
    let status = raw(seg, 11);
    if !matches!(status, "R" | "F" | "C" | "P") {
        return Ok(row(RowOutcome::NoValue));
    }
    let value = unescape(raw(seg, 5), sep);
    if value.trim().is_empty() {
        return Ok(row(RowOutcome::NoValue));
    }
    if value_type != "NM" {
        return Ok(row(RowOutcome::Skipped(format!(
            "{}: value type {value_type:?} is not numeric (NM)",
            at(2)
        ))));
    }
    let metric = match codes::mdc_number(&code, system).and_then(codes::meaning) {
        Some(CodeMeaning::Metric(m)) => m,
        Some(CodeMeaning::Unsupported(what)) => {
            return Ok(row(RowOutcome::Skipped(format!(
                "{}: {what} has no vitalgate metric",
                at(3)
            ))))
        }
        None => {
            return Ok(row(RowOutcome::Skipped(format!(
                "{}: code {code:?} ({system}) is not a known vital sign",
                at(3)
            ))))
        }
    };
    let unit_code = component(seg.field(6), 1);
    let unit_system = component(seg.field(6), 3);
    let Some(unit) = codes::mdc_number(unit_code, unit_system).and_then(codes::unit) else {
        return Ok(row(RowOutcome::Skipped(format!(
            "{}: unit {unit_code:?} ({unit_system}) is not understood",
            at(6)
        ))));
    };
    if !metric.accepted_units().contains(&unit) {
        return Ok(row(RowOutcome::Skipped(format!(
            "{}: {} is not a unit of {metric}",
            at(6),
            unit.ucum()
        ))));
    }
    let Some(number) = parse_exact(&value) else {
        return Err(Refusal::Malformed {
            at: at(5),
            reason: format!(
                "{:?} is not a number",
                value.chars().take(20).collect::<String>()
            ),
        });
    };
    let (time_text, time_at) = match raw(seg, 14) {
        "" => match obr_time {
            Some(t) => (t, "OBR-7".to_string()),
            None => (msh_time, "MSH-7".to_string()),
        },
        t => (t, at(14)),
    };
    let time: OffsetDateTime =
        parse_timestamp(time_text, zone).map_err(|e| Refusal::Malformed {
            at: time_at,
            reason: e.to_string(),
        })?;
    let reading = Reading::number(metric, number, unit).at(time);
    Ok(row(RowOutcome::Reading(reading)))
}

/// The metric a decoded row carries, if any (for counters and tests).
pub fn metric_of(row: &Row) -> Option<Metric> {
    match &row.outcome {
        RowOutcome::Reading(r) => Some(r.metric),
        _ => None,
    }
}
