//! Configuration: the TOML schema, defaults, and validation with field-named errors.
//!
//! Two stages, like ripgrep's low/high args: serde parses the file into [`Config`] with
//! `deny_unknown_fields` everywhere (so a misspelt key is an error, not a silently ignored
//! setting), then [`Config::validate`] checks meaning (ids unique, devices point at patients,
//! driver names exist, NHS Numbers pass Modulus 11, ...) and collects every problem at once.
//! A config with any problem is refused whole; the daemon keeps running on the one it had.
//!
//! Every message names the file, the key and the reason, e.g.
//! `vitalgate.toml: device[1].patient = "p9": no [[patient]] has id "p9"`.
//!
//! `config/vitalgate.toml` is the annotated reference; `config/demo.toml` is embedded in the
//! binary for `vitalgate demo`.

use std::collections::HashSet;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::drivers::sim::Scenario;

/// The default config path of `vitalgate run`.
pub const DEFAULT_PATH: &str = "/etc/vitalgate/vitalgate.toml";

/// The demo config, embedded so `vitalgate demo` needs no files.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The MQTT uplink; without it readings are kept (encrypted) until one is configured.
    #[serde(default)]
    pub uplink: Option<crate::uplink::UplinkConfig>,
    #[serde(default, rename = "patient")]
    pub patients: Vec<PatientConfig>,
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub ble: BleSection,
    /// `[status]`: when `vitalgate status` reports degraded (see `live::health`).
    #[serde(default)]
    pub status: crate::live::StatusThresholds,
    /// Ward monitors: HL7 v2 ORU^R01 over MLLP (`[hl7]`, `[[hl7.bed]]`; see docs/hl7.md).
    #[serde(default)]
    pub hl7: Option<crate::hl7::config::Hl7Config>,
    /// Remote configuration: the fleet keys this hub trusts (local-only; see docs/fleet.md).
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
    /// `[logging] level`: the log filter, changed live (fleet-settable; see `logging.rs`).
    #[serde(default)]
    pub logging: crate::logging::LoggingConfig,
}

/// The Bluetooth LE central (gateway-wide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleSection {
    /// No adapter event for this long restarts discovery (BlueZ can stop scanning silently).
    pub scan_watchdog_s: u64,
    /// How often to look again for an adapter or bluetoothd that is missing.
    pub adapter_retry_s: u64,
    /// A device clock within this of the gateway clock is trusted as is.
    pub clock_tolerance_s: u64,
}

impl Default for BleSection {
    fn default() -> Self {
        BleSection {
            scan_watchdog_s: 600,
            adapter_retry_s: 30,
            clock_tolerance_s: 120,
        }
    }
}

/// Gateway-wide alerting settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Local annunciator: a command run for every alert event while the uplink is down (or
    /// when there is none), with the event JSON on its standard input; e.g. a script that
    /// sounds a buzzer or lights an LED on the hub. Events also go to the journal at a high
    /// priority in any case.
    pub annunciator_command: Option<Vec<String>>,
}

/// Where the gateway runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Gateway id; defaults to the uplink client certificate's CN. Required without an uplink.
    pub id: Option<String>,
    /// `residential` (home hub) or `clinical` (ward): the FHIR recording setting.
    pub setting: Setting,
    /// Directory for the outbox, status snapshot and audit log (created 0700).
    pub state_dir: PathBuf,
    /// Directories searched for device profiles (`devices/*.toml`), in order.
    pub devices_dirs: Vec<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: None,
            setting: Setting::Residential,
            state_dir: PathBuf::from("/var/lib/vitalgate"),
            devices_dirs: vec![
                PathBuf::from("/etc/vitalgate/devices"),
                PathBuf::from("/usr/share/vitalgate/devices"),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    Residential,
    Clinical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Outbox database; relative paths are under `gateway.state_dir`.
    pub path: PathBuf,
    /// Master key file, used when the systemd credential `vitalgate.key` is absent.
    pub key_file: PathBuf,
    /// Delivered rows are kept this long (for audit and re-send on request), then purged.
    pub retention_days: u32,
    /// Undelivered rows the outbox is sized for; a technical alarm fires at 80 %. Readings
    /// are never dropped when it is reached.
    pub capacity: u64,
    /// Bytes the outbox (database pages in use + WAL) may take; unset: no byte cap (the
    /// file system's own limit applies, `storage_full`). See `store::cap`.
    pub max_bytes: Option<u64>,
    /// Near `max_bytes` with only undelivered rows left: `alarm` (keep them, the default) or
    /// `drop_oldest_readings` (drop the oldest readings, never alerts, audited).
    pub when_full: crate::store::WhenFull,
    /// Each data key (per patient, and the gateway's) is replaced after this many days;
    /// the old one is destroyed once no row sealed with it remains (store/keyring.rs).
    pub key_rotation_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("outbox.db"),
            key_file: PathBuf::from("/etc/vitalgate/master.key"),
            retention_days: 7,
            capacity: 2_000_000,
            max_bytes: None,
            when_full: crate::store::WhenFull::Alarm,
            key_rotation_days: crate::store::keyring::DEFAULT_ROTATION_DAYS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Group commit: the longest a received reading waits for companions before its
    /// transaction starts. Readings arriving together share one transaction.
    pub max_batch_wait_ms: u64,
    /// Group commit: most readings in one transaction.
    pub max_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_wait_ms: 50,
            max_batch: 2000,
        }
    }
}

/// A patient monitored by this gateway.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientConfig {
    /// Pseudonymous id used in logs, alerts and status (never the NHS Number).
    pub id: String,
    /// NHS Number (10 digits, Modulus 11). Goes into FHIR `subject`; redacted everywhere else.
    #[serde(default)]
    pub nhs_number: Option<String>,
    /// The alert rules for this patient: NEWS2 SpO2 scale (a clinician's decision, never
    /// inferred), on oxygen, threshold rules, technical alarm timings (`[patient.alerts]`;
    /// defaults are `alerts::default_rules(spo2_scale)`, see docs/alerts.md).
    #[serde(default)]
    pub alerts: crate::alerts::PatientAlertConfig,
}

impl fmt::Debug for PatientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientConfig")
            .field("id", &self.id)
            .field(
                "nhs_number",
                &self.nhs_number.as_deref().map(redact_nhs_number),
            )
            .field("alerts", &self.alerts)
            .finish()
    }
}

/// A device attached to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique, stable id (goes into FHIR `Observation.device`).
    pub id: String,
    /// The `[[patient]]` whose readings these are.
    pub patient: String,
    /// Driver name (`sim`, `jsonl`, `nonin-fmt2`, ...) or a device profile name from `devices/`.
    pub driver: String,
    /// Human-readable name for status and FHIR `device.display`.
    #[serde(default)]
    pub display: Option<String>,
    /// Byte-stream drivers: a file, FIFO, or serial device (prefer `/dev/serial/by-id/...`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Serial ports: baud rate (defaults from the device profile).
    #[serde(default)]
    pub baud: Option<u32>,
    /// A device silent for longer than this raises a technical alarm.
    #[serde(default)]
    pub expected_interval_s: Option<u64>,
    /// `sim` only: the simulated patient's course.
    #[serde(default)]
    pub scenario: Option<Scenario>,
    /// `sim` only: time between readings.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// `sim` only: random seed, for repeatable runs.
    #[serde(default)]
    pub seed: Option<u64>,
    /// BLE (`ble-*` drivers) only: the device's Bluetooth address, `AA:BB:CC:DD:EE:FF`. Only
    /// configured addresses are ever connected (the allow-list).
    #[serde(default)]
    pub address: Option<String>,
    /// BLE only: 16-bit characteristic UUIDs to subscribe to (default: the driver's
    /// measurement characteristic, e.g. `2a35` for `ble-blood-pressure`).
    #[serde(default)]
    pub characteristics: Option<Vec<String>>,
    /// BLE only: `correct` device timestamps by the measured clock offset (default), or
    /// `keep_and_flag` them.
    #[serde(default)]
    pub time_policy: Option<crate::transport::ble::TimePolicy>,
    /// BLE only: download stored records through the Record Access Control Point on every
    /// connection (default: on for `ble-glucose`).
    #[serde(default)]
    pub racp: Option<bool>,
}

impl DeviceConfig {
    /// A Bluetooth LE device (read by the BLE central, not a byte stream).
    pub fn is_ble(&self) -> bool {
        self.driver.starts_with("ble-")
    }

    /// The central's view of this device, with defaults from the driver.
    pub fn ble(&self) -> Result<crate::transport::ble::BleDeviceConfig, String> {
        let default_chars: &[&str] = match self.driver.as_str() {
            "ble-heart-rate" => &["2a37"],
            "ble-temperature" => &["2a1c"],
            "ble-blood-pressure" => &["2a35"],
            "ble-plx-spot" => &["2a5e"],
            "ble-plx-continuous" => &["2a5f"],
            "ble-weight" => &["2a9d"],
            "ble-glucose" => &["2a18", "2a34"],
            _ => &[],
        };
        let chars: Vec<&str> = match &self.characteristics {
            Some(c) => c.iter().map(String::as_str).collect(),
            None => default_chars.to_vec(),
        };
        let address = self
            .address
            .as_deref()
            .ok_or("a BLE device needs `address` (from `bluetoothctl devices`)")?;
        crate::transport::ble::BleDeviceConfig::new(
            &self.id,
            address,
            &self.driver,
            &chars,
            self.time_policy.unwrap_or_default(),
            self.racp.unwrap_or(self.driver == "ble-glucose"),
        )
        .map_err(|e| e.to_string())
    }
}

/// A numeric setting and the range it must be in.
struct NumericSetting {
    key: String,
    value: u64,
    range: RangeInclusive<u64>,
    unit: &'static str,
}

/// One problem found in a config file.
///
/// Built only by [`Problem::new`], which passes key and message through
/// [`crate::redact::scrub`]: no problem can carry a run of 10 or more digits (an NHS Number)
/// into the terminal, the journal or the audit log, whoever writes the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    key: String,
    message: String,
}

impl Problem {
    /// A problem with the key at dotted path `key` (empty for the whole file).
    pub fn new(key: impl AsRef<str>, message: impl AsRef<str>) -> Problem {
        Problem {
            key: crate::redact::scrub(key.as_ref()).into_owned(),
            message: crate::redact::scrub(message.as_ref()).into_owned(),
        }
    }

    /// Dotted path of the key, e.g. `device[1].patient`; empty for the whole file.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong and how to fix it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A config refused whole, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{file}: {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file: read through [`crate::secure_file`] (a regular
    /// file of at most 1 MiB, not writable by others), then [`Config::parse`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, |_| Vec::new())
    }

    /// [`Config::load`], then the files it points at ([`crate::preflight`]): what `run`
    /// and `check-config` do. Every problem of both kinds is reported at once.
    /// `validity_at`: check the client certificate's validity period at this time.
    pub fn load_and_check(
        path: &Path,
        validity_at: Option<time::OffsetDateTime>,
    ) -> Result<Config, ConfigError> {
        Config::load_with(path, |c| crate::preflight::problems(c, validity_at))
    }

    fn load_with(
        path: &Path,
        more: impl FnOnce(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let text =
            crate::secure_file::read_to_string(path, &crate::secure_file::CONFIG).map_err(|e| {
                // The error names the path; the ConfigError prefix names it already.
                let message = e.to_string();
                let prefix = format!("{}: ", path.display());
                ConfigError {
                    file: path.to_path_buf(),
                    problems: vec![Problem::new(
                        "",
                        message.strip_prefix(&prefix).unwrap_or(&message),
                    )],
                }
            })?;
        Config::parse_with(&text, path, more)
    }

    /// Parses and validates TOML text; `file` is used in messages only.
    ///
    /// A parse error keeps its kind, key path, line and column, never the source excerpt
    /// ([`crate::redact::ParseError`]): the excerpt of a bad line may be an NHS Number.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, |_| Vec::new())
    }

    fn parse_with(
        text: &str,
        file: &Path,
        more: impl FnOnce(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let e = crate::redact::ParseError::from_toml(e, text);
            ConfigError {
                file: file.to_path_buf(),
                problems: vec![Problem::new(&e.key, e.to_string())],
            }
        })?;
        let mut problems = config.problems();
        problems.extend(more(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_path_buf(),
                problems,
            })
        }
    }

    /// The demo config (embedded), with its state under `state_dir`.
    pub fn demo(state_dir: &Path) -> Result<Config, ConfigError> {
        let mut c = Config::parse(DEMO_TOML, Path::new("<embedded demo.toml>"))?;
        c.gateway.state_dir = state_dir.to_path_buf();
        c.store.key_file = state_dir.join("master.key");
        Ok(c)
    }

    /// Semantic checks; every problem, not just the first.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem::new(key, message));

        if let Some(id) = &self.gateway.id {
            if !valid_id(id) {
                problem(
                    "gateway.id".into(),
                    format!(
                        "{id:?}: use 1-64 of A-Z a-z 0-9 - _ . (it becomes an MQTT topic level)"
                    ),
                );
            }
        }
        for (key, text) in self.shown_text() {
            if crate::redact::has_long_number(text) {
                problem(
                    key,
                    "holds 10 or more digits in a row, as an NHS Number does; it is shown in \
                     logs, status and MQTT topics, so use a pseudonym (the NHS Number goes in \
                     [[patient]] nhs_number only)"
                        .into(),
                );
            }
        }
        if let Some(Err(why)) = self.logging.level.as_deref().map(crate::logging::check) {
            problem("logging.level".into(), why);
        }
        for n in self.numeric_settings() {
            if !n.range.contains(&n.value) {
                problem(
                    n.key,
                    format!(
                        "{} is outside {}..={}{}",
                        n.value,
                        n.range.start(),
                        n.range.end(),
                        n.unit
                    ),
                );
            }
        }

        for (key, message) in self.status.problems() {
            problem(key, message);
        }
        if self.gateway.id.is_none()
            && self.uplink.as_ref().is_none_or(|u| u.gateway_id.is_none())
            && self.uplink.is_none()
        {
            problem(
                "gateway.id".into(),
                "not set: set it, or configure [uplink] (the client certificate's CN is the default)".into(),
            );
        }
        if let Some(up) = &self.uplink {
            if let Err(errors) = up.validate() {
                for e in errors {
                    problem(
                        format!("uplink.{}", e.key),
                        format!("{} {}", e.value, e.reason),
                    );
                }
            }
            if let (Some(a), Some(b)) = (&self.gateway.id, &up.gateway_id) {
                if a != b {
                    problem(
                        "uplink.gateway_id".into(),
                        format!("{b:?} differs from gateway.id {a:?}; set one of them"),
                    );
                }
            }
        }

        let mut patient_ids = HashSet::new();
        for (i, p) in self.patients.iter().enumerate() {
            let key = |k: &str| format!("patient[{i}].{k}");
            if !valid_id(&p.id) {
                problem(
                    key("id"),
                    format!("{:?}: use 1-64 of A-Z a-z 0-9 - _ .", p.id),
                );
            }
            if !patient_ids.insert(p.id.as_str()) {
                problem(key("id"), format!("{:?} is used by another patient", p.id));
            }
            if let Some(n) = &p.nhs_number {
                if let Err(why) = crate::nhs_number::NhsNumber::parse(n) {
                    problem(
                        key("nhs_number"),
                        format!("{} is not a valid NHS Number: {why}", redact_nhs_number(n)),
                    );
                }
            }
            if let Err(crate::alerts::AlertConfigError::Invalid(list)) = p.alerts.validate() {
                for e in list {
                    problem(
                        key(&format!("alerts.{}", e.key)),
                        format!("{} {}", e.value, e.reason),
                    );
                }
            }
        }

        if let Some(h) = &self.hl7 {
            for (k, m) in h.problems(&patient_ids) {
                problem(format!("hl7.{k}"), m);
            }
        }
        for p in self.fleet.problems() {
            problem(p.key().to_string(), p.message().to_string());
        }

        let mut device_ids = HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("device[{i}].{k}");
            if !valid_id(&d.id) {
                problem(
                    key("id"),
                    format!("{:?}: use 1-64 of A-Z a-z 0-9 - _ .", d.id),
                );
            }
            if !device_ids.insert(d.id.as_str()) {
                problem(key("id"), format!("{:?} is used by another device", d.id));
            }
            if !patient_ids.contains(d.patient.as_str()) {
                problem(
                    key("patient"),
                    format!("{:?}: no [[patient]] has this id", d.patient),
                );
            }
            let is_sim = d.driver == "sim";
            let ble_only = [
                (d.address.is_some(), "address"),
                (d.characteristics.is_some(), "characteristics"),
                (d.time_policy.is_some(), "time_policy"),
                (d.racp.is_some(), "racp"),
            ];
            if d.is_ble() {
                if let Err(why) = d.ble() {
                    let k = if d
                        .address
                        .as_deref()
                        .is_some_and(|a| crate::transport::ble::normalise_address(a).is_ok())
                    {
                        "characteristics"
                    } else {
                        "address"
                    };
                    problem(key(k), why);
                }
                if d.path.is_some() {
                    problem(
                        key("path"),
                        "a BLE device is found by `address`, not a path; remove `path`".into(),
                    );
                }
            } else {
                for (set, name) in ble_only {
                    if set {
                        problem(
                            key(name),
                            format!("only BLE (`ble-*`) drivers take `{name}`"),
                        );
                    }
                }
            }
            if !is_sim
                && crate::drivers::find(&d.driver).is_none()
                && !self.profile_exists(&d.driver)
            {
                let mut names: Vec<&str> =
                    crate::drivers::registry().iter().map(|x| x.name).collect();
                names.insert(0, "sim");
                problem(
                    key("driver"),
                    format!(
                        "{:?} is neither a built-in driver ({}) nor a profile in {}",
                        d.driver,
                        names.join(", "),
                        self.devices_dirs_display()
                    ),
                );
            } else if !is_sim && crate::drivers::find(&d.driver).is_none() {
                // A device profile: it must load, or the device could not run.
                if let Some(Err(e)) = crate::drivers::serial::profile::find_profile(
                    &d.driver,
                    &self.gateway.devices_dirs,
                ) {
                    problem(
                        key("driver"),
                        format!(
                            "device profile {:?} is invalid:\n    {}",
                            d.driver,
                            e.to_string().replace('\n', "\n    ")
                        ),
                    );
                }
            }
            if is_sim {
                if d.path.is_some() {
                    problem(
                        key("path"),
                        "the sim driver reads no file; remove `path`".into(),
                    );
                }
            } else {
                for (set, name) in [
                    (d.scenario.is_some(), "scenario"),
                    (d.interval_ms.is_some(), "interval_ms"),
                    (d.seed.is_some(), "seed"),
                ] {
                    if set {
                        problem(key(name), format!("only the sim driver takes `{name}`"));
                    }
                }
                if d.path.is_none() && !d.is_ble() {
                    problem(
                        key("path"),
                        format!(
                            "driver {:?} needs `path` (a serial device, file or FIFO)",
                            d.driver
                        ),
                    );
                }
            }
        }
        out
    }

    /// Ids and names that appear in logs, status, the audit log and MQTT topics, by key.
    fn shown_text(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        if let Some(id) = &self.gateway.id {
            out.push(("gateway.id".to_owned(), id.as_str()));
        }
        if let Some(id) = self.uplink.as_ref().and_then(|u| u.gateway_id.as_ref()) {
            out.push(("uplink.gateway_id".to_owned(), id.as_str()));
        }
        for (i, p) in self.patients.iter().enumerate() {
            out.push((format!("patient[{i}].id"), p.id.as_str()));
        }
        for (i, d) in self.devices.iter().enumerate() {
            out.push((format!("device[{i}].id"), d.id.as_str()));
            if let Some(display) = &d.display {
                out.push((format!("device[{i}].display"), display.as_str()));
            }
        }
        out
    }

    /// Every numeric setting outside `[uplink]` (checked by `UplinkConfig::validate`) and
    /// `[patient.alerts]` (checked by `PatientAlertConfig::validate`), with its allowed range.
    /// The ranges are documented in `config/vitalgate.toml`; a new numeric setting gets its
    /// line here.
    fn numeric_settings(&self) -> Vec<NumericSetting> {
        const DAY_S: u64 = 86_400;
        let n = |key: &str, value: u64, range: RangeInclusive<u64>, unit: &'static str| {
            NumericSetting {
                key: key.to_owned(),
                value,
                range,
                unit,
            }
        };
        let mut out = vec![
            // Ten years: beyond that a purge cut-off stops being a date anyone means.
            n(
                "store.retention_days",
                self.store.retention_days.into(),
                1..=3650,
                " days",
            ),
            // At least yearly: a key that outlives a year is no rotation policy.
            n(
                "store.key_rotation_days",
                self.store.key_rotation_days.into(),
                1..=365,
                " days",
            ),
            n(
                "store.capacity",
                self.store.capacity,
                1000..=100_000_000,
                " readings",
            ),
            n(
                "ingest.max_batch_wait_ms",
                self.ingest.max_batch_wait_ms,
                1..=10_000,
                " ms",
            ),
            n(
                "ingest.max_batch",
                self.ingest.max_batch as u64,
                1..=100_000,
                " readings",
            ),
            n(
                "ble.scan_watchdog_s",
                self.ble.scan_watchdog_s,
                10..=DAY_S,
                " s",
            ),
            n(
                "ble.adapter_retry_s",
                self.ble.adapter_retry_s,
                1..=3600,
                " s",
            ),
            n(
                "ble.clock_tolerance_s",
                self.ble.clock_tolerance_s,
                0..=DAY_S,
                " s",
            ),
        ];
        if let Some(v) = self.store.max_bytes {
            // Below 16 MiB the WAL alone (up to 8 MiB between checkpoints) would keep it near.
            out.push(n("store.max_bytes", v, 16 << 20..=1 << 40, " bytes"));
        }
        for (i, d) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("device[{i}].{k}");
            if let Some(v) = d.baud {
                out.push(n(&key("baud"), v.into(), 50..=4_000_000, " baud"));
            }
            if let Some(v) = d.expected_interval_s {
                out.push(n(&key("expected_interval_s"), v, 1..=7 * DAY_S, " s"));
            }
            if let Some(v) = d.interval_ms {
                out.push(n(&key("interval_ms"), v, 1..=DAY_S * 1000, " ms"));
            }
        }
        out
    }

    fn profile_exists(&self, name: &str) -> bool {
        self.gateway
            .devices_dirs
            .iter()
            .any(|dir| dir.join(format!("{name}.toml")).is_file())
    }

    fn devices_dirs_display(&self) -> String {
        let dirs: Vec<String> = self
            .gateway
            .devices_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(", ")
    }

    /// The gateway id: `gateway.id`, else `uplink.gateway_id`, else the CN of the uplink
    /// client certificate (read from disk).
    pub fn gateway_id(&self) -> Result<String, String> {
        if let Some(id) = self
            .gateway
            .id
            .clone()
            .or_else(|| self.uplink.as_ref().and_then(|u| u.gateway_id.clone()))
        {
            return Ok(id);
        }
        let Some(up) = &self.uplink else {
            return Err(
                "gateway.id: not set, and there is no [uplink] client certificate to take it from"
                    .into(),
            );
        };
        let pem = crate::secure_file::read(&up.cert_file, &crate::secure_file::CERT_FILE)
            .map_err(|e| format!("uplink.cert_file: {e}"))?;
        crate::uplink::gateway_id_from_cert(&pem)
            .map_err(|e| format!("uplink.cert_file {}: {e}", up.cert_file.display()))
    }

    /// The outbox path, resolved against `gateway.state_dir`.
    pub fn outbox_path(&self) -> PathBuf {
        self.gateway.state_dir.join(&self.store.path)
    }

    pub fn patient(&self, id: &str) -> Option<&PatientConfig> {
        self.patients.iter().find(|p| p.id == id)
    }

    /// The effective config as TOML with identifiers redacted (`check-config`).
    ///
    /// Any other run of 10 or more digits (in a path, a command, a name) is hidden too
    /// ([`crate::redact::scrub`]): this text goes to terminals and tickets.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for p in &mut shown.patients {
            p.nhs_number = p.nhs_number.as_deref().map(redact_nhs_number);
        }
        let text = toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"));
        crate::redact::scrub(&text).into_owned()
    }
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Shows only the last four digits of an NHS Number, for logs and printed config.
pub fn redact_nhs_number(n: &str) -> String {
    let digits: String = n.chars().filter(|c| c.is_ascii_digit()).collect();
    let tail = &digits[digits.len().saturating_sub(4)..];
    format!("***-***-{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
        [gateway]
        id = "gw-test"
        [[patient]]
        id = "p1"
        [[device]]
        id = "sim1"
        patient = "p1"
        driver = "sim"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.ingest.max_batch_wait_ms, 50);
        assert_eq!(c.store.retention_days, 7);
        assert_eq!(
            c.patients[0].alerts.spo2_scale,
            crate::alerts::news2::Spo2Scale::Scale1
        );
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_key() {
        let e = parse("[gateway]\nid = \"g\"\n[store]\nretention_dayz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml: store"), "{e}");
        assert!(e.contains("unknown field `retention_dayz`"), "{e}");
    }

    #[test]
    fn wrong_type_is_refused_with_key_path() {
        let e = parse(&format!("{MINIMAL}\nbaud = \"fast\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("device[0].baud"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn device_pointing_at_unknown_patient_is_refused() {
        let e = parse(&MINIMAL.replace("patient = \"p1\"", "patient = \"p9\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "test.toml: device[0].patient: \"p9\": no [[patient]] has this id"
        );
    }

    #[test]
    fn unknown_driver_lists_the_known_ones() {
        let e = parse(&MINIMAL.replace(
            "driver = \"sim\"",
            "driver = \"nonin-fmt99\"\npath = \"/dev/null\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("device[0].driver") && e.contains("jsonl"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [gateway]
            id = "gw"
            [store]
            retention_days = 0
            [[patient]]
            id = "p1"
            [[device]]
            id = "d1"
            patient = "p9"
            driver = "sim"
        "#;
        let e = parse(text).unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(Problem::key).collect();
        assert_eq!(keys, vec!["store.retention_days", "device[0].patient"]);
    }

    #[test]
    fn invalid_nhs_number_is_refused_and_redacted_in_the_message() {
        let e =
            parse("[gateway]\nid = \"g\"\n[[patient]]\nid = \"p1\"\nnhs_number = \"9434765918\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("patient[0].nhs_number"), "{e}");
        assert!(
            !e.contains("9434765918"),
            "NHS Number printed in clear: {e}"
        );
    }

    #[test]
    fn sim_only_keys_are_refused_for_other_drivers() {
        let text = MINIMAL.replace(
            "driver = \"sim\"",
            "driver = \"jsonl\"\npath = \"/tmp/x\"\nscenario = \"stable\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("device[0].scenario: only the sim driver"), "{e}");
    }

    #[test]
    fn invalid_alert_rule_is_refused_with_its_key() {
        let text = format!("{MINIMAL}\n[patient.alerts]\nnews2_freshness_secs = 0\n");
        let text = text.replace("[[device]]", "[patient.alerts.technical]\n[[device]]");
        let e = parse(&text.replace("[patient.alerts.technical]\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("patient[0].alerts.news2_freshness_secs"), "{e}");
    }

    #[test]
    fn ble_device_gets_driver_default_characteristics() {
        let text = MINIMAL.replace(
            "driver = \"sim\"",
            "driver = \"ble-glucose\"\naddress = \"a4:c1:38:12:34:56\"",
        );
        let c = parse(&text).unwrap();
        let b = c.devices[0].ble().unwrap();
        assert_eq!(b.address, "A4:C1:38:12:34:56");
        assert_eq!(b.characteristics, vec![0x2a18, 0x2a34]);
        assert!(
            b.has_racp,
            "glucose meters download stored records by default"
        );
    }

    #[test]
    fn ble_device_without_a_valid_address_is_refused() {
        let e = parse(&MINIMAL.replace(
            "driver = \"sim\"",
            "driver = \"ble-blood-pressure\"\naddress = \"cuff\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("device[0].address") && e.contains("bluetoothctl"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("driver = \"sim\"", "driver = \"ble-blood-pressure\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("device[0].address"), "{e}");
    }

    #[test]
    fn ble_only_keys_are_refused_for_other_drivers() {
        let e = parse(&MINIMAL.replace(
            "driver = \"sim\"",
            "driver = \"sim\"\naddress = \"A4:C1:38:12:34:56\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("device[0].address: only BLE"), "{e}");
    }

    #[test]
    fn redacted_config_hides_nhs_numbers() {
        let c =
            parse("[gateway]\nid = \"g\"\n[[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n")
                .unwrap();
        let shown = c.redacted_toml();
        assert!(
            shown.contains("***-***-5919") && !shown.contains("9434765919"),
            "{shown}"
        );
        assert!(!format!("{c:?}").contains("9434765919"));
    }

    /// Config texts that make the TOML parser or the checks complain about a line holding
    /// the NHS Number 9434765919 (a valid test number).
    pub(crate) const HOSTILE: &[(&str, &str)] = &[
        ("unquoted", "nhs_number = 9434765919\n"),
        ("unquoted spaced", "nhs_number = 943 476 5919\n"),
        (
            "duplicate key",
            "nhs_number = \"9434765919\"\nnhs_number = \"9434765919\"\n",
        ),
        ("unterminated string", "nhs_number = \"9434765919\n"),
        ("unterminated array", "nhs_number = [\"9434765919\"\n"),
        ("as a key", "9434765919 = \"x\"\n"),
        ("wrong check digit", "nhs_number = \"9434765918\"\n"),
        ("in a table header", "[9434765919]\n"),
        ("bad escape", "nhs_number = \"\\q9434765919\"\n"),
    ];

    #[test]
    fn no_parser_or_check_message_shows_an_nhs_number() {
        for (case, line) in HOSTILE {
            let text = format!("[gateway]\nid = \"g\"\n[[patient]]\nid = \"p1\"\n{line}");
            let e = parse(&text).expect_err(case).to_string();
            for digits in ["9434765919", "943 476 5919", "943476591", "34765919"] {
                assert!(!e.contains(digits), "{case}: {e}");
            }
            assert!(e.starts_with("test.toml: "), "{case}: {e}");
        }
    }

    #[test]
    fn parser_messages_keep_key_path_line_and_column() {
        let e = parse("[gateway]\nid = \"g\"\n[[patient]]\nid = \"p1\"\nnhs_number = 9434765919\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "test.toml: patient[0].nhs_number: invalid type: integer <value not shown>, \
             expected a string (line 5, column 14)"
        );
    }

    #[test]
    fn ids_and_names_holding_an_nhs_number_are_refused_without_showing_it() {
        for (key, text) in [
            (
                "gateway.id",
                MINIMAL.replace("\"gw-test\"", "\"9434765919\""),
            ),
            (
                "patient[0].id",
                MINIMAL
                    .replace("id = \"p1\"", "id = \"pt-9434765919\"")
                    .replace("patient = \"p1\"", "patient = \"pt-9434765919\""),
            ),
            (
                "device[0].display",
                format!("{MINIMAL}display = \"Mrs X 943 476 5919\"\n"),
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.problems.iter().any(|p| p.key() == key), "{key}: {e}");
            let e = e.to_string();
            assert!(!e.contains("5919"), "{key}: {e}");
        }
    }

    #[test]
    fn retention_days_of_u32_max_is_refused() {
        let e = parse(&format!("{MINIMAL}[store]\nretention_days = 4294967295\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.retention_days: ") && e.contains("is outside 1..=3650 days"),
            "{e}"
        );
    }

    /// Every numeric setting, set to the largest value TOML or its type holds, is refused by name.
    #[test]
    fn every_numeric_setting_has_an_upper_bound() {
        let cases = [
            (
                "[store]\nretention_days = 4294967295",
                "store.retention_days",
            ),
            ("[store]\ncapacity = 9223372036854775807", "store.capacity"),
            (
                "[ingest]\nmax_batch_wait_ms = 9223372036854775807",
                "ingest.max_batch_wait_ms",
            ),
            (
                "[ingest]\nmax_batch = 9223372036854775807",
                "ingest.max_batch",
            ),
            (
                "[ble]\nscan_watchdog_s = 9223372036854775807",
                "ble.scan_watchdog_s",
            ),
            (
                "[ble]\nadapter_retry_s = 9223372036854775807",
                "ble.adapter_retry_s",
            ),
            (
                "[ble]\nclock_tolerance_s = 9223372036854775807",
                "ble.clock_tolerance_s",
            ),
            (
                "[uplink]\nbroker = \"b\"\nbatch_size = 9223372036854775807",
                "uplink.batch_size",
            ),
            (
                "[uplink]\nbroker = \"b\"\nkeep_alive_s = 9223372036854775807",
                "uplink.keep_alive_s",
            ),
            (
                "[uplink]\nbroker = \"b\"\nmax_packet_size = 4294967295",
                "uplink.max_packet_size",
            ),
            (
                "[uplink]\nbroker = \"b\"\nbackoff_max_s = 9223372036854775807",
                "uplink.backoff_max_s",
            ),
            (
                "[uplink]\nbroker = \"b\"\nbackoff_initial_ms = 9223372036854775807",
                "uplink.backoff_initial_ms",
            ),
            (
                "[uplink]\nbroker = \"b\"\ndrain_timeout_ms = 9223372036854775807",
                "uplink.drain_timeout_ms",
            ),
        ];
        for (table, key) in cases {
            let e = parse(&format!("{MINIMAL}{table}\n")).expect_err(key);
            assert!(e.problems.iter().any(|p| p.key() == key), "{key}: {e}");
        }
        let device_cases = [
            (
                "driver = \"sim\"\ninterval_ms = 9223372036854775807",
                "device[0].interval_ms",
            ),
            (
                "driver = \"sim\"\nexpected_interval_s = 9223372036854775807",
                "device[0].expected_interval_s",
            ),
            (
                "driver = \"jsonl\"\npath = \"/tmp/x\"\nbaud = 4294967295",
                "device[0].baud",
            ),
        ];
        for (device, key) in device_cases {
            let e = parse(&MINIMAL.replace("driver = \"sim\"", device)).expect_err(key);
            assert!(e.problems.iter().any(|p| p.key() == key), "{key}: {e}");
        }
        let e = parse(
            &format!("{MINIMAL}[patient.alerts.technical]\nrejections_to_alarm = 4294967295\n")
                .replace(
                    "[[device]]\nid = \"sim1\"\npatient = \"p1\"\ndriver = \"sim\"\n",
                    "",
                ),
        )
        .unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.key() == "patient[0].alerts.technical.rejections_to_alarm"),
            "{e}"
        );
    }

    #[test]
    fn config_file_that_is_a_device_is_refused_without_reading_it() {
        let e = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/dev/zero: the config file is a character device, not a regular file"
        );
    }

    #[test]
    fn embedded_demo_config_is_valid() {
        Config::demo(Path::new("/tmp/vg-demo")).unwrap();
    }

    #[test]
    fn annotated_reference_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vitalgate.toml");
        Config::load(&path).unwrap();
    }
}
