//! `[hl7]`: the MLLP listener and the bed bindings (DESIGN.md config contract), and the
//! binding of a decoded message to a patient.
//!
//! ```toml
//! [hl7]
//! listen = "0.0.0.0:2575"
//! max_frame_bytes = 1048576
//! [[hl7.bed]]
//! location = "3West^301^1"          # PV1-3 as the monitor sends it
//! patient = "patient-1"
//! # device = "MINDRAY^00A037009A0053DE^EUI-64"   # or bind by MSH-3 / OBX-18
//! ```

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::oru::Oru;
use super::time::MonitorZone;
use crate::config::PatientConfig;

fn default_max_frame() -> usize {
    1 << 20
}
fn default_max_connections() -> usize {
    64
}
fn default_idle_timeout() -> u64 {
    600
}
fn default_timezone() -> String {
    "Europe/London".into()
}
fn default_max_held() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Config {
    /// `ADDR:PORT` the MLLP listener binds (2575 is HL7's registered port).
    pub listen: String,
    /// Optional mutual TLS (TLS 1.3 only; every monitor presents a certificate from the CA).
    #[serde(default)]
    pub tls: Option<Hl7Tls>,
    /// A frame longer than this is refused with an `AR` and never held in memory.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Connections beyond this are closed at once (a monitor normally keeps one).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection silent this long is closed (the monitor reconnects when it next sends).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// The monitors' clock zone for timestamps without an offset: `Europe/London`, `UTC`
    /// or `+HH:MM`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Bind by PID-3 (a configured patient's NHS Number or id) too. Off by default: a
    /// monitor's admission can be stale; a conflicting PID-3 and bed is refused either way.
    #[serde(default)]
    pub trust_pid: bool,
    /// Most readings held from unbound monitors (oldest dropped beyond it, counted; they
    /// were never acknowledged, so the monitor still has them).
    #[serde(default = "default_max_held")]
    pub max_held_readings: usize,
    #[serde(default, rename = "bed")]
    pub beds: Vec<BedConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that signed the monitors' client certificates.
    pub client_ca_file: PathBuf,
}

/// One bed (or monitor) bound to a patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedConfig {
    /// PV1-3 exactly as the monitor sends it (`3West^301^1`).
    #[serde(default)]
    pub location: Option<String>,
    /// The monitor: its MSH-3 as sent, or its EUI-64 (16 hex digits, from MSH-3 or OBX-18).
    #[serde(default)]
    pub device: Option<String>,
    /// The `[[patient]]` whose readings these are.
    pub patient: String,
}

impl BedConfig {
    /// The EUI-64 this bed's `device` names, if it names one.
    fn eui64(&self) -> Option<String> {
        let d = self.device.as_deref()?;
        let parts: Vec<&str> = d.split('^').collect();
        let candidate = match parts.as_slice() {
            [one] => *one,
            [_, id, kind, ..] if kind.eq_ignore_ascii_case("EUI-64") => *id,
            _ => return None,
        };
        (candidate.len() == 16 && candidate.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| candidate.to_ascii_uppercase())
    }
}

impl Hl7Config {
    /// The monitors' zone (valid once [`Hl7Config::problems`] is empty).
    pub fn zone(&self) -> MonitorZone {
        MonitorZone::parse(&self.timezone).unwrap_or(MonitorZone::EuropeLondon)
    }

    /// Semantic problems as `(key under hl7, message)`.
    pub fn problems(&self, patient_ids: &HashSet<&str>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            out.push((
                "listen".into(),
                format!("{:?}: use ADDR:PORT, e.g. \"0.0.0.0:2575\"", self.listen),
            ));
        }
        if !(1024..=64 << 20).contains(&self.max_frame_bytes) {
            out.push((
                "max_frame_bytes".into(),
                format!("{} is outside 1024..=67108864", self.max_frame_bytes),
            ));
        }
        if !(1..=4096).contains(&self.max_connections) {
            out.push((
                "max_connections".into(),
                format!("{} is outside 1..=4096", self.max_connections),
            ));
        }
        if !(1..=86_400).contains(&self.idle_timeout_s) {
            out.push((
                "idle_timeout_s".into(),
                format!("{} is outside 1..=86400 s", self.idle_timeout_s),
            ));
        }
        if let Err(e) = MonitorZone::parse(&self.timezone) {
            out.push(("timezone".into(), e));
        }
        if self.max_held_readings > 1_000_000 {
            out.push((
                "max_held_readings".into(),
                format!("{} is over 1000000", self.max_held_readings),
            ));
        }
        if let Some(tls) = &self.tls {
            for (k, p) in [
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
                ("client_ca_file", &tls.client_ca_file),
            ] {
                if !p.is_file() {
                    out.push((format!("tls.{k}"), format!("{}: no such file", p.display())));
                }
            }
        }
        let mut locations = HashSet::new();
        let mut devices = HashSet::new();
        for (i, b) in self.beds.iter().enumerate() {
            let key = |k: &str| format!("bed[{i}].{k}");
            if !patient_ids.contains(b.patient.as_str()) {
                out.push((
                    key("patient"),
                    format!("{:?}: no [[patient]] has this id", b.patient),
                ));
            }
            match (&b.location, &b.device) {
                (None, None) => out.push((
                    key("location"),
                    "a bed needs `location` (PV1-3) or `device` (MSH-3 / EUI-64)".into(),
                )),
                (Some(l), _) if l.trim().is_empty() => {
                    out.push((key("location"), "is empty".into()))
                }
                _ => {}
            }
            if let Some(l) = &b.location {
                if !locations.insert(l.as_str()) {
                    out.push((key("location"), format!("{l:?} is bound by another bed")));
                }
            }
            if let Some(d) = &b.device {
                let norm = b.eui64().unwrap_or_else(|| d.clone());
                if !devices.insert(norm) {
                    out.push((key("device"), format!("{d:?} is bound by another bed")));
                }
            }
        }
        out
    }

    /// Whom a message's readings belong to.
    pub fn bind(&self, oru: &Oru, patients: &[PatientConfig]) -> Binding {
        let euis: Vec<String> = oru.equipment().map(str::to_ascii_uppercase).collect();
        let by_device = self.beds.iter().find(|b| {
            b.device.as_deref() == Some(oru.header.sending_application.as_str())
                || b.eui64().is_some_and(|e| euis.contains(&e))
        });
        let by_location = || {
            let l = oru.location.as_deref()?;
            self.beds.iter().find(|b| b.location.as_deref() == Some(l))
        };
        let bed = by_device.or_else(by_location).map(|b| b.patient.clone());
        let by_pid = self
            .trust_pid
            .then(|| {
                patients.iter().find(|p| {
                    oru.patient_ids.iter().any(|id| {
                        *id == p.id
                            || p.nhs_number.as_deref().is_some_and(|n| {
                                n.chars().filter(char::is_ascii_digit).eq(id.chars())
                            })
                    })
                })
            })
            .flatten()
            .map(|p| p.id.clone());
        match (bed, by_pid) {
            (Some(a), Some(b)) if a != b => Binding::Conflict,
            (Some(p), _) | (None, Some(p)) => Binding::Patient(p),
            (None, None) => Binding::Unbound,
        }
    }
}

/// The result of [`Hl7Config::bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    Patient(String),
    /// No bed, device (or, with `trust_pid`, PID-3) matches: the readings are held.
    Unbound,
    /// The bed says one patient and PID-3 another: refused, never guessed.
    Conflict,
}

/// The device id a monitor's readings are stored under: `hl7-<EUI-64>` when the monitor
/// names one, else `hl7-<location>`, then `-<MDS.VMD>` of the channel.
pub fn device_id(oru: &Oru, channel: &str) -> String {
    let base = match oru.equipment().next() {
        Some(e) => e.to_string(),
        None => oru
            .location
            .as_deref()
            .unwrap_or(oru.header.sending_application.as_str())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect(),
    };
    format!("hl7-{base}-{channel}")
}
