//! The fleet overlay: the part of the config the platform may set, in the local config's own
//! TOML schema, and how it is laid over the local config.
//!
//! The fleet may set patients (with their NHS Numbers and alert rules, NEWS2 options
//! included), devices and their bindings, `store.retention_days` and
//! `status.telemetry_interval_s`. Everything else is
//! local-only: key and certificate paths, the state directory, the broker, trusted fleet keys,
//! the annunciator command (it runs a program). A local-only key in an overlay refuses the
//! whole document, naming the key, so that a platform can never reach a hub's keys or make it
//! run a command through configuration.
//!
//! Laying over: a list the overlay holds (`[[patient]]`, `[[device]]`) replaces the local list
//! whole (the platform owns the bindings; `patient = []` removes them all); a list it does not
//! hold stays as configured locally; a scalar it holds replaces the local one.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::config::{Config, DeviceConfig, PatientConfig};

/// Keys the fleet may set, as dotted paths (a whole table or array where it ends there).
const FLEET_SETTABLE: &[&str] = &[
    "patient",
    "device",
    "store.retention_days",
    "status.telemetry_interval_s",
    "logging.level",
];

/// The local config's sections: a key under one of these that is not fleet-settable is a
/// local-only key (refused by name), anything else is unknown (refused as invalid).
const LOCAL_SECTIONS: &[&str] = &[
    "gateway", "store", "ingest", "uplink", "alerts", "ble", "fleet", "status", "logging",
];

/// An overlay, parsed and checked for local-only keys (not yet validated against a config).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    #[serde(default, rename = "patient")]
    pub patients: Option<Vec<PatientConfig>>,
    #[serde(default, rename = "device")]
    pub devices: Option<Vec<DeviceConfig>>,
    #[serde(default)]
    pub store: Option<StoreOverlay>,
    #[serde(default)]
    pub status: Option<StatusOverlay>,
    /// `[logging] level` (the log filter, applied live).
    #[serde(default)]
    pub logging: Option<crate::logging::LoggingConfig>,
}

/// The fleet-settable part of `[status]`: how often the status telemetry is published.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusOverlay {
    pub telemetry_interval_s: Option<u64>,
}

/// The fleet-settable part of `[store]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreOverlay {
    pub retention_days: Option<u32>,
}

/// Why an overlay's text is refused (before it is laid over anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error("local-only keys the fleet may not set: {}", .0.join(", "))]
    LocalOnly(Vec<String>),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Overlay {
    /// Parses overlay TOML. Local-only keys are found first (all of them, by name), then the
    /// types are checked against the local config's schema.
    pub fn parse(text: &str) -> Result<Overlay, OverlayError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            OverlayError::Invalid(vec![format!("overlay: {}", super::redact(e.message()))])
        })?;
        let mut local_only = BTreeSet::new();
        let mut unknown = Vec::new();
        walk(&table, "", &mut local_only, &mut unknown);
        if !local_only.is_empty() {
            return Err(OverlayError::LocalOnly(local_only.into_iter().collect()));
        }
        if !unknown.is_empty() {
            return Err(OverlayError::Invalid(unknown));
        }
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let key = crate::toml_path::of_error(&e, text);
            let key = if key.is_empty() { ".".to_owned() } else { key };
            // The message only, never toml's snippet of the source line, and with anything
            // shaped like an NHS Number masked (serde names the offending value).
            let msg = super::redact(e.message());
            OverlayError::Invalid(vec![format!("{key}: {msg}")])
        })
    }

    /// The local config with this overlay laid over it (not validated: see
    /// [`Overlay::effective`]).
    pub fn lay_over(&self, local: &Config) -> Config {
        let mut c = local.clone();
        if let Some(p) = &self.patients {
            c.patients = p.clone();
        }
        if let Some(d) = &self.devices {
            c.devices = d.clone();
        }
        if let Some(days) = self.store.as_ref().and_then(|s| s.retention_days) {
            c.store.retention_days = days;
        }
        if let Some(s) = self.status.as_ref().and_then(|s| s.telemetry_interval_s) {
            c.status.telemetry_interval_s = s;
        }
        if let Some(level) = self.logging.as_ref().and_then(|l| l.level.clone()) {
            c.logging.level = Some(level);
        }
        c
    }

    /// The effective config, validated whole (NHS Numbers by Modulus 11, bindings to known
    /// patients, drivers, alert rules): every problem, by key.
    pub fn effective(&self, local: &Config) -> Result<Config, OverlayError> {
        let c = self.lay_over(local);
        let problems = c.problems();
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(OverlayError::Invalid(
                problems.into_iter().map(|p| p.to_string()).collect(),
            ))
        }
    }
}

fn walk(
    table: &toml::Table,
    prefix: &str,
    local_only: &mut BTreeSet<String>,
    unknown: &mut Vec<String>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if FLEET_SETTABLE.contains(&key.as_str()) {
            continue;
        }
        let under_settable = FLEET_SETTABLE
            .iter()
            .any(|s| s.starts_with(&format!("{key}.")));
        match v {
            toml::Value::Table(t) if under_settable => walk(t, &key, local_only, unknown),
            _ if under_settable => unknown.push(format!("{key}: must be a table")),
            _ if prefix.is_empty() && !LOCAL_SECTIONS.contains(&key.as_str()) => {
                unknown.push(format!("{key}: unknown key"))
            }
            // A local section, or a key of a section the fleet may set only part of.
            _ => {
                local_only.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn local() -> Config {
        Config::parse(
            "[gateway]\nid = \"gw-1\"\n[[patient]]\nid = \"p1\"\n[[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\n",
            Path::new("local.toml"),
        )
        .unwrap()
    }

    #[test]
    fn overlay_replaces_patients_and_devices_and_keeps_local_settings() {
        let o = Overlay::parse(
            "[store]\nretention_days = 30\n[[patient]]\nid = \"p2\"\nnhs_number = \"9434765919\"\n[[device]]\nid = \"d1\"\npatient = \"p2\"\ndriver = \"sim\"\n",
        )
        .unwrap();
        let c = o.effective(&local()).unwrap();
        assert_eq!(c.patients.len(), 1);
        assert_eq!(c.patients[0].id, "p2");
        assert_eq!(c.devices[0].patient, "p2");
        assert_eq!(c.store.retention_days, 30);
        assert_eq!(c.gateway.id.as_deref(), Some("gw-1"));
    }

    #[test]
    fn empty_overlay_changes_nothing() {
        assert_eq!(
            Overlay::parse("").unwrap().effective(&local()).unwrap(),
            local()
        );
    }

    #[test]
    fn local_only_keys_are_refused_by_name_all_at_once() {
        let e = Overlay::parse(
            "[store]\nkey_file = \"/tmp/k\"\nretention_days = 3\n[gateway]\nstate_dir = \"/tmp\"\n[fleet]\ntrusted_keys = [\"/tmp/evil.pub\"]\n[alerts]\nannunciator_command = [\"sh\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            OverlayError::LocalOnly(vec![
                "alerts".into(),
                "fleet".into(),
                "gateway".into(),
                "store.key_file".into()
            ])
        );
    }

    #[test]
    fn uplink_section_is_local_only() {
        assert!(matches!(
            Overlay::parse("[uplink]\nbroker = \"evil.example\"\n"),
            Err(OverlayError::LocalOnly(k)) if k == vec!["uplink".to_string()]
        ));
    }

    #[test]
    fn unknown_top_level_key_is_invalid() {
        assert!(matches!(
            Overlay::parse("colour = \"blue\"\n"),
            Err(OverlayError::Invalid(v)) if v[0].contains("colour")
        ));
    }

    #[test]
    fn wrong_type_names_the_key_and_not_the_value() {
        let e = Overlay::parse("[[patient]]\nid = \"p1\"\nnhs_number = 9434765919\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("patient[0].nhs_number"), "{e}");
        assert!(!e.contains("9434765919"), "NHS Number in the message: {e}");
    }

    #[test]
    fn invalid_nhs_number_is_refused_by_modulus_11_and_redacted() {
        let o = Overlay::parse("[[patient]]\nid = \"p1\"\nnhs_number = \"9434765918\"\n").unwrap();
        let e = o.effective(&local()).unwrap_err().to_string();
        assert!(e.contains("patient[0].nhs_number"), "{e}");
        assert!(!e.contains("9434765918"), "{e}");
    }

    #[test]
    fn removing_a_patient_whose_device_stays_is_invalid() {
        let o = Overlay::parse("[[patient]]\nid = \"p2\"\n").unwrap();
        let e = o.effective(&local()).unwrap_err().to_string();
        assert!(e.contains("device[0].patient"), "{e}");
    }

    #[test]
    fn invalid_alert_rule_is_refused() {
        let o = Overlay::parse(
            "[[patient]]\nid = \"p1\"\n[patient.alerts]\nnews2_freshness_secs = 0\n",
        )
        .unwrap();
        let e = o.effective(&local()).unwrap_err().to_string();
        assert!(e.contains("patient[0].alerts.news2_freshness_secs"), "{e}");
    }

    #[test]
    fn the_fleet_sets_the_telemetry_interval_within_its_range_and_no_other_status_key() {
        let o = Overlay::parse("[status]\ntelemetry_interval_s = 30\n").unwrap();
        assert_eq!(
            o.effective(&local()).unwrap().status.telemetry_interval_s,
            30
        );
        let e = Overlay::parse("[status]\ntelemetry_interval_s = 5\n")
            .unwrap()
            .effective(&local())
            .unwrap_err()
            .to_string();
        assert!(e.contains("status.telemetry_interval_s"), "{e}");
        assert_eq!(
            Overlay::parse("[status]\nbacklog_max_age_s = 60\n").unwrap_err(),
            OverlayError::LocalOnly(vec!["status.backlog_max_age_s".into()])
        );
    }

    #[test]
    fn log_level_is_fleet_settable_and_checked() {
        let o = Overlay::parse("[logging]\nlevel = \"debug\"\n").unwrap();
        assert_eq!(
            o.effective(&local()).unwrap().logging.level.as_deref(),
            Some("debug")
        );
        let bad = Overlay::parse("[logging]\nlevel = \"vitalgate=loudest\"\n").unwrap();
        assert!(bad
            .effective(&local())
            .unwrap_err()
            .to_string()
            .contains("logging.level"));
    }

    #[test]
    fn zero_retention_is_invalid() {
        let o = Overlay::parse("[store]\nretention_days = 0\n").unwrap();
        assert!(o
            .effective(&local())
            .unwrap_err()
            .to_string()
            .contains("store.retention_days"));
    }
}
