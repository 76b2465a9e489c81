//! The alert lifecycle: one small state machine per alert key that turns "what the evidence
//! says the priority should be" into exactly one transition event at a time.
//!
//! ```text
//!            desired > none, held raise_after           desired > current, held raise_after
//!   (idle) ─────────────────────────────────> raised ──────────────────────────────────> escalated
//!      ^                                        │  desired < current (lower, not none), held settle_after
//!      │   desired = none, held settle_after    ├──────────────────────────────────────> de_escalated
//!      └────────────────────────────────────────┘ cleared
//! ```
//!
//! Rules that keep people from being woken twice and stop flapping:
//! - A transition happens only when the desired level has differed from the current one
//!   **continuously** for the delay: `raise_after` upwards (persistence), `settle_after`
//!   downwards. Evidence back at the current level resets the pending change.
//! - Repeating the same evidence never produces a second event: the state only moves when the
//!   level changes.
//! - The alert id is fixed when the alert is raised (UUID v5 of patient, key and raise time), and
//!   every later transition of that episode carries it, so the receiver can deduplicate and
//!   thread events; the state is serde so a restart keeps ids and never re-raises.
//! - Absence of evidence is not evidence of recovery: callers keep the last desired level when
//!   data goes stale (see `mod.rs`), so an alert never clears because a device went quiet.
//!
//! Hysteresis on values is the caller's job (it decides the desired level); this module is
//! only about time.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::config::Priority;

/// The four transitions; each is one [`super::AlertEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Raised,
    Escalated,
    DeEscalated,
    Cleared,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Escalated => "escalated",
            Transition::DeEscalated => "de_escalated",
            Transition::Cleared => "cleared",
        }
    }
}

/// An alert currently raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    pub alert_id: String,
    pub priority: Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
}

/// What a [`Tracker`] step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub transition: Transition,
    pub alert_id: String,
    /// The priority after the transition (for `cleared`, the priority it had).
    pub priority: Priority,
    /// The priority before, for escalations and de-escalations.
    pub previous: Option<Priority>,
    pub raised_at: OffsetDateTime,
}

/// Delays, in whole seconds, for one alert key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timing {
    /// How long a higher level must hold before raising or escalating.
    pub raise_after_secs: u64,
    /// How long a lower level (or none) must hold before de-escalating or clearing.
    pub settle_after_secs: u64,
}

/// Lifecycle state of one alert key. Serde, so it survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tracker {
    /// The raised alert, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Active>,
    /// The level the latest evidence asks for (`None` = no alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Priority>,
    /// Since when the desired level has been above the current one, continuously.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub up_since: Option<OffsetDateTime>,
    /// Since when the desired level has been below the current one, continuously.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub down_since: Option<OffsetDateTime>,
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
}

/// Deterministic alert id: UUID v5 of `patient \n key \n raise time (RFC 3339, UTC)`, under
/// a vitalgate namespace. Same inputs, same id, on any gateway, after any restart.
pub fn alert_id(patient: &str, key: &str, raised_at: OffsetDateTime) -> String {
    let ns = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://vitalgate.invalid/alerts/v1");
    let t = raised_at.to_offset(time::UtcOffset::UTC);
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    );
    Uuid::new_v5(&ns, format!("{patient}\n{key}\n{stamp}").as_bytes()).to_string()
}

/// Deterministic event id: UUID v5 of the alert id, transition, priority and time, so a
/// re-published event is recognisably the same event.
pub fn event_id(
    alert_id: &str,
    transition: Transition,
    priority: Priority,
    at: OffsetDateTime,
) -> String {
    let ns = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"https://vitalgate.invalid/alert-events/v1",
    );
    let at = at.to_offset(time::UtcOffset::UTC).unix_timestamp_nanos();
    Uuid::new_v5(
        &ns,
        format!(
            "{alert_id}\n{}\n{}\n{at}",
            transition.as_str(),
            priority.as_str()
        )
        .as_bytes(),
    )
    .to_string()
}

impl Tracker {
    /// The current priority, `None` when idle.
    pub fn current(&self) -> Option<Priority> {
        self.active.as_ref().map(|a| a.priority)
    }

    /// Records new evidence (`desired` level) and steps.
    pub fn observe(
        &mut self,
        now: OffsetDateTime,
        desired: Option<Priority>,
        timing: Timing,
        patient: &str,
        key: &str,
    ) -> Option<Change> {
        self.desired = desired;
        self.step(now, timing, patient, key)
    }

    /// Lets time pass with the last evidence; applies a pending change whose delay elapsed.
    pub fn step(
        &mut self,
        now: OffsetDateTime,
        timing: Timing,
        patient: &str,
        key: &str,
    ) -> Option<Change> {
        let current = self.current();
        let desired = self.desired;
        if desired > current {
            self.down_since = None;
            let since = *self.up_since.get_or_insert(now);
            if now - since < secs(timing.raise_after_secs) {
                return None;
            }
        } else if desired < current {
            self.up_since = None;
            let since = *self.down_since.get_or_insert(now);
            if now - since < secs(timing.settle_after_secs) {
                return None;
            }
        } else {
            self.up_since = None;
            self.down_since = None;
            return None;
        }
        self.up_since = None;
        self.down_since = None;
        self.apply(now, desired, patient, key)
    }

    fn apply(
        &mut self,
        now: OffsetDateTime,
        desired: Option<Priority>,
        patient: &str,
        key: &str,
    ) -> Option<Change> {
        match (self.active.take(), desired) {
            (None, Some(p)) => {
                let id = alert_id(patient, key, now);
                self.active = Some(Active {
                    alert_id: id.clone(),
                    priority: p,
                    raised_at: now,
                });
                Some(Change {
                    transition: Transition::Raised,
                    alert_id: id,
                    priority: p,
                    previous: None,
                    raised_at: now,
                })
            }
            (Some(a), Some(p)) => {
                let transition = if p > a.priority {
                    Transition::Escalated
                } else {
                    Transition::DeEscalated
                };
                let change = Change {
                    transition,
                    alert_id: a.alert_id.clone(),
                    priority: p,
                    previous: Some(a.priority),
                    raised_at: a.raised_at,
                };
                self.active = Some(Active { priority: p, ..a });
                Some(change)
            }
            (Some(a), None) => Some(Change {
                transition: Transition::Cleared,
                alert_id: a.alert_id,
                priority: a.priority,
                previous: Some(a.priority),
                raised_at: a.raised_at,
            }),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);

    fn at(s: i64) -> OffsetDateTime {
        T0 + Duration::seconds(s)
    }

    const TIMING: Timing = Timing {
        raise_after_secs: 60,
        settle_after_secs: 120,
    };

    #[test]
    fn tracker_raises_only_after_raise_delay_held() {
        let mut t = Tracker::default();
        assert_eq!(
            t.observe(at(0), Some(Priority::High), TIMING, "p", "k"),
            None
        );
        assert_eq!(t.step(at(59), TIMING, "p", "k"), None);
        let c = t.step(at(60), TIMING, "p", "k").unwrap();
        assert_eq!(c.transition, Transition::Raised);
        assert_eq!(c.raised_at, at(60));
        assert_eq!(t.step(at(61), TIMING, "p", "k"), None, "no second event");
    }

    #[test]
    fn tracker_interrupted_evidence_restarts_the_delay() {
        let mut t = Tracker::default();
        t.observe(at(0), Some(Priority::High), TIMING, "p", "k");
        t.observe(at(30), None, TIMING, "p", "k");
        assert_eq!(
            t.observe(at(40), Some(Priority::High), TIMING, "p", "k"),
            None
        );
        assert_eq!(t.step(at(99), TIMING, "p", "k"), None);
        assert!(t.step(at(100), TIMING, "p", "k").is_some());
    }

    #[test]
    fn tracker_escalates_and_de_escalates_keeping_the_alert_id() {
        let mut t = Tracker::default();
        let no_delay = Timing::default();
        let r = t
            .observe(at(0), Some(Priority::Medium), no_delay, "p", "k")
            .unwrap();
        let e = t
            .observe(at(1), Some(Priority::High), no_delay, "p", "k")
            .unwrap();
        assert_eq!(
            (e.transition, e.previous),
            (Transition::Escalated, Some(Priority::Medium))
        );
        let d = t
            .observe(at(2), Some(Priority::Low), no_delay, "p", "k")
            .unwrap();
        assert_eq!(d.transition, Transition::DeEscalated);
        let c = t.observe(at(3), None, no_delay, "p", "k").unwrap();
        assert_eq!(c.transition, Transition::Cleared);
        assert!([&e, &d, &c].iter().all(|x| x.alert_id == r.alert_id));
        assert_eq!(t.active, None);
    }

    #[test]
    fn alert_id_is_deterministic_and_depends_on_each_input() {
        let a = alert_id("p1", "k", at(0));
        assert_eq!(a, alert_id("p1", "k", at(0)));
        assert_eq!(
            a,
            alert_id("p1", "k", at(0).to_offset(time::macros::offset!(+1)))
        );
        assert_ne!(a, alert_id("p2", "k", at(0)));
        assert_ne!(a, alert_id("p1", "k2", at(0)));
        assert_ne!(a, alert_id("p1", "k", at(1)));
    }
}
