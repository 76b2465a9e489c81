//! What the live view learns inside ingest: a [`CommitHook`] that wraps the alert hook,
//! forwards every call to it unchanged, and reads what it produced (alert events, NEWS2
//! totals) and what was committed (each device's latest values).
//!
//! It sees exactly the records that commit in the same transaction, so the screen can never
//! show an alert the outbox does not hold. It adds nothing to a transaction.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value as Json;
use time::OffsetDateTime;

use super::model::{AlertLive, News2Live, ValueLive};
use crate::alerts::news2::risk_band;
use crate::alerts::{AlertEngine, EngineState, News2Status, Priority, RiskBand};
use crate::config::Config;
use crate::ingest::{CommitHook, HookOutput, Rejection};
use crate::reading::Value;
use crate::store::Record;

/// Clinical picture per patient and latest values per device, shared with the collector.
#[derive(Debug, Default)]
pub struct Clinical {
    /// device id -> metric -> latest value.
    pub values: BTreeMap<String, BTreeMap<String, ValueLive>>,
    /// patient id -> latest NEWS2.
    pub news2: BTreeMap<String, News2Live>,
    /// patient id -> alert id -> open alert.
    pub open: BTreeMap<String, BTreeMap<String, AlertLive>>,
    /// Everything seen since start, for the demo's closing summary.
    pub tally: Tally,
}

/// Counts since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Every alert raised since start: alert id -> (kind, highest priority it reached).
    pub raised: BTreeMap<String, (String, Priority)>,
    /// Alert events of any transition.
    pub events: u64,
    /// patient id -> NEWS2 bands scored, in the order first seen.
    pub bands: BTreeMap<String, Vec<RiskBand>>,
    /// patient id -> highest NEWS2 total scored.
    pub highest_news2: BTreeMap<String, u8>,
}

impl Tally {
    /// Alerts raised of one of `kinds` whose highest priority was `priority`.
    pub fn raised_at(&self, kinds: &[&str], priority: Priority) -> u64 {
        self.raised
            .values()
            .filter(|(k, p)| *p == priority && kinds.contains(&k.as_str()))
            .count() as u64
    }
}

/// Shared handle to [`Clinical`].
#[derive(Debug, Clone, Default)]
pub struct ClinicalCell(Arc<Mutex<Clinical>>);

impl ClinicalCell {
    pub fn lock(&self) -> MutexGuard<'_, Clinical> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seeds open alerts and NEWS2 from the engines' saved state, so a restarted daemon shows
    /// what is still raised before any new reading arrives.
    pub fn seed(
        &self,
        config: &Config,
        saved: &std::collections::HashMap<String, EngineState>,
        now: OffsetDateTime,
    ) {
        let mut c = self.lock();
        for p in &config.patients {
            let Some(state) = saved.get(&p.id) else {
                continue;
            };
            let Ok(engine) = AlertEngine::with_state(p.id.clone(), p.alerts.clone(), state.clone())
            else {
                continue;
            };
            let open = c.open.entry(p.id.clone()).or_default();
            for a in engine.active_alerts() {
                let kind = serde_json::to_value(a.kind)
                    .ok()
                    .and_then(|k| k.as_str().map(str::to_owned))
                    .unwrap_or_default();
                open.insert(
                    a.alert_id.clone(),
                    AlertLive {
                        alert_id: a.alert_id,
                        rule: a.rule,
                        kind,
                        priority: a.priority,
                        raised_at: a.raised_at,
                        text: String::new(),
                    },
                );
            }
            if let News2Status::Complete(s) = engine.news2(now) {
                c.news2.insert(
                    p.id.clone(),
                    News2Live {
                        total: s.total,
                        band: s.band,
                        at: s.computed_at,
                    },
                );
            }
        }
    }

    fn observe_output(&self, out: &HookOutput) {
        if out.records.is_empty() {
            return;
        }
        let mut c = self.lock();
        for rec in &out.records {
            match rec {
                Record::Alert(a) => c.alert_event(&a.patient_id, &a.event),
                Record::Derived(d) => {
                    if let Some(n) = news2_of(&d.observation) {
                        c.news2_scored(&d.patient_id, n);
                    }
                }
                Record::Reading(_) => {}
            }
        }
    }

    fn observe_committed(&self, accepted: &[Record], now: OffsetDateTime) {
        let mut c = self.lock();
        for rec in accepted {
            let Record::Reading(r) = rec else { continue };
            let device = c.values.entry(String::from(&*r.device_id)).or_default();
            for reading in &r.readings {
                let value = match reading.value {
                    Value::Number(d) => d.to_string(),
                    Value::Code(code) => format!("{code:?}"),
                    Value::Absent(_) => "absent".to_owned(),
                };
                let metric = reading.metric.as_str().to_owned();
                device.insert(
                    metric.clone(),
                    ValueLive {
                        metric,
                        value,
                        unit: reading
                            .unit
                            .map(|u| u.ucum().to_owned())
                            .unwrap_or_default(),
                        at: now,
                    },
                );
            }
        }
    }
}

impl Clinical {
    fn alert_event(&mut self, patient: &str, event: &Json) {
        let text = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
        let time = |k: &str| {
            event[k]
                .as_str()
                .and_then(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .unwrap_or_else(OffsetDateTime::now_utc)
        };
        let Ok(priority) = serde_json::from_value::<Priority>(event["priority"].clone()) else {
            return;
        };
        let (alert_id, kind) = (text("alert_id"), text("kind"));
        self.tally.events += 1;
        let open = self.open.entry(patient.to_owned()).or_default();
        match event["transition"].as_str() {
            Some("cleared") => {
                open.remove(&alert_id);
            }
            Some(_) => {
                let seen = self
                    .tally
                    .raised
                    .entry(alert_id.clone())
                    .or_insert((kind.clone(), priority));
                seen.1 = seen.1.max(priority);
                open.insert(
                    alert_id.clone(),
                    AlertLive {
                        alert_id,
                        rule: text("rule"),
                        kind,
                        priority,
                        raised_at: time("raised_at"),
                        text: text("text"),
                    },
                );
            }
            None => {}
        }
    }

    fn news2_scored(&mut self, patient: &str, n: News2Live) {
        let bands = self.tally.bands.entry(patient.to_owned()).or_default();
        if !bands.contains(&n.band) {
            bands.push(n.band);
        }
        let high = self
            .tally
            .highest_news2
            .entry(patient.to_owned())
            .or_default();
        *high = (*high).max(n.total);
        self.news2.insert(patient.to_owned(), n);
    }
}

/// The NEWS2 total, band and time of a derived total-score Observation (its sub-scores are
/// its components; a 3 in any makes the band at least low-medium).
fn news2_of(obs: &Json) -> Option<News2Live> {
    let is_total = obs["code"]["coding"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["code"].as_str() == Some(crate::fhir::codes::NEWS2_TOTAL.code))
    });
    if !is_total {
        return None;
    }
    let total = u8::try_from(obs["valueQuantity"]["value"].as_u64()?).ok()?;
    let any_three = obs["component"].as_array().is_some_and(|c| {
        c.iter()
            .any(|p| p["valueQuantity"]["value"].as_u64() == Some(3))
    });
    let at = obs["effectiveDateTime"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    Some(News2Live {
        total,
        band: risk_band(total, any_three),
        at,
    })
}

/// Wraps a hook (the alert hook) and tells [`ClinicalCell`] what it produced and what was
/// committed.
pub struct Tap {
    inner: Box<dyn CommitHook>,
    cell: ClinicalCell,
}

impl Tap {
    pub fn new(inner: Box<dyn CommitHook>, cell: ClinicalCell) -> Tap {
        Tap { inner, cell }
    }
}

impl CommitHook for Tap {
    fn on_batch(&mut self, accepted: &[Record], now: OffsetDateTime) -> HookOutput {
        let out = self.inner.on_batch(accepted, now);
        self.cell.observe_committed(accepted, now);
        self.cell.observe_output(&out);
        out
    }

    fn on_reject(&mut self, r: &Rejection) -> HookOutput {
        let out = self.inner.on_reject(r);
        self.cell.observe_output(&out);
        out
    }

    fn on_tick(&mut self, now: OffsetDateTime, backlog: u64) -> HookOutput {
        let out = self.inner.on_tick(now, backlog);
        self.cell.observe_output(&out);
        out
    }

    // Every hook method is forwarded: a default body here would silently swallow what the
    // wrapped hook does (the storage_full alarm was lost that way; tests/full_disk.rs).
    fn on_storage(
        &mut self,
        now: OffsetDateTime,
        alarm: crate::ingest::StorageAlarm,
        active: bool,
    ) -> HookOutput {
        let out = self.inner.on_storage(now, alarm, active);
        self.cell.observe_output(&out);
        out
    }

    fn on_stalled(&mut self, now: OffsetDateTime) {
        self.inner.on_stalled(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AlertRecord, DerivedRecord};
    use serde_json::json;

    /// A hook that outputs the given records once.
    struct Emits(Vec<Record>);
    impl CommitHook for Emits {
        fn on_batch(&mut self, _: &[Record], _: OffsetDateTime) -> HookOutput {
            HookOutput::records(std::mem::take(&mut self.0))
        }
        fn on_reject(&mut self, _rejection: &Rejection) -> HookOutput {
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

    fn event(transition: &str, priority: &str) -> Record {
        Record::Alert(AlertRecord {
            patient_id: "p1".into(),
            event: json!({
                "alert_id": "a-1", "transition": transition, "priority": priority,
                "kind": "news2", "rule": "news2:aggregate", "text": "NEWS2 total 7",
                "raised_at": "2026-11-23T10:00:00Z",
            }),
        })
    }

    fn feed(cell: &ClinicalCell, records: Vec<Record>) -> HookOutput {
        let mut tap = Tap::new(Box::new(Emits(records)), cell.clone());
        tap.on_batch(&[], OffsetDateTime::now_utc())
    }

    #[test]
    fn tap_passes_the_inner_hook_output_through_unchanged() {
        let out = feed(&ClinicalCell::default(), vec![event("raised", "medium")]);
        assert_eq!(out.records, vec![event("raised", "medium")]);
    }

    #[test]
    fn tap_keeps_an_alert_open_until_it_clears_and_counts_it_at_its_highest_priority() {
        let cell = ClinicalCell::default();
        feed(
            &cell,
            vec![event("raised", "medium"), event("escalated", "high")],
        );
        let open = cell.lock().open["p1"]["a-1"].clone();
        assert_eq!(open.priority, Priority::High);
        assert_eq!(open.text, "NEWS2 total 7");
        feed(&cell, vec![event("cleared", "high")]);
        let c = cell.lock();
        assert!(c.open["p1"].is_empty());
        assert_eq!(c.tally.raised_at(&["news2"], Priority::High), 1);
        assert_eq!(c.tally.raised_at(&["news2"], Priority::Medium), 0);
    }

    #[test]
    fn tap_reads_the_news2_total_and_band_from_the_derived_observation() {
        let cell = ClinicalCell::default();
        let obs = json!({
            "code": {"coding": [{"code": crate::fhir::codes::NEWS2_TOTAL.code}]},
            "valueQuantity": {"value": 4},
            "component": [{"valueQuantity": {"value": 3}}],
            "effectiveDateTime": "2026-11-23T10:00:00Z",
        });
        feed(
            &cell,
            vec![Record::Derived(DerivedRecord {
                patient_id: "p1".into(),
                observation: obs,
            })],
        );
        let c = cell.lock();
        assert_eq!(c.news2["p1"].total, 4);
        assert_eq!(
            c.news2["p1"].band,
            RiskBand::LowMedium,
            "a single 3 makes it low-medium"
        );
        assert_eq!(c.tally.bands["p1"], vec![RiskBand::LowMedium]);
    }
}
