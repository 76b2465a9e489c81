//! The demo's "platform": an MQTT 5 subscriber with its own client certificate, subscribed to
//! `{prefix}/gw/+/#`, printing what the central platform would receive, one short line each.
//!
//! - an Observation: time, patient (masked NHS Number `***-***-5919`, else the pseudonym),
//!   metric, value and unit, and the first 8 hex digits of the Observation id;
//! - a NEWS2 total Observation: the total and its Chart 2 band;
//! - an alert event: priority, transition, rule and the engine's text, highlighted;
//! - the gateway status (retained): online or offline, and since when.
//!
//! [`describe`] is pure (payload in, lines out) and tested; [`start`] owns the network side.
//! This is a viewer, not a platform: it acknowledges nothing beyond the MQTT PUBACK, stores
//! nothing, and never prints a full NHS Number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::certs::DemoPki;
use super::DemoError;
use crate::alerts::news2::{risk_band, RiskBand};
use crate::fhir::codes::{DEVICE_SYSTEM, NEWS2_TOTAL, NHS_NUMBER_SYSTEM};
use crate::uplink::UplinkConfig;

/// Widest line printed (an 80-column terminal).
pub const WIDTH: usize = 80;

/// What the viewer knows that the payloads do not say: which patient a device belongs to
/// (a platform has this from enrolment).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// `{gateway}/{device}` (the FHIR device identifier) -> patient pseudonym.
    pub device_patient: HashMap<String, String>,
    /// The patient enrolled without an NHS Number, whom `urn:vitalgate:gateway-patient`
    /// subjects denote (fhir/codes.rs: the platform maps gateway -> patient at enrolment).
    pub gateway_patient: Option<String>,
}

/// Terminal styling: ANSI colour only when stdout is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Whether to emit ANSI escape codes.
    pub colour: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

/// Counts of what the platform received.
#[derive(Debug, Default)]
pub struct Received {
    /// Observations (vital signs and NEWS2 totals).
    pub observations: AtomicU64,
    /// Alert events.
    pub alerts: AtomicU64,
    /// The last gateway status printed says `offline`.
    pub gateway_offline: AtomicBool,
}

/// `***-***-5919`: only the last four digits of an NHS Number are ever shown.
pub fn mask_nhs_number(n: &str) -> String {
    let digits: Vec<char> = n.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("***-***-{tail}")
}

/// A pseudonym shortened for the screen (`demo-patient-stable` -> `stable`).
fn short_patient(p: &str) -> &str {
    p.strip_prefix("demo-patient-").unwrap_or(p)
}

/// Cuts `s` to at most `n` characters, marking the cut with `~`.
pub(crate) fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('~');
        out
    }
}

/// `HH:MM:SS` of an RFC 3339 time, as written (the device's offset kept).
fn clock(t: Option<&str>) -> String {
    t.and_then(|t| t.get(11..19))
        .unwrap_or("--:--:--")
        .to_owned()
}

fn number(v: &Json) -> String {
    match v {
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.clone(),
        _ => "?".to_owned(),
    }
}

fn quantity(q: &Json) -> (String, String) {
    let unit = q
        .get("code")
        .or_else(|| q.get("unit"))
        .and_then(Json::as_str)
        .unwrap_or("");
    let unit = match unit {
        "Cel" => "°C",
        "[degF]" => "°F",
        "{ScoreOf}" => "",
        u => u,
    };
    (
        q.get("value").map(number).unwrap_or_default(),
        unit.to_owned(),
    )
}

fn who(obs: &Json, dir: &Directory) -> String {
    let subject = &obs["subject"]["identifier"];
    if subject["system"].as_str() == Some(NHS_NUMBER_SYSTEM) {
        if let Some(n) = subject["value"].as_str() {
            return mask_nhs_number(n);
        }
    }
    let device = &obs["device"]["identifier"];
    if device["system"].as_str() == Some(DEVICE_SYSTEM) {
        if let Some(p) = device["value"]
            .as_str()
            .and_then(|d| dir.device_patient.get(d))
        {
            return short_patient(p).to_owned();
        }
    }
    match &dir.gateway_patient {
        Some(p) => short_patient(p).to_owned(),
        None => "(gateway)".to_owned(),
    }
}

fn is_news2_total(obs: &Json) -> bool {
    obs["code"]["coding"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["code"].as_str() == Some(NEWS2_TOTAL.code))
    })
}

fn band_name(b: RiskBand) -> &'static str {
    match b {
        RiskBand::Low => "low",
        RiskBand::LowMedium => "low-medium",
        RiskBand::Medium => "medium",
        RiskBand::High => "HIGH",
    }
}

fn value_text(obs: &Json) -> String {
    if let Some(q) = obs.get("valueQuantity") {
        let (v, u) = quantity(q);
        return if u.is_empty() { v } else { format!("{v} {u}") };
    }
    if let Some(c) = obs.get("valueCodeableConcept") {
        let code = c["coding"][0]["code"].as_str();
        return c["text"].as_str().or(code).unwrap_or("?").to_owned();
    }
    if let Some(parts) = obs.get("component").and_then(Json::as_array) {
        let mut values = Vec::new();
        let mut unit = String::new();
        for p in parts {
            match p.get("valueQuantity") {
                Some(q) => {
                    let (v, u) = quantity(q);
                    values.push(v);
                    unit = u;
                }
                None => values.push("-".to_owned()),
            }
        }
        return format!("{} {unit}", values.join("/")).trim_end().to_owned();
    }
    if obs.get("dataAbsentReason").is_some() {
        return "absent".to_owned();
    }
    // A finding such as "Breathing room air": the code is the statement, there is no value.
    String::new()
}

fn observation_lines(obs: &Json, dir: &Directory, style: Style) -> Vec<String> {
    let time = clock(obs["effectiveDateTime"].as_str());
    let patient = fit(&who(obs, dir), 13);
    let id: String = obs["id"].as_str().unwrap_or("").chars().take(8).collect();
    if is_news2_total(obs) {
        let total = obs["valueQuantity"]["value"].as_u64().unwrap_or(0);
        let any_three = obs["component"].as_array().is_some_and(|c| {
            c.iter()
                .any(|p| p["valueQuantity"]["value"].as_u64() == Some(3))
        });
        let band = risk_band(u8::try_from(total).unwrap_or(u8::MAX), any_three);
        let text = format!("NEWS2 total {total:<2} band {}", band_name(band));
        let text = match band {
            RiskBand::High => style.paint("1;31", &text),
            RiskBand::Medium | RiskBand::LowMedium => style.paint("33", &text),
            RiskBand::Low => text,
        };
        return vec![format!("news2 {time}  {patient:<13}  {text}  obs {id}")];
    }
    let metric = obs["code"]["text"]
        .as_str()
        .or(obs["code"]["coding"][0]["display"].as_str())
        .unwrap_or("?");
    let value = fit(&value_text(obs), 14);
    let line = format!(
        "obs   {time}  {patient:<13}  {:<19} {value:>14}  obs {id}",
        fit(metric, 19)
    );
    let mut lines = vec![fit(&line, WIDTH)];
    // Why a value is missing, and what the device flagged, on an indented second line.
    let mut why = Vec::new();
    if let Some(code) = obs["dataAbsentReason"]["coding"][0]["code"].as_str() {
        why.push(format!("data absent: {code}"));
    }
    if let Some(notes) = obs["note"].as_array() {
        why.extend(
            notes
                .iter()
                .filter_map(|n| n["text"].as_str())
                .map(|t| t.strip_prefix("vitalgate ").unwrap_or(t).to_owned()),
        );
    }
    if !why.is_empty() {
        lines.push(fit(&format!("      {}", why.join("; ")), WIDTH));
    }
    lines
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word = fit(word, width);
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn alert_lines(ev: &Json, style: Style) -> Vec<String> {
    let priority = ev["priority"].as_str().unwrap_or("?");
    let transition = ev["transition"].as_str().unwrap_or("?");
    let rule = ev["rule"].as_str().unwrap_or("?");
    let patient = short_patient(ev["patient"].as_str().unwrap_or("?"));
    let time = clock(ev["time"].as_str());
    let colour = match (transition, priority) {
        ("cleared", _) => "32",
        (_, "high") => "1;31",
        (_, "medium") => "1;33",
        _ => "1;36",
    };
    let head = format!(
        "ALERT {time} {patient:<13} {} {transition} {rule}",
        priority.to_uppercase()
    );
    let mut out = vec![style.paint(colour, &fit(&head, WIDTH))];
    let mut text = ev["text"].as_str().unwrap_or("").to_owned();
    if let (Some(total), Some(band)) = (ev["news2"]["total"].as_u64(), ev["news2"]["band"].as_str())
    {
        text = format!("[NEWS2 {total}, {band}] {text}");
    }
    out.extend(
        wrap(&text, WIDTH - 6)
            .into_iter()
            .map(|l| format!("      {l}")),
    );
    out
}

fn status_lines(topic: &str, st: &Json, retained: bool, style: Style) -> Vec<String> {
    let gateway = st["gateway"]
        .as_str()
        .or_else(|| topic.split('/').rev().nth(1))
        .unwrap_or("?");
    let state = st["state"].as_str().unwrap_or("?");
    let version = st["version"].as_str().unwrap_or("?");
    let since = clock(st["since"].as_str());
    let retained = if retained { " (retained)" } else { "" };
    let line = fit(
        &format!("GATEWAY {gateway} {state} since {since} UTC, vitalgate {version}{retained}"),
        WIDTH,
    );
    let colour = if state == "online" { "32" } else { "1;33" };
    vec![style.paint(colour, &line)]
}

/// The lines to print for one message on `topic`. Unparseable payloads give one line saying
/// so (the platform would reject them), never a panic.
pub fn describe(
    topic: &str,
    payload: &[u8],
    retained: bool,
    dir: &Directory,
    style: Style,
) -> Vec<String> {
    let kind = topic.rsplit('/').next().unwrap_or("");
    let json: Json = match serde_json::from_slice(payload) {
        Ok(j) => j,
        Err(e) => {
            return vec![fit(
                &format!("?     {topic}: {} bytes, not JSON ({e})", payload.len()),
                WIDTH,
            )]
        }
    };
    match kind {
        "obs" => observation_lines(&json, dir, style),
        "alert" => alert_lines(&json, style),
        "status" => status_lines(topic, &json, retained, style),
        "audit" => vec![fit(
            &format!(
                "AUDIT   #{} {}",
                json["seq"].as_u64().map_or("?".into(), |n| n.to_string()),
                json["event"].as_str().unwrap_or("?")
            ),
            WIDTH,
        )],
        _ => vec![fit(
            &format!("?     {topic}: {} bytes", payload.len()),
            WIDTH,
        )],
    }
}

/// Connects the platform subscriber to the demo broker and prints what arrives until
/// `shutdown`. Returns once the subscription is acknowledged, so nothing published after it
/// is missed.
pub async fn start(
    pki: &DemoPki,
    port: u16,
    prefix: &str,
    dir: Directory,
    style: Style,
    print: bool,
    shutdown: CancellationToken,
) -> Result<(tokio::task::JoinHandle<()>, Arc<Received>), DemoError> {
    let tls_cfg = UplinkConfig {
        broker: "localhost".into(),
        ca_file: pki.ca.clone(),
        cert_file: pki.platform_cert.clone(),
        key_file: pki.platform_key.clone(),
        ..UplinkConfig::default()
    };
    let tls = crate::uplink::tls::load(&tls_cfg, time::OffsetDateTime::now_utc())
        .map_err(|e| DemoError::Platform(e.to_string()))?;
    let mut o = MqttOptions::new("demo-platform", "127.0.0.1", port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config,
        )));
    let (client, mut events) = AsyncClient::new(o, 100);
    let filter = format!("{prefix}/gw/+/#");
    let received = Arc::new(Received::default());
    let counts = received.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut last_error: Option<String> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    last_error = None;
                    if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, "platform cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    match topic.rsplit('/').next() {
                        Some("obs") => counts.observations.fetch_add(1, Ordering::Relaxed),
                        Some("alert") => counts.alerts.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    let lines = if print {
                        describe(&topic, &p.payload, p.retain, &dir, style)
                    } else {
                        Vec::new()
                    };
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    for l in lines {
                        let _ = writeln!(out, "{l}");
                    }
                    drop(out);
                    if topic.ends_with("/status") {
                        let state = serde_json::from_slice::<Json>(&p.payload)
                            .ok()
                            .and_then(|j| j["state"].as_str().map(str::to_owned));
                        counts
                            .gateway_offline
                            .store(state.as_deref() == Some("offline"), Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "platform subscriber connection failed; retrying");
                        last_error = Some(msg);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    });
    match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
        Ok(Ok(())) => Ok((task, received)),
        _ => {
            task.abort();
            Err(DemoError::Platform(format!(
                "no SUBACK for {prefix}/gw/+/# within 10 s from the demo broker on 127.0.0.1:{port}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Style = Style { colour: false };

    fn dir() -> Directory {
        Directory {
            device_patient: [(
                "demo-gw-0001/sim-faulty".to_owned(),
                "demo-patient-faulty-probe".to_owned(),
            )]
            .into_iter()
            .collect(),
            gateway_patient: None,
        }
    }

    fn golden(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/golden/fhir/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn one(topic: &str, payload: &[u8]) -> String {
        let lines = describe(topic, payload, false, &dir(), PLAIN);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines.into_iter().next().unwrap()
    }

    // clinical.md §3.3: the NHS Number is shown masked to its last four digits.
    #[test]
    fn mask_nhs_number_keeps_only_the_last_four_digits() {
        assert_eq!(mask_nhs_number("9434765919"), "***-***-5919");
        assert_eq!(mask_nhs_number("943 476 5919"), "***-***-5919");
        assert_eq!(mask_nhs_number("12"), "***-***-12");
    }

    // demo.md item 4: time, masked NHS Number, metric, value + unit, id prefix.
    #[test]
    fn describe_spo2_observation_is_one_line_with_masked_patient_value_and_id() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("spo2"));
        assert!(line.starts_with("obs   "), "{line}");
        assert!(line.contains("Oxygen saturation"), "{line}");
        assert!(line.contains("97 %"), "{line}");
        assert!(line.contains("obs 4b816503"), "{line}");
        assert!(line.contains("***-***-5919"), "{line}");
        assert!(line.chars().count() <= WIDTH, "{line}");
    }

    #[test]
    fn describe_observation_never_shows_the_full_nhs_number() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("heart_rate"));
        assert!(line.contains("***-***-5919"), "{line}");
        assert!(!line.contains("9434765919"), "{line}");
        assert!(
            line.contains("Heart rate") && line.contains("72 /min"),
            "{line}"
        );
    }

    #[test]
    fn describe_observation_without_nhs_number_names_the_patient_of_the_device() {
        let mut obs: Json = serde_json::from_slice(&golden("heart_rate")).unwrap();
        obs["subject"] = json!({"identifier": {"system": "urn:vitalgate:gateway-patient", "value": "demo-gw-0001"}});
        obs["device"]["identifier"]["value"] = json!("demo-gw-0001/sim-faulty");
        let line = one(
            "rpm/v1/gw/demo-gw-0001/obs",
            &serde_json::to_vec(&obs).unwrap(),
        );
        assert!(line.contains("faulty-probe"), "{line}");
    }

    #[test]
    fn describe_news2_of_gateway_patient_names_the_patient_enrolled_without_nhs_number() {
        let mut obs: Json = serde_json::from_slice(&golden("news2")).unwrap();
        obs["subject"] = json!({"identifier": {"system": "urn:vitalgate:gateway-patient", "value": "demo-gw-0001"}});
        let d = Directory {
            gateway_patient: Some("demo-patient-faulty-probe".into()),
            ..dir()
        };
        let lines = describe(
            "rpm/v1/gw/demo-gw-0001/obs",
            &serde_json::to_vec(&obs).unwrap(),
            false,
            &d,
            PLAIN,
        );
        assert!(lines[0].contains("faulty-probe"), "{lines:?}");
    }

    #[test]
    fn describe_room_air_finding_shows_the_code_without_a_value() {
        let line = one(
            "rpm/v1/gw/hub-0001/obs",
            &golden("inspired_oxygen_room_air"),
        );
        assert!(line.contains("Breathing room air"), "{line}");
        assert!(!line.contains('?'), "{line}");
    }

    #[test]
    fn describe_acvpu_shows_the_whole_finding_text() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("acvpu"));
        assert!(
            line.contains("ACVPU") && line.contains("Mentally alert"),
            "{line}"
        );
    }

    #[test]
    fn describe_blood_pressure_panel_shows_systolic_over_diastolic() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("blood_pressure_panel"));
        assert!(line.contains("128/82 mm[Hg]"), "{line}");
    }

    #[test]
    fn describe_absent_value_says_absent_then_the_reason_and_device_flags() {
        let lines = describe(
            "rpm/v1/gw/hub-0001/obs",
            &golden("absent_spo2_missing"),
            false,
            &dir(),
            PLAIN,
        );
        assert!(
            lines[0].contains("Oxygen saturation") && lines[0].contains("absent"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "      data absent: unknown; device flags: sensor_off"
        );
    }

    #[test]
    fn describe_temperature_shows_degrees_celsius() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("body_temperature"));
        assert!(line.contains("°C"), "{line}");
    }

    // clinical.md §2.3 Chart 2: the golden NEWS2 total is 6 -> medium.
    #[test]
    fn describe_news2_total_shows_total_and_chart2_band() {
        let line = one("rpm/v1/gw/hub-0001/obs", &golden("news2"));
        assert!(line.starts_with("news2 "), "{line}");
        assert!(
            line.contains("NEWS2 total 6") && line.contains("band medium"),
            "{line}"
        );
    }

    // clinical.md §2.3: any single parameter scoring 3 with total <= 4 is low-medium.
    #[test]
    fn describe_news2_total_with_a_single_three_is_low_medium() {
        let mut obs: Json = serde_json::from_slice(&golden("news2")).unwrap();
        obs["valueQuantity"]["value"] = json!(3);
        for (i, c) in obs["component"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            c["valueQuantity"]["value"] = json!(if i == 0 { 3 } else { 0 });
        }
        let line = one("rpm/v1/gw/hub-0001/obs", &serde_json::to_vec(&obs).unwrap());
        assert!(line.contains("band low-medium"), "{line}");
    }

    // schemas/alert-event.v1.json: priority, transition, rule and text are shown.
    #[test]
    fn describe_alert_shows_priority_rule_and_wrapped_text() {
        let ev = json!({
            "priority": "high", "transition": "raised", "rule": "news2:aggregate",
            "patient": "demo-patient-deteriorating", "time": "2026-11-23T10:00:05Z",
            "news2": {"total": 7, "band": "high"},
            "text": "NEWS2 aggregate 7 (high): urgent or emergency response; the clinical team must assess now. ".repeat(2),
        });
        let lines = describe(
            "rpm/v1/gw/g/alert",
            &serde_json::to_vec(&ev).unwrap(),
            false,
            &dir(),
            PLAIN,
        );
        assert!(
            lines[0].starts_with("ALERT 10:00:05 deteriorating"),
            "{lines:?}"
        );
        assert!(
            lines[0].contains("HIGH") && lines[0].contains("news2:aggregate"),
            "{lines:?}"
        );
        assert!(lines[1].contains("[NEWS2 7, high]"), "{lines:?}");
        assert!(lines.len() > 2, "long text wraps: {lines:?}");
        assert!(
            lines.iter().all(|l| l.chars().count() <= WIDTH),
            "{lines:?}"
        );
    }

    #[test]
    fn describe_alert_header_keeps_a_long_technical_rule_whole() {
        let ev = json!({
            "priority": "low", "transition": "de_escalated", "rule": "technical:low_battery:sim-faulty",
            "patient": "demo-patient-faulty-probe", "time": "2026-11-23T10:00:05Z", "text": "t",
        });
        let lines = describe(
            "rpm/v1/gw/g/alert",
            &serde_json::to_vec(&ev).unwrap(),
            false,
            &dir(),
            PLAIN,
        );
        assert_eq!(
            lines[0],
            "ALERT 10:00:05 faulty-probe  LOW de_escalated technical:low_battery:sim-faulty"
        );
    }

    #[test]
    fn describe_alert_is_coloured_only_when_asked() {
        let ev = serde_json::to_vec(&json!({"priority": "high", "transition": "raised", "rule": "r", "patient": "p", "text": "t"})).unwrap();
        let plain = describe("a/alert", &ev, false, &dir(), PLAIN);
        let coloured = describe("a/alert", &ev, false, &dir(), Style { colour: true });
        assert!(!plain[0].contains('\x1b'));
        assert!(coloured[0].starts_with("\x1b[1;31m"), "{coloured:?}");
    }

    #[test]
    fn describe_audit_shows_seq_and_event() {
        let e = br#"{"seq":7,"time":"2026-11-23T10:00:00Z","event":"daemon_started","details":{},"prev":"00","mac":"11"}"#;
        let lines = describe("rpm/v1/gw/demo-gw-0001/audit", e, false, &dir(), PLAIN);
        assert_eq!(lines, ["AUDIT   #7 daemon_started"]);
    }

    #[test]
    fn describe_status_shows_state_and_retained() {
        let st = br#"{"state":"online","gateway":"demo-gw-0001","version":"0.1.0","since":"2026-11-23T10:00:00Z"}"#;
        let lines = describe("rpm/v1/gw/demo-gw-0001/status", st, true, &dir(), PLAIN);
        assert_eq!(
            lines,
            vec!["GATEWAY demo-gw-0001 online since 10:00:00 UTC, vitalgate 0.1.0 (retained)"]
        );
    }

    #[test]
    fn describe_payload_that_is_not_json_says_so_without_panicking() {
        let line = one("rpm/v1/gw/g/obs", b"\xff\x00garbage");
        assert!(line.contains("not JSON"), "{line}");
    }

    #[test]
    fn describe_observation_of_unexpected_shape_does_not_panic() {
        for p in [
            &b"{}"[..],
            b"[]",
            b"null",
            b"{\"valueQuantity\":{\"value\":[1]}}",
        ] {
            let lines = describe("rpm/v1/gw/g/obs", p, false, &dir(), PLAIN);
            assert_eq!(lines.len(), 1);
        }
    }
}
