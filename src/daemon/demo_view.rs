//! The demo's live view: the latest stored value of each vital per simulated patient,
//! printed every few seconds. It is a commit hook, so it shows only what was committed.

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

#[derive(Clone)]
pub struct DemoView {
    latest: Arc<Mutex<Latest>>,
    stored: Arc<Mutex<(u64, u64)>>, // (rows committed, readings rejected)
}

impl DemoView {
    /// Starts the printer task; returns the hook to give to ingest.
    pub fn start(config: Config, shutdown: CancellationToken) -> DemoView {
        let view = DemoView {
            latest: Arc::default(),
            stored: Arc::default(),
        };
        let printer = view.clone();
        let patients: Vec<String> = config.patients.iter().map(|p| p.id.clone()).collect();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
                printer.print(&patients);
            }
        });
        view
    }

    fn print(&self, patients: &[String]) {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (rows, rejected) = *self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        println!(
            "── {:02}:{:02}:{:02} UTC ── {rows} records sealed in the outbox, {rejected} implausible readings rejected",
            now.hour(),
            now.minute(),
            now.second()
        );
        let shown = [
            (Metric::HeartRate, "HR"),
            (Metric::Spo2, "SpO2"),
            (Metric::RespiratoryRate, "RR"),
            (Metric::BodyTemperature, "Temp"),
            (Metric::SystolicBp, "SBP"),
            (Metric::DiastolicBp, "DBP"),
            (Metric::Acvpu, "ACVPU"),
        ];
        for p in patients {
            let values = latest.get(p);
            let cells: Vec<String> = shown
                .iter()
                .map(|(m, label)| format!("{label} {}", values.and_then(|v| v.get(m)).map(String::as_str).unwrap_or("-")))
                .collect();
            println!("  {p:<28} {}", cells.join("  "));
        }
    }
}

impl CommitHook for DemoView {
    fn on_batch(&mut self, accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        for rec in accepted {
            if let Record::Reading(r) = rec {
                let row = latest.entry(r.patient_id.clone()).or_default();
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
}
