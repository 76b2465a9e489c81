//! Issue 13 ("Alerts a clinician can act on") through the REAL daemon: jsonl devices (files the
//! daemon follows) -> ingest -> SQLite outbox -> uplink -> Mosquitto with mutual TLS 1.3 ->
//! a platform subscriber (tests/support). What the subscriber receives is what is checked.
//!
//! - The ten worked cases of clinical.md §2.6, once written as full sets (one line per patient,
//!   all parameters at once) and once trickled one parameter per line, each line committed
//!   and delivered before the next is written.
//! - Scale 2 patients (clinical.md §2.2) in and out of their 88–92 % target, beside a Scale 1
//!   control with the same readings.
//! - `check-config` refusing an SpO2 rule that contradicts `spo2_scale = "scale_2"`.
//! - Every alert event received validates against `schemas/alert-event.v2.json` with Python's
//!   `jsonschema` (Draft 2020-12), a validator that shares no code with the producer.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::daemon::{wait_until, Daemon};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
/// SNOMED CT code of the NEWS2 total score (clinical.md §2.4).
const NEWS2_TOTAL: &str = "1104051000000101";
/// NEWS2 parameters in Chart 1 order: the order sets are trickled in.
const PARAMS: [&str; 7] = [
    "respiration_rate",
    "oxygen_saturation",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
];

// ---------------------------------------------------------------------------------------------
// The worked cases (clinical.md §2.6) and what the default rules must make of them
// ---------------------------------------------------------------------------------------------

struct Case {
    id: &'static str,
    rr: f64,
    spo2: f64,
    oxygen: bool,
    sbp: f64,
    pulse: f64,
    acvpu: &'static str,
    temp: f64,
    subs: [u64; 7],
    total: u64,
    band: &'static str,
    response: &'static str,
    /// (rule, priority) of every alert the case raises with the default rules.
    alerts: &'static [(&'static str, &'static str)],
}

const RED_MEDIUM: &str = "medium";

#[rustfmt::skip]
const CASES: [Case; 10] = [
    Case { id: "c01", rr: 12.0, spo2: 96.0, oxygen: false, sbp: 111.0, pulse: 51.0, acvpu: "A", temp: 36.1,
        subs: [0, 0, 0, 0, 0, 0, 0], total: 0, band: "low", response: "routine_monitoring", alerts: &[] },
    // SBP 219 scores 0 in NEWS2 but is above the default systolic_high rule (NICE NG136, > 179).
    Case { id: "c02", rr: 20.0, spo2: 100.0, oxygen: false, sbp: 219.0, pulse: 90.0, acvpu: "A", temp: 38.0,
        subs: [0, 0, 0, 0, 0, 0, 0], total: 0, band: "low", response: "routine_monitoring",
        alerts: &[("threshold:systolic_high", "medium")] },
    Case { id: "c03", rr: 16.0, spo2: 97.0, oxygen: false, sbp: 125.0, pulse: 91.0, acvpu: "A", temp: 37.0,
        subs: [0, 0, 0, 0, 1, 0, 0], total: 1, band: "low", response: "ward_based_response", alerts: &[] },
    Case { id: "c04", rr: 9.0, spo2: 94.0, oxygen: false, sbp: 120.0, pulse: 91.0, acvpu: "A", temp: 35.1,
        subs: [1, 1, 0, 0, 1, 0, 1], total: 4, band: "low", response: "ward_based_response", alerts: &[] },
    Case { id: "c05", rr: 8.0, spo2: 97.0, oxygen: false, sbp: 120.0, pulse: 80.0, acvpu: "A", temp: 37.0,
        subs: [3, 0, 0, 0, 0, 0, 0], total: 3, band: "low_medium", response: "urgent_ward_based_response",
        alerts: &[("news2:red:respiration_rate", RED_MEDIUM)] },
    Case { id: "c06", rr: 16.0, spo2: 97.0, oxygen: false, sbp: 120.0, pulse: 80.0, acvpu: "C", temp: 37.0,
        subs: [0, 0, 0, 0, 0, 3, 0], total: 3, band: "low_medium", response: "urgent_ward_based_response",
        alerts: &[("news2:red:consciousness", RED_MEDIUM)] },
    Case { id: "c07", rr: 18.0, spo2: 96.0, oxygen: false, sbp: 100.0, pulse: 111.0, acvpu: "A", temp: 38.1,
        subs: [0, 0, 0, 2, 2, 0, 1], total: 5, band: "medium", response: "urgent_response",
        alerts: &[("news2:aggregate", "medium"), ("threshold:temperature_high", "medium")] },
    Case { id: "c08", rr: 22.0, spo2: 94.0, oxygen: true, sbp: 115.0, pulse: 80.0, acvpu: "A", temp: 38.5,
        subs: [2, 1, 2, 0, 0, 0, 1], total: 6, band: "medium", response: "urgent_response",
        alerts: &[("news2:aggregate", "medium"), ("threshold:temperature_high", "medium")] },
    Case { id: "c09", rr: 25.0, spo2: 93.0, oxygen: false, sbp: 105.0, pulse: 95.0, acvpu: "A", temp: 37.0,
        subs: [3, 2, 0, 1, 1, 0, 0], total: 7, band: "high", response: "emergency_response",
        alerts: &[("news2:aggregate", "high"), ("news2:red:respiration_rate", RED_MEDIUM)] },
    Case { id: "c10", rr: 30.0, spo2: 85.0, oxygen: true, sbp: 85.0, pulse: 140.0, acvpu: "U", temp: 34.5,
        subs: [3, 3, 2, 3, 3, 3, 3], total: 20, band: "high", response: "emergency_response",
        alerts: &[
            ("news2:aggregate", "high"),
            ("news2:red:consciousness", RED_MEDIUM),
            ("news2:red:oxygen_saturation", RED_MEDIUM),
            ("news2:red:pulse", RED_MEDIUM),
            ("news2:red:respiration_rate", RED_MEDIUM),
            ("news2:red:systolic_bp", RED_MEDIUM),
            ("news2:red:temperature", RED_MEDIUM),
        ] },
];

fn number(metric: &str, value: f64, unit: &str) -> Value {
    json!({"metric": metric, "value": value, "unit": unit})
}

impl Case {
    /// The set's readings in Chart 1 order (air or oxygen as an inspired_oxygen reading:
    /// 2 l/min on oxygen, 0 on air).
    fn readings(&self) -> Vec<Value> {
        vec![
            number("respiratory_rate", self.rr, "/min"),
            number("spo2", self.spo2, "%"),
            number(
                "inspired_oxygen",
                if self.oxygen { 2.0 } else { 0.0 },
                "l/min",
            ),
            number("systolic_bp", self.sbp, "mm[Hg]"),
            number("pulse_rate", self.pulse, "/min"),
            json!({"metric": "acvpu", "code": self.acvpu}),
            number("body_temperature", self.temp, "Cel"),
        ]
    }

    fn expected_alerts(&self) -> BTreeSet<(String, String)> {
        self.alerts
            .iter()
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A gateway with one jsonl device per patient
// ---------------------------------------------------------------------------------------------

struct Patient {
    id: String,
    /// Lines of `[patient.alerts]`, empty for the defaults.
    alerts: String,
}

fn patient(id: &str, alerts: &str) -> Patient {
    Patient {
        id: id.into(),
        alerts: alerts.into(),
    }
}

struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Gateway {
    /// A gateway `cn` (certificate CN and gateway id) whose patient `p` has the jsonl device
    /// `dev-p` reading `p.jsonl` in the gateway directory.
    fn new(b: &Broker, cn: &str, patients: &[Patient]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(dir.path().join("master.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (cert, key) = b.write_client(cn, false);
        let mut text = format!(
            "[gateway]\nid = \"{cn}\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
             [store]\nkey_file = \"{d}/master.key\"\n\n[ingest]\nmax_batch_wait_ms = 20\n\n\
             [uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
             ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             backoff_initial_ms = 100\nbackoff_max_s = 1\n\n",
            b.port,
            b.path("ca.pem").display(),
            cert.display(),
            key.display()
        );
        for p in patients {
            text.push_str(&format!("[[patient]]\nid = \"{}\"\n", p.id));
            if !p.alerts.is_empty() {
                text.push_str(&format!("[patient.alerts]\n{}\n", p.alerts));
            }
            text.push('\n');
        }
        for p in patients {
            let file = dir.path().join(format!("{}.jsonl", p.id));
            std::fs::write(&file, "").unwrap();
            text.push_str(&format!(
                "[[device]]\nid = \"dev-{id}\"\npatient = \"{id}\"\ndriver = \"jsonl\"\npath = \"{}\"\n\n",
                file.display(),
                id = p.id
            ));
        }
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(&config, text).unwrap();
        Gateway { dir, config }
    }

    /// Appends `lines` to patient `p`'s device file in one write.
    fn write(&self, p: &str, lines: &[Value]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(format!("{p}.jsonl")))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.flush().unwrap();
    }

    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the outbox holds nothing undelivered (the broker acknowledged every row).
    async fn drained(&self) {
        wait_until(60, "an empty outbox backlog", || {
            self.status()["backlog"]["total"].as_u64() == Some(0)
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// What the platform received
// ---------------------------------------------------------------------------------------------

fn json_of(p: &[u8]) -> Value {
    serde_json::from_slice(p).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(p)))
}

fn events(rx: &Received) -> Vec<Value> {
    rx.on("/alert").iter().map(|p| json_of(p)).collect()
}

fn observations(rx: &Received) -> Vec<Value> {
    rx.on("/obs").iter().map(|p| json_of(p)).collect()
}

fn device_of(o: &Value) -> String {
    o["device"]["identifier"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn is_news2_total(o: &Value) -> bool {
    o["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["code"] == NEWS2_TOTAL)
}

/// Whether Observation `o` came from patient `p`'s device (`{gateway}/dev-{p}`).
fn from_device_of(o: &Value, p: &str) -> bool {
    device_of(o).ends_with(&format!("/dev-{p}"))
}

/// Observation ids of the readings from patient `p`'s device.
fn reading_ids(rx: &Received, p: &str) -> BTreeSet<String> {
    observations(rx)
        .iter()
        .filter(|o| from_device_of(o, p))
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// NEWS2 total-score Observations published for patient `p`: those derived from its readings.
fn news2_totals(rx: &Received, p: &str) -> Vec<Value> {
    let ids = reading_ids(rx, p);
    observations(rx)
        .into_iter()
        .filter(|o| {
            let from: Vec<&str> = o["derivedFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["reference"].as_str()?.strip_prefix("Observation/"))
                .collect();
            is_news2_total(o) && !from.is_empty() && from.iter().all(|id| ids.contains(*id))
        })
        .collect()
}

/// What the platform has so far, for timeout messages: Observations per device, alerts.
fn received(rx: &Received) -> String {
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for o in observations(rx) {
        *per.entry(device_of(&o)).or_default() += 1;
    }
    format!(
        "observations per device {per:?}; {} alert events",
        events(rx).len()
    )
}

/// Waits for `pred`; on timeout panics with what was received and the daemon's log tail.
async fn wait_for(d: &Daemon, rx: &Received, secs: u64, what: &str, pred: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !pred() {
        if std::time::Instant::now() > deadline {
            let lines = d.lines();
            panic!(
                "timed out after {secs} s waiting for {what}; {}\ndaemon log tail:\n{}",
                received(rx),
                support::daemon::tail(&lines).join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn events_of(all: &[Value], p: &str) -> Vec<Value> {
    all.iter().filter(|e| e["patient"] == p).cloned().collect()
}

fn raised(events: &[Value]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .map(|e| {
            assert_eq!(
                e["transition"], "raised",
                "nothing de-escalates, escalates or clears within one set: {e:#}"
            );
            (
                e["rule"].as_str().unwrap().to_owned(),
                e["priority"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Validates every event with Python `jsonschema` against schemas/alert-event.v2.json
/// (Draft 2020-12, with format checks); returns its report, one line per invalid event.
fn schema_errors(events: &[Value]) -> Vec<String> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/alert-event.v2.json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    std::fs::write(&file, serde_json::to_vec(events).unwrap()).unwrap();
    let script = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
for i, e in enumerate(json.load(open(sys.argv[2]))):
    for err in v.iter_errors(e):
        print(f"event {i} ({e.get('rule')}): {'/'.join(map(str, err.absolute_path))}: {err.message}")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(&file)
        .output()
        .expect(
            "python3 is needed to validate events (apt-get install python3 python3-jsonschema)",
        );
    assert!(
        out.status.success(),
        "the schema validator did not run (needs python3 with jsonschema >= 4): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_schema_valid(events: &[Value]) {
    assert!(!events.is_empty());
    let errs = schema_errors(events);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // The validator is live: an event with the v1 version and without its values is refused,
    // and so is a NEWS2 event with a total but no band (issue 13 point 2).
    let mut broken = events[0].clone();
    broken["schema_version"] = json!("alert-event.v1");
    broken.as_object_mut().unwrap().remove("values");
    let errs = schema_errors(&[broken]).join("\n");
    assert!(
        errs.contains("schema_version: 'alert-event.v2' was expected")
            && errs.contains("'values' is a required property"),
        "{errs}"
    );
    if let Some(news2) = events.iter().find(|e| e["news2"]["total"].is_number()) {
        let mut broken = news2.clone();
        broken["news2"].as_object_mut().unwrap().remove("band");
        let errs = schema_errors(&[broken]).join("\n");
        assert!(errs.contains("'band' is a required property"), "{errs}");
    }
}

/// Checks what every NEWS2 event of a complete set must say (issue 13 points 1, 2, 5).
fn assert_complete_news2_event(e: &Value, c: &Case, ids: &BTreeSet<String>) {
    let n = &e["news2"];
    let what = format!("{} {}: {e:#}", c.id, e["rule"]);
    assert_eq!(n["missing"], json!([]), "{what}");
    assert_eq!(n["total"], c.total, "{what}");
    assert_eq!(n["band"], c.band, "{what}");
    assert_eq!(n["response"], c.response, "{what}");
    let response_text = n["response_text"].as_str().unwrap_or_default();
    assert!(
        text_of(e).contains(response_text) && !response_text.is_empty(),
        "{what}"
    );
    let subs: Vec<u64> = n["sub_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_u64().unwrap())
        .collect();
    assert_eq!(subs, c.subs, "{what}");
    let text = e["text"].as_str().unwrap();
    assert!(text.contains(&format!("NEWS2 total {}", c.total)), "{what}");
    assert!(!text.contains("no fresh value"), "{what}");
    // The values behind the score: all seven from readings, with units and Observation ids
    // the platform received.
    let values = e["values"].as_array().unwrap();
    assert_eq!(values.len(), 7, "{what}");
    for v in values {
        assert!(
            ids.contains(v["obs_ref"].as_str().unwrap()),
            "{what}: value {v} refers to an Observation the platform never got"
        );
        assert!(
            v["unit"].is_string() || v["metric"] == "acvpu",
            "{what}: {v}"
        );
    }
}

fn text_of(e: &Value) -> &str {
    e["text"].as_str().unwrap_or_default()
}

fn print_example(label: &str, e: &Value) {
    eprintln!("---- example: {label}\n{e:#}");
}

// ---------------------------------------------------------------------------------------------
// 1. Full sets written at once
// ---------------------------------------------------------------------------------------------

/// How the cases reach the gateway.
enum Feed {
    /// One line per case holding the whole set: one frame, one commit.
    WholeLine,
    /// One line per parameter, every line of a case stamped with the same device time, each
    /// written only once the previous one is committed and delivered (so every message is
    /// its own ingest batch), with `news2_set_hold_secs = 60` so the test does not depend on
    /// how fast this machine is.
    OneMessagePerParameter,
}

/// Runs the ten cases through a fresh gateway `gw`; returns every alert event once each case
/// has its NEWS2 total and its seven reading Observations at the platform and the outbox is
/// drained.
async fn run_cases(gw: &str, feed: Feed) -> (Received, Vec<Value>) {
    let b = Broker::start(Acl::gateways(&[gw]));
    let (rx, _sub) = subscribe(&b, &format!("sub-{gw}"), &format!("rpm/v1/gw/{gw}/+")).await;
    let alerts = match feed {
        Feed::WholeLine => "",
        Feed::OneMessagePerParameter => "news2_set_hold_secs = 60",
    };
    let patients: Vec<Patient> = CASES.iter().map(|c| patient(c.id, alerts)).collect();
    let g = Gateway::new(&b, gw, &patients);
    let d = Daemon::start(&g.config);
    match feed {
        Feed::WholeLine => {
            for c in &CASES {
                g.write(c.id, &[Value::Array(c.readings())]);
            }
        }
        Feed::OneMessagePerParameter => {
            let taken = (time::OffsetDateTime::now_utc() - time::Duration::seconds(5))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            for step in 0..PARAMS.len() {
                for c in &CASES {
                    let mut line = c.readings()[step].clone();
                    line["device_time"] = json!(taken);
                    g.write(c.id, &[line]);
                }
                wait_for(
                    &d,
                    &rx,
                    60,
                    &format!("message {} of every case", step + 1),
                    || {
                        CASES
                            .iter()
                            .all(|c| reading_ids(&rx, c.id).len() == step + 1)
                    },
                )
                .await;
            }
        }
    }
    wait_for(
        &d,
        &rx,
        90,
        "a NEWS2 total and seven readings per case",
        || {
            CASES
                .iter()
                .all(|c| news2_totals(&rx, c.id).len() == 1 && reading_ids(&rx, c.id).len() == 7)
        },
    )
    .await;
    g.drained().await;
    d.stop().await;
    let all = events(&rx);
    (rx, all)
}

/// What the platform must get when every case is scored as one whole set (issue 13 points 1,
/// 2, 4, 5): one total per case, the expected alerts, and every NEWS2 event with no parameter
/// missing, the total, band, response and the values behind the score.
fn assert_scored_as_whole_sets(rx: &Received, all: &[Value]) {
    for c in &CASES {
        let totals = news2_totals(rx, c.id);
        assert_eq!(totals.len(), 1, "{}: one score for one set", c.id);
        assert_eq!(totals[0]["valueQuantity"]["value"], c.total, "{}", c.id);
        let ids = reading_ids(rx, c.id);
        let ev = events_of(all, c.id);
        assert_eq!(raised(&ev), c.expected_alerts(), "{}", c.id);
        for e in ev.iter().filter(|e| e["kind"] == "news2") {
            assert_complete_news2_event(e, c, &ids);
        }
        for e in ev.iter().filter(|e| e["kind"] == "threshold") {
            let text = e["text"].as_str().unwrap();
            assert!(text.contains(": 1 reading, latest"), "{}: {text}", c.id);
            assert!(!text.contains("for at least"), "{}: {text}", c.id);
            assert_eq!(e["threshold"]["evidence"]["readings"], 1, "{e:#}");
        }
    }
    // The single red with a low total names its band and response (issue 13 point 2).
    let red = &events_of(all, "c05")[0];
    assert!(
        text_of(red)
            .contains("NEWS2 total 3 (low-medium clinical risk): urgent ward-based response"),
        "{red:#}"
    );
    assert_schema_valid(all);
}

/// Issue 13 points 1, 2, 5 and 6; clinical.md §2.6 (cases), §2.3 (bands and responses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_cases_written_as_full_sets_are_scored_together_with_band_and_values_in_every_event()
{
    let (rx, all) = run_cases("gw-sets", Feed::WholeLine).await;
    assert_scored_as_whole_sets(&rx, &all);
    let aggregate = |p: &str| {
        events_of(&all, p)
            .into_iter()
            .find(|e| e["rule"] == "news2:aggregate")
            .unwrap()
    };
    print_example("single red (case 05)", &events_of(&all, "c05")[0]);
    print_example("medium (case 07)", &aggregate("c07"));
    print_example("high (case 09)", &aggregate("c09"));
}

/// Issue 13 point 1, "an observation set with one effective time from one device": a monitor
/// that sends each parameter as its own message, all stamped with the same device time. Each
/// message is committed on its own, yet each case is scored as one set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_cases_sent_one_message_per_parameter_with_one_device_time_are_scored_as_whole_sets()
{
    let (rx, all) = run_cases("gw-split", Feed::OneMessagePerParameter).await;
    assert_scored_as_whole_sets(&rx, &all);
}

// ---------------------------------------------------------------------------------------------
// 2. The same sets trickled one parameter at a time
// ---------------------------------------------------------------------------------------------

/// Issue 13 points 1 and 6: a spot-check device sending one parameter at a time still works
/// (values combine within the freshness window, the same alerts and totals result), and each
/// event names as missing exactly the parameters not yet sent when it was raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_cases_trickled_one_parameter_at_a_time_reach_the_same_alerts_and_name_only_unsent_parameters_missing(
) {
    let b = Broker::start(Acl::gateways(&["gw-trickle"]));
    let (rx, _sub) = subscribe(&b, "sub-trickle", "rpm/v1/gw/gw-trickle/+").await;
    let patients: Vec<Patient> = CASES.iter().map(|c| patient(c.id, "")).collect();
    let g = Gateway::new(&b, "gw-trickle", &patients);
    let d = Daemon::start(&g.config);
    for step in 0..PARAMS.len() {
        for c in &CASES {
            g.write(c.id, &[c.readings()[step].clone()]);
        }
        // Each parameter is committed and delivered before the next is written.
        wait_for(
            &d,
            &rx,
            60,
            &format!("parameter {} of every case", step + 1),
            || {
                CASES
                    .iter()
                    .all(|c| reading_ids(&rx, c.id).len() == step + 1)
            },
        )
        .await;
    }
    wait_for(&d, &rx, 60, "a NEWS2 total per case", || {
        CASES.iter().all(|c| news2_totals(&rx, c.id).len() == 1)
    })
    .await;
    g.drained().await;
    d.stop().await;

    let all = events(&rx);
    for c in &CASES {
        let totals = news2_totals(&rx, c.id);
        assert_eq!(totals.len(), 1, "{}", c.id);
        assert_eq!(totals[0]["valueQuantity"]["value"], c.total, "{}", c.id);
        let ev = events_of(&all, c.id);
        assert_eq!(raised(&ev), c.expected_alerts(), "{}", c.id);
        let ids = reading_ids(&rx, c.id);
        for e in ev.iter().filter(|e| e["kind"] == "news2") {
            let rule = e["rule"].as_str().unwrap();
            // A red alert is raised by its parameter's reading; the aggregate by the last one.
            let step = match rule.strip_prefix("news2:red:") {
                Some(p) => PARAMS.iter().position(|x| *x == p).unwrap(),
                None => PARAMS.len() - 1,
            };
            let unsent: Vec<&str> = PARAMS[step + 1..]
                .iter()
                .copied()
                .filter(|p| *p != "air_or_oxygen") // air is known from the patient config
                .collect();
            assert_eq!(e["news2"]["missing"], json!(unsent), "{}: {e:#}", c.id);
            if unsent.is_empty() {
                assert_complete_news2_event(e, c, &ids);
            } else {
                assert!(e["news2"].get("total").is_none(), "{e:#}");
                let text = e["text"].as_str().unwrap();
                assert!(text.contains("at least low-medium clinical risk"), "{text}");
                assert!(
                    text.contains("No NEWS2 total: no fresh value for"),
                    "{text}"
                );
            }
        }
    }
    assert_schema_valid(&all);
}

// ---------------------------------------------------------------------------------------------
// 3. SpO2 Scale 2
// ---------------------------------------------------------------------------------------------

/// Nine oximeter readings 15 s apart, the last one now: 120 s of data.
fn oximeter_series(spo2: f64) -> Vec<Value> {
    let now = time::OffsetDateTime::now_utc();
    (0..9)
        .map(|i| {
            let t = now - time::Duration::seconds(120 - 15 * i);
            let t = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            json!({"metric": "spo2", "value": spo2, "unit": "%", "device_time": t})
        })
        .collect()
}

/// Issue 13 points 3, 4 and 6; clinical.md §2.2 (Scale 2, target 88–92 %), §2.1 Chart 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale2_patients_alert_only_outside_their_target_range_where_scale1_defaults_would_alarm() {
    let b = Broker::start(Acl::gateways(&["gw-scale2"]));
    let (rx, _sub) = subscribe(&b, "sub-scale2", "rpm/v1/gw/gw-scale2/+").await;
    let s2 = "spo2_scale = \"scale_2\"";
    let s2_o2 = "spo2_scale = \"scale_2\"\non_oxygen = true";
    let patients = [
        patient("s1-at-90", ""), // control: Scale 1 defaults, same readings as s2-at-90
        patient("s2-at-90", s2), // the issue's patient: in target on air
        patient("s2-at-88", s2), // the bottom of the target
        patient("s2-at-85", s2), // below target: NEWS2 scores 2, spo2_low must raise
        patient("s2-o2-at-92", s2_o2), // in target on oxygen
        patient("s2-o2-at-97", s2_o2), // above target on oxygen: NEWS2 scores 3
        patient("s2-full-set", s2), // a whole in-target set: total 0 on Scale 2
    ];
    let g = Gateway::new(&b, "gw-scale2", &patients);
    let d = Daemon::start(&g.config);
    for (p, v) in [
        ("s1-at-90", 90.0),
        ("s2-at-90", 90.0),
        ("s2-at-88", 88.0),
        ("s2-at-85", 85.0),
        ("s2-o2-at-92", 92.0),
        ("s2-o2-at-97", 97.0),
    ] {
        g.write(p, &oximeter_series(v));
    }
    let full = Case {
        id: "s2-full-set",
        spo2: 90.0,
        ..CASES[0]
    };
    g.write(full.id, &[Value::Array(full.readings())]);
    wait_for(&d, &rx, 90, "every reading at the platform", || {
        patients[..6]
            .iter()
            .all(|p| reading_ids(&rx, &p.id).len() == 9)
            && news2_totals(&rx, full.id).len() == 1
    })
    .await;
    g.drained().await;
    d.stop().await;

    let all = events(&rx);
    let want = |p: &str, alerts: &[(&str, &str)]| {
        let got = raised(&events_of(&all, p));
        let want: BTreeSet<(String, String)> = alerts
            .iter()
            .map(|(r, q)| (r.to_string(), q.to_string()))
            .collect();
        assert_eq!(got, want, "{p}: {:#?}", events_of(&all, p));
    };
    // Scale 1: 90 % is a NEWS2 red score, and two minutes below 93 % raise spo2_low (high).
    want(
        "s1-at-90",
        &[
            ("news2:red:oxygen_saturation", "medium"),
            ("threshold:spo2_low", "high"),
        ],
    );
    // Scale 2, in target: nothing at all.
    want("s2-at-90", &[]);
    want("s2-at-88", &[]);
    want("s2-o2-at-92", &[]);
    want(full.id, &[]);
    // Scale 2, below target: the Scale 2 spo2_low, whose text says what the data shows.
    want("s2-at-85", &[("threshold:spo2_low", "high")]);
    let low = &events_of(&all, "s2-at-85")[0];
    let text = low["text"].as_str().unwrap();
    // Raised by the reading that made the data cover the rule's 60 s: the fifth, 15 s apart.
    assert!(
        text.contains("below 88 %: 5 readings over 60 s, latest 85 %"),
        "{text}"
    );
    assert_eq!(low["threshold"]["evidence"]["span_secs"], 60, "{low:#}");
    // Scale 2, above target on oxygen: the NEWS2 red score (Chart 1: >= 97 % on oxygen is 3).
    want("s2-o2-at-97", &[("news2:red:oxygen_saturation", "medium")]);
    let red = &events_of(&all, "s2-o2-at-97")[0];
    assert_eq!(red["news2"]["scale"], "scale_2", "{red:#}");

    let total = &news2_totals(&rx, full.id)[0];
    assert_eq!(total["valueQuantity"]["value"], 0, "{total:#}");
    assert!(
        total.to_string().contains("1104321000000108"),
        "the Scale 2 SpO2 sub-score code (clinical.md §2.4): {total:#}"
    );
    assert_schema_valid(&all);
}

// ---------------------------------------------------------------------------------------------
// 4. check-config and explicit rules that contradict Scale 2
// ---------------------------------------------------------------------------------------------

fn check_config(rule_extra: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
             [store]\nkey_file = \"{d}/master.key\"\n\n\
             [[patient]]\nid = \"copd-1\"\n[patient.alerts]\nspo2_scale = \"scale_2\"\n\
             [[patient.alerts.rules]]\nid = \"spo2_low\"\nmetric = \"spo2\"\nbelow = 93\n\
             persist_secs = 60\npriority = \"high\"\n{rule_extra}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // check-config also checks the files run needs: the master key must exist.
    let keygen = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.path().join("master.key"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

/// Issue 13 point 3: refused (exit 2), naming both settings; docs/alerts.md "SpO2 Scale 2".
#[test]
fn check_config_refuses_a_scale1_spo2_rule_for_a_scale2_patient_naming_both_settings() {
    let out = check_config("");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("patient[0].alerts.rules[0].below"), "{err}");
    assert!(err.contains("spo2_scale = \"scale_2\""), "{err}");
    assert!(err.contains("inside_scale2_target = true"), "{err}");
}

#[test]
fn check_config_accepts_the_rule_when_a_clinician_marks_it_intended_inside_the_target() {
    let out = check_config("inside_scale2_target = true");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
