//! The demo's outbox table: the latest stored value of each vital per simulated patient and,
//! when the demo runs an uplink, its state (connected, delivered, backlog), printed every
//! [`EVERY`]. It is a commit hook, so it shows only what was committed; the uplink figures come
//! from the daemon's live socket and a read-only look at the outbox, as `vitalgate status`
//! reads them. It never shows an NHS Number (rows are keyed by pseudonym).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::{CommitHook, HookOutput, Rejection};
use crate::reading::{Metric, Value};
use crate::store::Record;

type Latest = BTreeMap<String, BTreeMap<Metric, String>>;

/// How often the table is printed (the platform's lines stream in between).
pub const EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DemoView {
    latest: Arc<Mutex<Latest>>,
    stored: Arc<Mutex<(u64, u64)>>, // (rows committed, readings rejected)
}

impl DemoView {
    /// Starts the printer task; returns the hook to give to ingest. With `uplink`, each table
    /// ends with the uplink's state.
    pub fn start(config: Config, uplink: bool, shutdown: CancellationToken) -> DemoView {
        let view = DemoView {
            latest: Arc::default(),
            stored: Arc::default(),
        };
        let printer = view.clone();
        let patients: Vec<String> = config.patients.iter().map(|p| p.id.clone()).collect();
        let state_dir = config.gateway.state_dir.clone();
        let outbox = config.outbox_path();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(EVERY) => {}
                }
                let uplink_line = if uplink {
                    let (dir, ob) = (state_dir.clone(), outbox.clone());
                    tokio::task::spawn_blocking(move || uplink_state(&dir, &ob))
                        .await
                        .ok()
                } else {
                    None
                };
                printer.print(&patients, uplink_line.as_deref());
            }
        });
        view
    }

    fn print(&self, patients: &[String], uplink: Option<&str>) {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (rows, rejected) = *self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "── {:02}:{:02}:{:02} UTC outbox: {rows} records sealed, {rejected} implausible rejected",
            now.hour(),
            now.minute(),
            now.second()
        );
        let shown = [
            (Metric::HeartRate, "HR"),
            (Metric::Spo2, "SpO2"),
            (Metric::RespiratoryRate, "RR"),
            (Metric::BodyTemperature, "T"),
            (Metric::SystolicBp, "BP"),
            (Metric::DiastolicBp, "/"),
            (Metric::Acvpu, "ACVPU"),
        ];
        for p in patients {
            let values = latest.get(p);
            let cells: Vec<String> = shown
                .iter()
                .map(|(m, label)| {
                    let v = values
                        .and_then(|v| v.get(m))
                        .map(String::as_str)
                        .unwrap_or("-");
                    match *label {
                        "/" => format!("/{v:<4}"),
                        "BP" => format!("BP {v:>3}"),
                        _ => format!("{label} {v:<5}"),
                    }
                })
                .collect();
            let name = p.strip_prefix("demo-patient-").unwrap_or(p);
            let _ = writeln!(out, "  {name:<13} {}", cells.join(" ").trim_end());
        }
        if let Some(line) = uplink {
            let _ = writeln!(
                out,
                "{}",
                super::platform::fit(&format!("  {line}"), super::platform::WIDTH)
            );
        }
    }
}

/// One line on the uplink: from the daemon's live state (`status.json` is written only when
/// a state changes, so its counts lag) and the outbox counts.
fn uplink_state(state_dir: &std::path::Path, outbox: &std::path::Path) -> String {
    let snapshot = crate::live::fetch(&crate::live::server::socket_path(state_dir))
        .ok()
        .and_then(|s| serde_json::to_value(s).ok());
    let up = snapshot
        .as_ref()
        .and_then(|s| s.get("uplink"))
        .filter(|u| !u.is_null());
    let backlog = crate::store::outbox::stats_readonly(outbox)
        .map(|s| (s.backlog_readings + s.backlog_alerts).to_string())
        .unwrap_or_else(|_| "?".to_owned());
    match up {
        None => format!("uplink: starting; backlog {backlog}"),
        Some(u) => {
            let connected = u
                .get("connected")
                .and_then(|c| c.as_bool())
                .unwrap_or(false);
            let n = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let mut line = format!(
                "uplink: {}, {} delivered, {} in flight, backlog {backlog}",
                if connected {
                    "connected"
                } else {
                    "NOT connected"
                },
                n("delivered"),
                n("in_flight"),
            );
            if n("refused") > 0 {
                line.push_str(&format!(", {} refused", n("refused")));
            }
            if let (false, Some(e)) = (connected, u.get("last_error").and_then(|e| e.as_str())) {
                line.push_str(&format!(" ({e})"));
            }
            line
        }
    }
}

impl CommitHook for DemoView {
    fn on_batch(&mut self, accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        for rec in accepted {
            if let Record::Reading(r) = rec {
                let row = latest.entry(String::from(&*r.patient_id)).or_default();
                for reading in &r.readings {
                    let shown = match reading.value {
                        Value::Number(d) => d.to_string(),
                        Value::Code(c) => format!("{c:?}"),
                        Value::Absent(a) => format!("({a:?})").to_lowercase(),
                    };
                    row.insert(reading.metric, shown);
                }
            }
        }
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).0 += accepted.len() as u64;
        HookOutput::default()
    }

    fn on_reject(&mut self, _r: &Rejection) -> HookOutput {
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, _backlog: u64) -> HookOutput {
        HookOutput::default()
    }
    fn on_storage(
        &mut self,
        _now: OffsetDateTime,
        _alarm: crate::ingest::StorageAlarm,
        _active: bool,
    ) -> HookOutput {
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}
