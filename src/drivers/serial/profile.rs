//! Device profiles: the `devices/*.toml` files, one per supported device model (schema in
//! `devices/README.md`).
//!
//! A profile names the device, the driver that decodes it, the metrics it gives, its serial
//! link settings (`[serial]`, read by the serial transport), the USB ids its cable or adapter
//! shows (for udev rules), and notes on its quirks. With `driver = "line"` it also defines a
//! data-driven line decoder (`[line]`), so a simple ASCII device needs no code; the profile's
//! `name` is then that driver's public name.
//!
//! Loading is two-stage, as in STYLE.md: serde reads the TOML into `*File` structs that mirror
//! it (`deny_unknown_fields`, so a misspelt key is an error, not a silently ignored setting), then
//! [`validate`](ProfileFile) checks every value and collects *all* problems, each naming the
//! file, the key and the reason. Only a fully valid [`Profile`] comes out.
//!
//! Deliberately not here: opening ports, udev rule generation, and choosing a profile for a
//! plugged-in device (the transport and packaging do those from [`Profile::serial`] and
//! [`Profile::usb`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex_lite::Regex;
use serde::Deserialize;

use super::line::{FieldSpec, FlagRule, LineDecoder, LineSpec, Source};
use crate::drivers::{DriverInfo, DriverKind, StreamDecoder};
use crate::reading::{Flag, Metric, Unit};

/// The driver name that selects the data-driven line decoder.
pub const LINE_DRIVER: &str = "line";

/// Default and maximum `[line] max_line`.
pub const DEFAULT_MAX_LINE: usize = 1024;
pub const MAX_MAX_LINE: usize = 64 * 1024;

/// Why a profile was refused. The message names the file, and for invalid values the key and
/// the reason, e.g. `devices/x.toml: serial.parity: "space" is not one of none, odd, even`.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: cannot read the profile: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Missing, not a regular file, too large or unreadable.
    #[error(transparent)]
    File(#[from] crate::secure_file::FileError),
    #[error("{}: not a valid profile: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}", format_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One invalid value: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}: {}", path.display(), p.key, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ProfileError {
    /// The problems of an `Invalid` profile (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ProfileError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the TOML as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// `serial` (the default here); `ble` profiles have their own schema (drivers::ble).
    #[serde(default)]
    transport: Option<String>,
    name: String,
    manufacturer: String,
    model: String,
    driver: String,
    metrics: Vec<String>,
    #[serde(default)]
    notes: String,
    serial: SerialFile,
    #[serde(default)]
    usb: Vec<UsbFile>,
    line: Option<LineFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialFile {
    baud: u32,
    data_bits: u8,
    parity: String,
    stop_bits: u8,
    flow_control: String,
    #[serde(default)]
    init_hex: Vec<String>,
    keepalive_hex: Option<String>,
    keepalive_secs: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsbFile {
    vendor_id: String,
    product_id: String,
    #[serde(default)]
    note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineFile {
    max_line: Option<usize>,
    select: Option<String>,
    #[serde(default)]
    fields: Vec<FieldFile>,
    #[serde(default)]
    flags: Vec<FlagFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    metric: String,
    unit: String,
    key: Option<String>,
    assign: Option<String>,
    pattern: Option<String>,
    scale: Option<f64>,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    missing: Vec<String>,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagFile {
    pattern: String,
    flag: String,
    #[serde(default)]
    suppress: bool,
}

// ---------------------------------------------------------------------------------------------
// Stage 2: validated.

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Link settings and host-to-device bytes, as the serial transport needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub baud: u32,
    /// 5..=8.
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    /// Written once after opening the port, in order (e.g. select a data format, start a stream).
    pub init: Vec<Vec<u8>>,
    /// Written every `.1` seconds while connected, if the device stops streaming without it.
    pub keepalive: Option<(Vec<u8>, u32)>,
}

/// A USB vendor/product id pair the device's cable or adapter shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbId {
    pub vendor_id: u16,
    pub product_id: u16,
    pub note: String,
}

/// How a profile's bytes are decoded.
#[derive(Clone)]
pub enum Decoding {
    /// A built-in driver, by its registry entry.
    Builtin(DriverInfo),
    /// A data-driven line decoder.
    Line(Arc<LineSpec>),
}

impl fmt::Debug for Decoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decoding::Builtin(d) => write!(f, "Builtin({})", d.name),
            Decoding::Line(spec) => write!(f, "Line({:?})", spec),
        }
    }
}

/// A validated device profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// File name without `.toml`, and for line profiles the public driver name.
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    /// `driver` as written (a built-in serial driver name, or `line`).
    pub driver: String,
    pub decoding: Decoding,
    pub metrics: Vec<Metric>,
    pub notes: String,
    pub serial: SerialSettings,
    pub usb: Vec<UsbId>,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl Profile {
    /// A fresh stream decoder for this device.
    pub fn decoder(&self) -> Box<dyn StreamDecoder> {
        match &self.decoding {
            Decoding::Builtin(DriverInfo {
                kind: DriverKind::Stream(make),
                ..
            }) => make(),
            // Validation admits only stream drivers; a value driver cannot be named here.
            Decoding::Builtin(DriverInfo {
                kind: DriverKind::Value(_),
                ..
            }) => Box::new(LineDecoder::new(Arc::new(empty_spec(&self.name)))),
            Decoding::Line(spec) => Box::new(LineDecoder::new(Arc::clone(spec))),
        }
    }

    /// Whether the driver is line-oriented text (`vitalgate decode --text`).
    pub fn is_text(&self) -> bool {
        match &self.decoding {
            Decoding::Builtin(d) => d.text,
            Decoding::Line(_) => true,
        }
    }

    /// The line spec of a data-driven profile.
    pub fn line_spec(&self) -> Option<&LineSpec> {
        match &self.decoding {
            Decoding::Line(spec) => Some(spec),
            Decoding::Builtin(_) => None,
        }
    }
}

fn empty_spec(name: &str) -> LineSpec {
    LineSpec {
        name: name.to_string(),
        max_line: DEFAULT_MAX_LINE,
        select: None,
        fields: Vec::new(),
        flags: Vec::new(),
    }
}

/// Reads and validates one profile.
pub fn load_profile(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
    let path = path.as_ref();
    // Capped and type-checked: a FIFO or device named `*.toml` is refused, not read.
    let text = crate::secure_file::read_to_string(path, &crate::secure_file::DEVICE_PROFILE)?;
    parse_profile(&text, path)
}

/// Reads every `*.toml` in `dir`, sorted by file name. Stops at the first bad file (its error
/// lists all of that file's problems).
pub fn load_profiles(dir: impl AsRef<Path>) -> Result<Vec<Profile>, ProfileError> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    // One directory holds every device model; this loader takes the serial ones. A profile
    // says which schema it follows with `transport` (absent means serial).
    for entry in entries {
        let entry = entry.map_err(|source| ProfileError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml")
            && profile_transport(&path).as_deref() != Some("ble")
        {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(load_profile).collect()
}

/// The `transport` a profile file declares (`None` when absent or unreadable: the serial
/// loader then reports whatever is wrong with it).
pub fn profile_transport(path: &Path) -> Option<String> {
    let text =
        crate::secure_file::read_to_string(path, &crate::secure_file::DEVICE_PROFILE).ok()?;
    let value: toml::Table = toml::from_str(&text).ok()?;
    value.get("transport")?.as_str().map(str::to_string)
}

/// The profile `NAME.toml` in the first of `dirs` that has one, loaded and validated; `None`
/// when no directory has it. Used by the daemon, `check-config` and `vitalgate decode`.
pub fn find_profile(name: &str, dirs: &[PathBuf]) -> Option<Result<Profile, ProfileError>> {
    // A name with a path separator or `..` could read outside the directories.
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return None;
    }
    dirs.iter()
        .map(|dir| dir.join(format!("{name}.toml")))
        .find(|p| p.is_file())
        .map(load_profile)
}

/// Parses and validates profile text; `path` is used in messages and for the name check.
pub fn parse_profile(text: &str, path: &Path) -> Result<Profile, ProfileError> {
    let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut v = Validator::default();
    let profile = v.profile(file, path);
    match profile {
        Some(p) if v.problems.is_empty() => Ok(p),
        _ => Err(ProfileError::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        }),
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Metrics the `[[line.fields]]` entries name, valid or not (so one bad field is one
    /// problem, not also a "metrics" mismatch).
    field_metrics: Vec<Metric>,
}

/// Metrics each built-in serial driver can produce.
fn builtin_metrics(driver: &str) -> &'static [Metric] {
    match driver {
        "masimo-ascii" => &[Metric::Spo2, Metric::PulseRate, Metric::PerfusionIndex],
        _ => &[Metric::Spo2, Metric::PulseRate],
    }
}

impl Validator {
    fn bad(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn profile(&mut self, f: ProfileFile, path: &Path) -> Option<Profile> {
        let builtins = super::drivers();
        if let Some(t) = f.transport.as_deref().filter(|t| *t != "serial") {
            self.bad(
                "transport",
                format!(
                    "{t:?}: this loader reads serial profiles (transport = \"serial\" or absent)"
                ),
            );
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if f.name.is_empty()
            || !f
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            self.bad(
                "name",
                format!("{:?} must be lower-case letters, digits and '-'", f.name),
            );
        } else if !stem.is_empty() && stem != f.name {
            self.bad(
                "name",
                format!("{:?} must match the file name ({stem}.toml)", f.name),
            );
        }
        for (key, v) in [("manufacturer", &f.manufacturer), ("model", &f.model)] {
            if v.trim().is_empty() {
                self.bad(key, "must not be empty");
            }
        }
        let mut metrics = Vec::new();
        for (i, m) in f.metrics.iter().enumerate() {
            match m.parse::<Metric>() {
                Ok(m) if metrics.contains(&m) => {
                    self.bad(format!("metrics[{i}]"), format!("{m} is listed twice"))
                }
                Ok(m) => metrics.push(m),
                Err(e) => self.bad(format!("metrics[{i}]"), e),
            }
        }
        if f.metrics.is_empty() {
            self.bad("metrics", "list at least one metric the device gives");
        }
        let serial = self.serial(f.serial);
        let usb = f
            .usb
            .iter()
            .enumerate()
            .filter_map(|(i, u)| self.usb(i, u))
            .collect();

        let decoding = if f.driver == LINE_DRIVER {
            if builtins.iter().any(|d| d.name == f.name) {
                self.bad(
                    "name",
                    format!(
                        "{:?} is a built-in driver name; a line profile needs its own",
                        f.name
                    ),
                );
            }
            let Some(line) = f.line else {
                self.bad(
                    "line",
                    "driver = \"line\" needs a [line] table with its fields",
                );
                return None;
            };
            let spec = self.line(&f.name, line)?;
            let produced = std::mem::take(&mut self.field_metrics);
            for m in &metrics {
                if !produced.contains(m) {
                    self.bad(
                        "metrics",
                        format!("{m} is listed but no [[line.fields]] entry gives it"),
                    );
                }
            }
            for m in &produced {
                if !metrics.contains(m) {
                    self.bad(
                        "metrics",
                        format!("[[line.fields]] gives {m}; list it in metrics"),
                    );
                }
            }
            Decoding::Line(Arc::new(spec))
        } else {
            if f.line.is_some() {
                self.bad(
                    "line",
                    format!(
                        "a [line] table is only for driver = \"line\", not {:?}",
                        f.driver
                    ),
                );
            }
            let Some(info) = builtins.iter().find(|d| d.name == f.driver) else {
                let names: Vec<_> = builtins.iter().map(|d| d.name).collect();
                self.bad(
                    "driver",
                    format!(
                        "{:?} is not a serial driver; use one of {}, or line",
                        f.driver,
                        names.join(", ")
                    ),
                );
                return None;
            };
            let can = builtin_metrics(info.name);
            for m in &metrics {
                if !can.contains(m) {
                    self.bad("metrics", format!("driver {} does not give {m}", info.name));
                }
            }
            Decoding::Builtin(*info)
        };
        Some(Profile {
            name: f.name,
            manufacturer: f.manufacturer,
            model: f.model,
            driver: f.driver,
            decoding,
            metrics,
            notes: f.notes,
            serial,
            usb,
            path: path.to_path_buf(),
        })
    }

    fn serial(&mut self, s: SerialFile) -> SerialSettings {
        const BAUDS: [u32; 12] = [
            300, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800,
        ];
        if !BAUDS.contains(&s.baud) {
            self.bad(
                "serial.baud",
                format!("{} is not a standard rate ({BAUDS:?})", s.baud),
            );
        }
        if !(5..=8).contains(&s.data_bits) {
            self.bad(
                "serial.data_bits",
                format!("{} must be 5, 6, 7 or 8", s.data_bits),
            );
        }
        if !(1..=2).contains(&s.stop_bits) {
            self.bad(
                "serial.stop_bits",
                format!("{} must be 1 or 2", s.stop_bits),
            );
        }
        let parity = match s.parity.as_str() {
            "none" => Parity::None,
            "odd" => Parity::Odd,
            "even" => Parity::Even,
            other => {
                self.bad(
                    "serial.parity",
                    format!("{other:?} is not one of none, odd, even"),
                );
                Parity::None
            }
        };
        let flow_control = match s.flow_control.as_str() {
            "none" => FlowControl::None,
            "software" => FlowControl::Software,
            "hardware" => FlowControl::Hardware,
            other => {
                self.bad(
                    "serial.flow_control",
                    format!(
                        "{other:?} is not one of none, software (XON/XOFF), hardware (RTS/CTS)"
                    ),
                );
                FlowControl::None
            }
        };
        let mut init = Vec::new();
        for (i, h) in s.init_hex.iter().enumerate() {
            match super::parse_hex(h) {
                Ok(b) if !b.is_empty() => init.push(b),
                Ok(_) => self.bad(format!("serial.init_hex[{i}]"), "is empty"),
                Err(e) => self.bad(format!("serial.init_hex[{i}]"), e),
            }
        }
        let keepalive = match (s.keepalive_hex, s.keepalive_secs) {
            (None, None) => None,
            (Some(h), Some(secs)) => {
                if !(1..=3600).contains(&secs) {
                    self.bad("serial.keepalive_secs", format!("{secs} must be 1..=3600"));
                }
                match super::parse_hex(&h) {
                    Ok(b) if !b.is_empty() => Some((b, secs)),
                    Ok(_) => {
                        self.bad("serial.keepalive_hex", "is empty");
                        None
                    }
                    Err(e) => {
                        self.bad("serial.keepalive_hex", e);
                        None
                    }
                }
            }
            (Some(_), None) => {
                self.bad(
                    "serial.keepalive_secs",
                    "keepalive_hex needs keepalive_secs (how often to send it)",
                );
                None
            }
            (None, Some(_)) => {
                self.bad(
                    "serial.keepalive_hex",
                    "keepalive_secs needs keepalive_hex (what to send)",
                );
                None
            }
        };
        SerialSettings {
            baud: s.baud,
            data_bits: s.data_bits,
            parity,
            stop_bits: s.stop_bits,
            flow_control,
            init,
            keepalive,
        }
    }

    fn usb(&mut self, i: usize, u: &UsbFile) -> Option<UsbId> {
        let mut id = |key: &str, v: &str| {
            let ok = v.len() == 4 && v.bytes().all(|b| b.is_ascii_hexdigit());
            let parsed = u16::from_str_radix(v, 16).ok().filter(|_| ok);
            if parsed.is_none() {
                self.bad(
                    format!("usb[{i}].{key}"),
                    format!("{v:?} must be 4 hex digits, as lsusb shows it (e.g. \"10c4\")"),
                );
            }
            parsed
        };
        let vendor_id = id("vendor_id", &u.vendor_id);
        let product_id = id("product_id", &u.product_id);
        Some(UsbId {
            vendor_id: vendor_id?,
            product_id: product_id?,
            note: u.note.clone(),
        })
    }

    fn regex(&mut self, key: &str, pattern: &str) -> Option<Regex> {
        match Regex::new(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                self.bad(key, format!("not a valid regex: {e}"));
                None
            }
        }
    }

    fn line(&mut self, name: &str, l: LineFile) -> Option<LineSpec> {
        let max_line = l.max_line.unwrap_or(DEFAULT_MAX_LINE);
        if !(16..=MAX_MAX_LINE).contains(&max_line) {
            self.bad(
                "line.max_line",
                format!("{max_line} must be 16..={MAX_MAX_LINE} bytes"),
            );
        }
        let select = l
            .select
            .as_deref()
            .and_then(|p| self.regex("line.select", p));
        if l.fields.is_empty() {
            self.bad("line.fields", "define at least one [[line.fields]] entry");
        }
        let mut fields = Vec::new();
        for (i, f) in l.fields.into_iter().enumerate() {
            if let Some(field) = self.field(i, f) {
                if fields.iter().any(|x: &FieldSpec| x.metric == field.metric) {
                    self.bad(
                        format!("line.fields[{i}].metric"),
                        format!("{} is given by two fields", field.metric),
                    );
                }
                fields.push(field);
            }
        }
        let mut flags = Vec::new();
        for (i, f) in l.flags.into_iter().enumerate() {
            let key = format!("line.flags[{i}]");
            let pattern = self.regex(&format!("{key}.pattern"), &f.pattern);
            let flag = serde_json::from_value::<Flag>(serde_json::Value::String(f.flag.clone()));
            match (pattern, flag) {
                (Some(pattern), Ok(flag)) => flags.push(FlagRule {
                    pattern,
                    flag,
                    suppress: f.suppress,
                }),
                (_, Err(_)) => self.bad(
                    format!("{key}.flag"),
                    format!(
                        "{:?} is not a flag (snake_case, e.g. sensor_off, low_perfusion, motion)",
                        f.flag
                    ),
                ),
                _ => {}
            }
        }
        Some(LineSpec {
            name: name.to_string(),
            max_line,
            select,
            fields,
            flags,
        })
    }

    fn field(&mut self, i: usize, f: FieldFile) -> Option<FieldSpec> {
        let key = format!("line.fields[{i}]");
        if let Ok(m) = f.metric.parse::<Metric>() {
            self.field_metrics.push(m);
        }
        let metric = match f.metric.parse::<Metric>() {
            Ok(Metric::Acvpu) => {
                self.bad(
                    format!("{key}.metric"),
                    "acvpu is coded, not numeric; use the jsonl driver",
                );
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                self.bad(format!("{key}.metric"), e);
                None
            }
        };
        let unit = match serde_json::from_value::<Unit>(serde_json::Value::String(f.unit.clone())) {
            Ok(u) => Some(u),
            Err(_) => {
                self.bad(
                    format!("{key}.unit"),
                    format!(
                        "{:?} is not a supported UCUM code (e.g. %, /min, Cel, mm[Hg])",
                        f.unit
                    ),
                );
                None
            }
        };
        if let (Some(m), Some(u)) = (metric, unit) {
            if !m.accepted_units().contains(&u) {
                let ok: Vec<_> = m.accepted_units().iter().map(|u| u.ucum()).collect();
                self.bad(
                    format!("{key}.unit"),
                    format!("{m} cannot be in {u}; use one of {}", ok.join(", ")),
                );
            }
        }
        let source = match (f.key, f.pattern) {
            (Some(k), None) => {
                if k.is_empty() || k.chars().any(char::is_whitespace) {
                    self.bad(
                        format!("{key}.key"),
                        format!("{k:?} must be non-empty without spaces"),
                    );
                }
                Some(Source::Key {
                    key: k,
                    assign: f.assign.unwrap_or_else(|| "=".into()),
                })
            }
            (None, Some(p)) => {
                if f.assign.is_some() {
                    self.bad(
                        format!("{key}.assign"),
                        "assign is for key fields, not pattern fields",
                    );
                }
                let re = self.regex(&format!("{key}.pattern"), &p)?;
                if re.captures_len() != 2 {
                    self.bad(
                        format!("{key}.pattern"),
                        "needs exactly one capture group around the value, e.g. \"SpO2 (\\\\d+)\"",
                    );
                }
                Some(Source::Pattern(re))
            }
            _ => {
                self.bad(key.clone(), "give exactly one of key (KEY=VALUE token) or pattern (regex with one capture group)");
                None
            }
        };
        let scale_exp = match f.scale {
            None => Some(0),
            Some(s) => {
                let exp =
                    (-9i8..=9).find(|&e| (10f64.powi(i32::from(e)) - s).abs() <= s.abs() * 1e-12);
                if exp.is_none() {
                    self.bad(
                        format!("{key}.scale"),
                        format!(
                            "{s} must be a power of ten (e.g. 0.1, 1, 10) so values stay exact"
                        ),
                    );
                }
                exp
            }
        };
        Some(FieldSpec {
            metric: metric?,
            unit: unit?,
            source: source?,
            scale_exp: scale_exp?,
            suffix: f.suffix,
            missing: f.missing,
            required: f.required,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::serial::testutil::{check_contract, run};
    use crate::drivers::DecodeError;
    use crate::reading::{Absent, Decimal, Reading, Value};
    use proptest::prelude::*;

    const LINE_PROFILE: &str = r#"
name = "demo-line"
manufacturer = "Example"
model = "Line 1"
driver = "line"
metrics = ["spo2", "pulse_rate", "body_temperature"]

[serial]
baud = 9600
data_bits = 8
parity = "none"
stop_bits = 1
flow_control = "none"

[line]
select = "^OX "

[[line.fields]]
metric = "spo2"
unit = "%"
key = "SPO2"
suffix = "%"
missing = ["---"]
required = true

[[line.fields]]
metric = "pulse_rate"
unit = "/min"
key = "PR"
assign = ":"
missing = ["---"]

[[line.fields]]
metric = "body_temperature"
unit = "Cel"
pattern = 'T=(\d+)C'
scale = 0.1

[[line.flags]]
pattern = "PROBE OFF"
flag = "sensor_off"
suppress = true
"#;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        parse_profile(text, Path::new("devices/demo-line.toml"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text).unwrap_err().problems().to_vec()
    }

    #[test]
    fn profile_line_decodes_key_pattern_scale_and_suffix() {
        let p = parse(LINE_PROFILE).unwrap();
        let (rs, errs, _) = run(p.decoder().as_mut(), b"OX SPO2=97% PR:72 T=365C\r\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            rs,
            vec![
                Reading::canonical(Metric::Spo2, Decimal::int(97)),
                Reading::canonical(Metric::PulseRate, Decimal::int(72)),
                Reading::canonical(Metric::BodyTemperature, Decimal::new(365, -1)),
            ]
        );
    }

    #[test]
    fn profile_line_missing_marker_is_absent() {
        let p = parse(LINE_PROFILE).unwrap();
        let (rs, _, _) = run(p.decoder().as_mut(), b"OX SPO2=---% PR:---\n");
        assert!(
            rs.iter().all(|r| r.value == Value::Absent(Absent::Missing)),
            "{rs:?}"
        );
        assert_eq!(
            rs.len(),
            2,
            "absent optional pattern field gives no reading"
        );
    }

    #[test]
    fn profile_line_flag_rule_flags_and_suppresses() {
        let p = parse(LINE_PROFILE).unwrap();
        let (rs, _, _) = run(p.decoder().as_mut(), b"OX SPO2=97% PR:72 PROBE OFF\n");
        assert!(
            rs.iter()
                .all(|r| r.value == Value::Absent(Absent::Missing)
                    && r.flags == vec![Flag::SensorOff])
        );
    }

    #[test]
    fn profile_line_unselected_lines_are_ignored() {
        let p = parse(LINE_PROFILE).unwrap();
        let (rs, errs, n) = run(p.decoder().as_mut(), b"BOOT v1.2\n");
        assert!(rs.is_empty() && errs.is_empty());
        assert_eq!(n, 10);
    }

    #[test]
    fn profile_line_required_field_absent_is_malformed() {
        let p = parse(LINE_PROFILE).unwrap();
        let (_, errs, _) = run(p.decoder().as_mut(), b"OX PR:72\n");
        assert!(
            matches!(&errs[..], [DecodeError::Malformed(m)] if m.contains("spo2")),
            "{errs:?}"
        );
    }

    #[test]
    fn profile_line_non_number_is_malformed_naming_the_field() {
        let p = parse(LINE_PROFILE).unwrap();
        let (_, errs, _) = run(p.decoder().as_mut(), b"OX SPO2=9?%\n");
        assert!(
            matches!(&errs[..], [DecodeError::Malformed(m)] if m.contains("spo2") && m.contains("9?")),
            "{errs:?}"
        );
    }

    #[test]
    fn profile_line_encode_decode_round_trips() {
        let p = parse(LINE_PROFILE).unwrap();
        let spec = p.line_spec().unwrap();
        let line = spec.encode_line(&[
            (Metric::Spo2, Some(Decimal::int(95))),
            (Metric::PulseRate, None),
        ]);
        let mut with_select = b"OX ".to_vec();
        with_select.extend(line);
        let (rs, errs, _) = run(p.decoder().as_mut(), &with_select);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            rs,
            vec![
                Reading::canonical(Metric::Spo2, Decimal::int(95)),
                Reading::absent(Metric::PulseRate, Absent::Missing)
            ]
        );
    }

    #[test]
    fn profile_unknown_key_is_refused_naming_it() {
        let text = LINE_PROFILE.replace("baud = 9600", "baud = 9600\nbuad = 9600");
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, ProfileError::Parse { .. }));
        assert!(err.to_string().contains("buad"), "{err}");
        assert!(err.to_string().contains("devices/demo-line.toml"), "{err}");
    }

    #[test]
    fn profile_collects_every_problem_with_file_and_key() {
        let text = LINE_PROFILE
            .replace("parity = \"none\"", "parity = \"space\"")
            .replace("baud = 9600", "baud = 9601")
            .replace("scale = 0.1", "scale = 0.3");
        let err = parse(&text).unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["serial.baud", "serial.parity", "line.fields[2].scale"]
        );
        assert!(
            err.to_string()
                .contains("devices/demo-line.toml: serial.parity: \"space\""),
            "{err}"
        );
    }

    #[test]
    fn profile_wrong_unit_for_metric_is_refused() {
        let text = LINE_PROFILE.replace("unit = \"Cel\"", "unit = \"mm[Hg]\"");
        let p = problems(&text);
        assert_eq!(p[0].key, "line.fields[2].unit");
        assert!(
            p[0].reason.contains("body_temperature cannot be in mm[Hg]"),
            "{p:?}"
        );
    }

    #[test]
    fn profile_pattern_without_one_capture_group_is_refused() {
        let text = LINE_PROFILE.replace(r"pattern = 'T=(\d+)C'", r"pattern = 'T=\d+C'");
        assert_eq!(problems(&text)[0].key, "line.fields[2].pattern");
    }

    #[test]
    fn profile_bad_regex_is_refused() {
        let text = LINE_PROFILE.replace(r"pattern = 'T=(\d+)C'", r"pattern = 'T=(\d+C'");
        let p = problems(&text);
        assert!(p[0].reason.contains("not a valid regex"), "{p:?}");
    }

    #[test]
    fn profile_metrics_must_match_fields() {
        let text = LINE_PROFILE.replace("\"body_temperature\"]", "\"body_temperature\", \"bmi\"]");
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|p| p.key == "metrics" && p.reason.contains("bmi")),
            "{p:?}"
        );
    }

    #[test]
    fn profile_unknown_driver_lists_the_serial_drivers() {
        let text = LINE_PROFILE.replace("driver = \"line\"", "driver = \"nonin-fmt9\"");
        let p = problems(&text);
        let d = p.iter().find(|p| p.key == "driver").unwrap();
        assert!(
            d.reason.contains("nonin-fmt2") && d.reason.contains("line"),
            "{d:?}"
        );
    }

    #[test]
    fn profile_name_must_match_file_name() {
        let err = parse_profile(LINE_PROFILE, Path::new("devices/other.toml")).unwrap_err();
        assert_eq!(err.problems()[0].key, "name");
    }

    #[test]
    fn profile_keepalive_needs_both_keys() {
        let text = LINE_PROFILE.replace(
            "flow_control = \"none\"",
            "flow_control = \"none\"\nkeepalive_hex = \"7D 81 AF\"",
        );
        assert_eq!(problems(&text)[0].key, "serial.keepalive_secs");
    }

    #[test]
    fn profile_usb_ids_must_be_four_hex_digits() {
        let text = LINE_PROFILE.replacen(
            "[line]",
            "[[usb]]\nvendor_id = \"10c4\"\nproduct_id = \"0xea60\"\n\n[line]",
            1,
        );
        let p = problems(&text);
        assert_eq!(p[0].key, "usb[0].product_id");
    }

    #[test]
    fn profile_builtin_driver_metric_it_cannot_give_is_refused() {
        let text = r#"
name = "demo-line"
manufacturer = "Nonin"
model = "X"
driver = "nonin-fmt8"
metrics = ["spo2", "perfusion_index"]
[serial]
baud = 9600
data_bits = 8
parity = "none"
stop_bits = 1
flow_control = "none"
"#;
        let p = problems(text);
        assert!(
            p.iter()
                .any(|p| p.key == "metrics" && p.reason.contains("perfusion_index")),
            "{p:?}"
        );
    }

    #[test]
    fn every_shipped_device_profile_loads_and_gives_its_decoder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
        let profiles = load_profiles(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(profiles.len() >= 5, "{} profiles", profiles.len());
        for p in &profiles {
            let mut dec = p.decoder();
            assert_eq!(
                check_contract(dec.as_mut(), b"\x01\x02garbage\r\n", MAX_MAX_LINE),
                Ok(()),
                "{}",
                p.name
            );
        }
        let names: Vec<_> = profiles.iter().map(|p| p.driver.as_str()).collect();
        for d in [
            "nonin-fmt2",
            "nonin-fmt8",
            "contec-cms50d",
            "masimo-ascii",
            "line",
        ] {
            assert!(names.contains(&d), "no profile uses {d}");
        }
    }

    #[test]
    fn shipped_contec_v7_profile_starts_and_keeps_the_stream_alive() {
        // protocols.md §2.2 B: A1 start, AF keep-alive about every 5 s; vector C8.
        let p = load_profile(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("devices/contec-cms50d-plus.toml"),
        )
        .unwrap();
        assert_eq!(p.serial.baud, 115200);
        assert_eq!(
            p.serial.init,
            vec![super::super::contec::V7_START_REALTIME.to_vec()]
        );
        assert_eq!(
            p.serial.keepalive,
            Some((super::super::contec::V7_KEEPALIVE.to_vec(), 5))
        );
        assert_eq!(p.usb[0].vendor_id, 0x10C4);
    }

    #[test]
    fn shipped_contec_legacy_profile_uses_odd_parity() {
        // protocols.md §4 pitfall 8: the legacy link needs odd parity.
        let p = load_profile(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("devices/contec-cms50d-plus-legacy.toml"),
        )
        .unwrap();
        assert_eq!((p.serial.baud, p.serial.parity), (19200, Parity::Odd));
    }

    proptest! {
        #[test]
        fn profile_line_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let p = parse(LINE_PROFILE).unwrap();
            prop_assert_eq!(check_contract(p.decoder().as_mut(), &bytes, DEFAULT_MAX_LINE + 1), Ok(()));
        }

        #[test]
        fn profile_parse_never_panics(text in "[a-z_=\"\\[\\] 0-9\n.]{0,200}") {
            let _ = parse(&text);
        }
    }
}

#[cfg(test)]
mod file_limits {
    use super::*;

    #[test]
    fn a_profile_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck.toml");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                load_profiles(dir.path())
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            );
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("loading a FIFO profile blocked")
            .unwrap_err();
        assert!(e.contains("stuck.toml") && e.contains("FIFO"), "{e}");
    }
}
