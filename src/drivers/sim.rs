//! `sim`: a simulated patient, for the demo, tests and anyone without hardware.
//!
//! Vitals follow a mean-reverting random walk (Ornstein-Uhlenbeck) towards targets that the
//! scenario moves over time, so values vary slowly and plausibly, as a real patient's do:
//!
//! - `stable`: a well adult at home; NEWS2 stays 0-1.
//! - `deteriorating`: a sepsis-like course over `ramp_ticks` ticks: heart and respiration rate
//!   and temperature rise, SpO2 and systolic pressure fall, and new confusion appears near the
//!   end. Gives the alert engine a patient whose NEWS2 climbs through every band.
//! - `faulty`: stable vitals from a troublesome device: the probe falls off, the battery runs
//!   low (from tick 10), and a burst of three implausible heart rates arrives every 50 ticks
//!   (ticks 20-22, 70-72, ...: rejected at ingest; three in a row raise the
//!   repeated-rejections alarm, isolated ones are cleared by the valid readings between).
//!
//! Pure: time is an argument, randomness comes from a seeded generator, so a run is repeatable.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    #[default]
    Stable,
    Deteriorating,
    Faulty,
}

/// Ticks over which `deteriorating` goes from well to very unwell: 45 s at the demo's
/// 500 ms, so a newcomer sees the NEWS2 bands crossed and the alerts raised within a minute.
pub const DEFAULT_RAMP_TICKS: u64 = 90;

/// One simulated patient with one set of devices.
#[derive(Debug, Clone)]
pub struct SimPatient {
    scenario: Scenario,
    rng: SmallRng,
    tick: u64,
    ramp_ticks: u64,
    hr: f64,
    rr: f64,
    spo2: f64,
    temp: f64,
    sbp: f64,
    dbp: f64,
    glucose: f64,
    pi: f64,
}

/// Well and unwell targets: (stable, fully deteriorated).
const HR: (f64, f64) = (72.0, 128.0);
const RR: (f64, f64) = (14.0, 27.0);
const SPO2: (f64, f64) = (97.0, 88.0);
const TEMP: (f64, f64) = (36.8, 39.4);
const SBP: (f64, f64) = (124.0, 86.0);
const DBP: (f64, f64) = (78.0, 50.0);
const GLUCOSE: (f64, f64) = (5.8, 9.5);
const PI: (f64, f64) = (3.5, 0.7);
const WEIGHT_KG: f64 = 74.2;
const HEIGHT_CM: f64 = 172.0;

impl SimPatient {
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        Self::with_ramp(scenario, seed, DEFAULT_RAMP_TICKS)
    }

    pub fn with_ramp(scenario: Scenario, seed: u64, ramp_ticks: u64) -> Self {
        SimPatient {
            scenario,
            rng: SmallRng::seed_from_u64(seed),
            tick: 0,
            ramp_ticks: ramp_ticks.max(1),
            hr: HR.0,
            rr: RR.0,
            spo2: SPO2.0,
            temp: TEMP.0,
            sbp: SBP.0,
            dbp: DBP.0,
            glucose: GLUCOSE.0,
            pi: PI.0,
        }
    }

    /// How far the scenario has progressed, 0.0 (well) to 1.0.
    pub fn progress(&self) -> f64 {
        match self.scenario {
            Scenario::Deteriorating => (self.tick as f64 / self.ramp_ticks as f64).min(1.0),
            _ => 0.0,
        }
    }

    fn gauss(&mut self) -> f64 {
        // Box-Muller; `1 - u` keeps the log argument in (0, 1].
        let u: f64 = 1.0 - self.rng.gen::<f64>();
        let v: f64 = self.rng.gen::<f64>();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn step(&mut self, x: f64, target: (f64, f64), sigma: f64) -> f64 {
        let p = self.progress();
        let t = target.0 + (target.1 - target.0) * p;
        x + 0.1 * (t - x) + sigma * self.gauss()
    }

    /// The readings of one tick, grouped by frame (readings in one group were taken together,
    /// e.g. a blood-pressure set). The first tick gives every metric.
    pub fn next(&mut self, now: OffsetDateTime) -> Vec<Vec<Reading>> {
        self.hr = self.step(self.hr, HR, 1.2);
        self.rr = self.step(self.rr, RR, 0.4);
        self.spo2 = self.step(self.spo2, SPO2, 0.3).min(100.0);
        self.temp = self.step(self.temp, TEMP, 0.02);
        self.sbp = self.step(self.sbp, SBP, 1.5);
        self.dbp = self.step(self.dbp, DBP, 1.0);
        self.glucose = self.step(self.glucose, GLUCOSE, 0.05);
        self.pi = self.step(self.pi, PI, 0.08).max(0.02);
        let n = self.tick;
        self.tick += 1;

        let int = |v: f64| Decimal::int(v.round() as i64);
        let tenth = |v: f64| Decimal::new((v * 10.0).round() as i64, -1);
        let hundredth = |v: f64| Decimal::new((v * 100.0).round() as i64, -2);
        let at = |r: Reading| r.at(now);
        let mut frames = Vec::new();

        // Pulse oximeter, every tick.
        let (probe_off, battery_low) = match self.scenario {
            Scenario::Faulty => (n % 20 == 7 || n % 20 == 8, n >= 10),
            _ => (false, false),
        };
        let mut ox = if probe_off {
            vec![
                at(Reading::absent(Metric::Spo2, Absent::Missing)),
                at(Reading::absent(Metric::PulseRate, Absent::Missing)),
            ]
            .into_iter()
            .map(|r| r.with_flags([Flag::SensorOff]))
            .collect::<Vec<_>>()
        } else {
            vec![
                at(Reading::canonical(Metric::Spo2, int(self.spo2))),
                at(Reading::canonical(Metric::PulseRate, int(self.hr + 1.0))),
                at(Reading::canonical(
                    Metric::PerfusionIndex,
                    hundredth(self.pi),
                )),
            ]
        };
        if battery_low {
            ox = ox
                .into_iter()
                .map(|r| r.with_flags([Flag::LowBattery]))
                .collect();
        }
        frames.push(ox);

        // Monitor: heart and respiration rate, every tick.
        let hr = if self.scenario == Scenario::Faulty && (20..=22).contains(&(n % 50)) {
            Decimal::int(400) // implausible: rejected at ingest, counted, alarmed when repeated
        } else {
            int(self.hr)
        };
        frames.push(vec![at(Reading::canonical(Metric::HeartRate, hr))]);
        frames.push(vec![at(Reading::canonical(
            Metric::RespiratoryRate,
            int(self.rr),
        ))]);

        // Spot checks every 10 ticks: temperature, a blood-pressure set, consciousness.
        if n % 10 == 0 {
            frames.push(vec![at(Reading::canonical(
                Metric::BodyTemperature,
                tenth(self.temp),
            ))]);
            let map = (self.sbp + 2.0 * self.dbp) / 3.0;
            frames.push(vec![
                at(Reading::canonical(Metric::SystolicBp, int(self.sbp))),
                at(Reading::canonical(Metric::DiastolicBp, int(self.dbp))),
                at(Reading::canonical(Metric::MeanBp, int(map))),
            ]);
            let acvpu = if self.progress() > 0.8 {
                Acvpu::C
            } else {
                Acvpu::A
            };
            frames.push(vec![at(Reading::acvpu(acvpu))]);
        }
        // Daily-style measurements every 100 ticks.
        if n % 100 == 0 {
            frames.push(vec![at(Reading::canonical(
                Metric::BloodGlucose,
                tenth(self.glucose),
            ))]);
            frames.push(vec![at(Reading::canonical(
                Metric::BodyWeight,
                tenth(WEIGHT_KG),
            ))]);
            frames.push(vec![at(Reading::canonical(
                Metric::BodyHeight,
                int(HEIGHT_CM),
            ))]);
            let bmi = WEIGHT_KG / (HEIGHT_CM / 100.0).powi(2);
            frames.push(vec![at(Reading::canonical(Metric::Bmi, tenth(bmi)))]);
            frames.push(vec![at(Reading::canonical(
                Metric::InspiredOxygen,
                Decimal::int(0),
            ))]);
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-11-23 10:00 UTC)
    }

    fn run(s: Scenario, ticks: u64) -> Vec<Vec<Vec<Reading>>> {
        let mut p = SimPatient::new(s, 7);
        (0..ticks).map(|_| p.next(t0())).collect()
    }

    fn value(frames: &[Vec<Reading>], m: Metric) -> Option<f64> {
        frames
            .iter()
            .flatten()
            .find(|r| r.metric == m)
            .and_then(|r| r.canonical_value())
    }

    #[test]
    fn sim_first_tick_gives_every_metric() {
        let first = &run(Scenario::Stable, 1)[0];
        let metrics: HashSet<Metric> = first.iter().flatten().map(|r| r.metric).collect();
        assert_eq!(metrics, Metric::ALL.into_iter().collect());
    }

    #[test]
    fn sim_stable_readings_are_all_plausible() {
        for tick in run(Scenario::Stable, 2000) {
            for r in tick.iter().flatten() {
                assert_eq!(r.validate(), Ok(()), "{r:?}");
            }
        }
    }

    #[test]
    fn sim_stable_vitals_stay_near_normal() {
        for tick in run(Scenario::Stable, 2000) {
            if let Some(hr) = value(&tick, Metric::HeartRate) {
                assert!((55.0..=95.0).contains(&hr), "{hr}");
            }
            if let Some(s) = value(&tick, Metric::Spo2) {
                assert!(s >= 94.0, "{s}");
            }
        }
    }

    #[test]
    fn sim_deteriorating_patient_ends_unwell() {
        let ticks = run(Scenario::Deteriorating, DEFAULT_RAMP_TICKS + 20);
        let last = &ticks[DEFAULT_RAMP_TICKS as usize + 10]; // a spot-check tick
        assert!(value(last, Metric::HeartRate).unwrap() > 115.0);
        assert!(value(last, Metric::Spo2).unwrap() < 92.0);
        assert!(value(last, Metric::SystolicBp).unwrap() < 100.0);
        assert!(last
            .iter()
            .flatten()
            .any(|r| r.value == crate::reading::Value::Code(Acvpu::C)));
    }

    #[test]
    fn sim_is_repeatable_for_a_seed() {
        let a = run(Scenario::Deteriorating, 50);
        let b = run(Scenario::Deteriorating, 50);
        assert_eq!(a, b);
    }

    #[test]
    fn sim_faulty_device_sends_probe_off_low_battery_and_implausible_values() {
        let all: Vec<Reading> = run(Scenario::Faulty, 60)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        assert!(all.iter().any(|r| r.flags.contains(&Flag::SensorOff)
            && matches!(r.value, crate::reading::Value::Absent(Absent::Missing))));
        assert!(all.iter().any(|r| r.flags.contains(&Flag::LowBattery)));
        assert!(all.iter().any(|r| r.validate().is_err()));
    }

    /// Issue 17, acceptance 4: the demo's faulty probe must alarm within its first minute:
    /// low battery from tick 10, three implausible values in a row (the repeated-rejections
    /// default) by tick 23.
    #[test]
    fn sim_faulty_device_shows_its_faults_within_thirty_ticks() {
        let ticks = run(Scenario::Faulty, 23);
        let flat = || ticks.iter().flatten().flatten();
        assert!(flat().any(|r| r.flags.contains(&Flag::LowBattery)));
        assert!(flat().filter(|r| r.validate().is_err()).count() >= 3);
    }

    /// Issue 17, acceptance 4: at the demo's 500 ms the course is run in 45 s.
    #[test]
    fn sim_deteriorating_course_is_complete_after_the_ramp() {
        let mut p = SimPatient::new(Scenario::Deteriorating, 1);
        for _ in 0..DEFAULT_RAMP_TICKS {
            p.next(t0());
        }
        assert_eq!(p.progress(), 1.0);
        let demo = crate::config::Config::demo(std::path::Path::new("/tmp/vg")).unwrap();
        let sick = demo
            .devices
            .iter()
            .find(|d| d.scenario == Some(Scenario::Deteriorating))
            .unwrap();
        assert!(DEFAULT_RAMP_TICKS * sick.interval_ms.unwrap() <= 45_000);
    }
}
