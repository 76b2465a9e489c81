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

/// Replaces anything in `details` that reads as a valid NHS Number (10 digits, plain or
/// spaced 3-3-4, passing Modulus 11) with its redacted form. Details are built from ids and
/// counts; this is the backstop for text that quotes input, e.g. a refused config's parse
/// error that names the value it could not read.
pub fn scrub_nhs_numbers(details: &mut Value) {
    match details {
        Value::String(s) => {
            if let Some(clean) = scrub_text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_nhs_numbers),
        Value::Object(map) => map.values_mut().for_each(scrub_nhs_numbers),
        Value::Number(n) => {
            let text = n.to_string();
            if let Some(clean) = scrub_text(&text) {
                *details = Value::String(clean);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn scrub_text(s: &str) -> Option<String> {
    static CANDIDATE: std::sync::LazyLock<regex_lite::Regex> = std::sync::LazyLock::new(|| {
        regex_lite::Regex::new(r"\d{3}[ -]?\d{3}[ -]?\d{4}").expect("a valid literal pattern")
    });
    let bytes = s.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    for m in CANDIDATE.find_iter(s) {
        let digit_before = m.start() > 0 && bytes[m.start() - 1].is_ascii_digit();
        let digit_after = bytes.get(m.end()).is_some_and(u8::is_ascii_digit);
        let digits: String = m.as_str().chars().filter(char::is_ascii_digit).collect();
        if digit_before || digit_after || crate::nhs_number::NhsNumber::parse(&digits).is_err() {
            continue;
        }
        out.push_str(&s[last..m.start()]);
        out.push_str(&crate::config::redact_nhs_number(&digits));
        last = m.end();
    }
    (last > 0).then(|| {
        out.push_str(&s[last..]);
        out
    })
}

/// `data_keys_rotated`: which keys were replaced, by which, for which patient pseudonym, and
/// why (`command`, `fleet`). Key ids only, never key material.
pub fn data_keys_rotated(reason: &str, rotated: &[crate::store::keyring::Rotated]) -> Value {
    json!({ "reason": reason, "keys": rotated })
}

/// `data_keys_destroyed`: keys destroyed because nothing sealed with them remains.
pub fn data_keys_destroyed(reason: &str, destroyed: &[crate::store::keyring::Destroyed]) -> Value {
    json!({ "reason": reason, "keys": destroyed })
}

/// `patient_erased`: the pseudonym and counts only (never what the rows held).
pub fn patient_erased(erased: &crate::store::keyring::Erasure, via: &str) -> Value {
    json!({
        "patient": erased.patient,
        "via": via,
        "keys_destroyed": erased.keys_destroyed,
        "undelivered_rows": erased.undelivered_rows,
        "delivered_rows": erased.delivered_rows,
        "quarantined_rows": erased.quarantined_rows,
        "state_values": erased.state_values,
        "file_rewritten": erased.file_rewritten,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_redacted_wherever_they_appear_and_other_numbers_are_kept() {
        let mut details = json!({
            "problems": ["patient[0].nhs_number: invalid type: integer `9434765919`, expected a string"],
            "spaced": "943 476 5919 and 943-476-5919",
            "number": 9434765919u64,
            "not_mod_11": "9434765918",
            "longer": "19434765919",
            "rows": 10,
        });
        scrub_nhs_numbers(&mut details);
        assert_eq!(
            details["problems"][0],
            "patient[0].nhs_number: invalid type: integer `***-***-5919`, expected a string"
        );
        assert_eq!(details["spaced"], "***-***-5919 and ***-***-5919");
        assert_eq!(details["number"], "***-***-5919");
        assert_eq!(details["not_mod_11"], "9434765918");
        assert_eq!(details["longer"], "19434765919");
        assert_eq!(details["rows"], 10);
    }
}
