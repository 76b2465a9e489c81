//! The details of the audit entries the daemon writes, built in one place so that what goes
//! into the log is reviewable: ids (device, patient pseudonym, alert), counts, paths and
//! reasons; never an NHS Number, a reading's value or key material.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::alerts::AlertEvent;
use crate::config::Config;

/// `daemon_started`: what this process runs.
pub fn started(config: &Config, gateway: &str) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gateway": gateway,
        "devices": config.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        "patients": config.patients.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        "uplink": config.uplink.is_some(),
    })
}

/// The device bindings and patients an applied configuration changed, one entry each:
/// `device_bound`, `device_unbound`, `patient_added`, `patient_removed`,
/// `patient_identity_changed` (the NHS Number changed; it is not named).
pub fn config_changes(old: &Config, new: &Config) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let patients = |c: &Config| -> BTreeMap<String, Option<String>> {
        c.patients
            .iter()
            .map(|p| (p.id.clone(), p.nhs_number.clone()))
            .collect()
    };
    let (before, after) = (patients(old), patients(new));
    for id in after.keys().filter(|id| !before.contains_key(*id)) {
        out.push(("patient_added", json!({ "patient": id })));
    }
    for (id, nhs) in &after {
        if before.get(id).is_some_and(|old| old != nhs) {
            out.push(("patient_identity_changed", json!({ "patient": id })));
        }
    }
    let devices = |c: &Config| -> BTreeMap<String, (String, String)> {
        c.devices
            .iter()
            .map(|d| (d.id.clone(), (d.patient.clone(), d.driver.clone())))
            .collect()
    };
    let (before_d, after_d) = (devices(old), devices(new));
    for (id, (patient, driver)) in &before_d {
        if after_d.get(id).map(|a| &a.0) != Some(patient) {
            out.push((
                "device_unbound",
                json!({ "device": id, "patient": patient, "driver": driver }),
            ));
        }
    }
    for (id, (patient, driver)) in &after_d {
        if before_d.get(id).map(|b| &b.0) != Some(patient) {
            out.push((
                "device_bound",
                json!({ "device": id, "patient": patient, "driver": driver }),
            ));
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        out.push(("patient_removed", json!({ "patient": id })));
    }
    out
}

/// `alert_raised`, `alert_escalated`, `alert_de_escalated` or `alert_cleared`: which alert,
/// for whom, at what priority; the values behind it stay in the alert record.
pub fn alert(event: &AlertEvent) -> (String, Value) {
    (
        format!("alert_{}", event.transition.as_str()),
        json!({
            "alert_id": event.alert_id,
            "event_id": event.event_id,
            "rule": event.rule,
            "patient": event.patient,
            "device": event.device,
            "priority": event.priority.as_str(),
            "at": crate::status::rfc3339(event.time),
        }),
    )
}
