//! Threshold rules: from one value to the level the rule asks for, with hysteresis.
//!
//! A rule is *breached* when the value is strictly beyond the limit (`above`: `v > limit`,
//! `below`: `v < limit`), compared in the metric's canonical unit on the device's value
//! converted with [`crate::reading::Unit::to_canonical`] (no chart rounding: the clinician wrote
//! the limit in the same unit). Once raised, the alert holds while the value is anywhere short of
//! the *clearing zone* (`above`: `v <= limit - hysteresis`, `below`: `v >= limit + hysteresis`),
//! so values oscillating around the limit do not flap. Persistence (`persist_secs`) and the clear
//! delay (`clear_after_secs`) are judged by the engine on runs of readings ([`Evidence`] from
//! consecutive readings spanning the time, by their observation times), never on time alone.

use super::config::{Direction, ThresholdRule};

/// The value at which a raised alert may clear.
pub fn clear_at(direction: Direction, limit: f64, hysteresis: f64) -> f64 {
    match direction {
        Direction::Above => limit - hysteresis,
        Direction::Below => limit + hysteresis,
    }
}

/// Whether `value` breaches the limit.
pub fn breached(direction: Direction, limit: f64, value: f64) -> bool {
    match direction {
        Direction::Above => value > limit,
        Direction::Below => value < limit,
    }
}

/// Whether `value` is in the clearing zone.
pub fn clearing(direction: Direction, limit: f64, hysteresis: f64, value: f64) -> bool {
    let c = clear_at(direction, limit, hysteresis);
    match direction {
        Direction::Above => value <= c,
        Direction::Below => value >= c,
    }
}

/// What one reading says for a rule: evidence for raising it, or (once raised) for clearing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Beyond the limit while the alert is not raised.
    Breach,
    /// In the clearing zone while the alert is raised.
    Clearing,
}

/// What a fresh `value` says for `rule`, given whether its alert is raised: not raised, a
/// breach or nothing; raised, clearing or nothing (a value short of the clearing zone holds
/// the alert). `None` too for a rule without a valid limit or a non-finite value. Whether the
/// evidence lasted long enough is the engine's run (persistence from readings).
pub fn evidence(rule: &ThresholdRule, value: f64, raised: bool) -> Option<Evidence> {
    let (dir, limit) = rule.limit()?;
    if !value.is_finite() {
        return None;
    }
    if raised {
        clearing(dir, limit, rule.hysteresis, value).then_some(Evidence::Clearing)
    } else {
        breached(dir, limit, value).then_some(Evidence::Breach)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::Priority;
    use crate::reading::Metric;

    fn rule(above: Option<f64>, below: Option<f64>, hysteresis: f64) -> ThresholdRule {
        ThresholdRule {
            id: "r".into(),
            metric: Metric::Spo2,
            above,
            below,
            persist_secs: 0,
            hysteresis,
            clear_after_secs: 0,
            priority: Priority::High,
            inside_scale2_target: false,
        }
    }

    #[test]
    fn below_rule_breaches_strictly_below_the_limit() {
        let r = rule(None, Some(93.0), 2.0);
        assert_eq!(evidence(&r, 92.0, false), Some(Evidence::Breach));
        assert_eq!(evidence(&r, 93.0, false), None);
    }

    #[test]
    fn below_rule_holds_inside_hysteresis_band_once_raised() {
        let r = rule(None, Some(93.0), 2.0);
        assert_eq!(
            evidence(&r, 94.0, true),
            None,
            "holds: no clearing evidence"
        );
        assert_eq!(evidence(&r, 95.0, true), Some(Evidence::Clearing));
    }

    #[test]
    fn above_rule_clears_only_at_limit_minus_hysteresis() {
        let r = rule(Some(120.0), None, 10.0);
        assert_eq!(evidence(&r, 121.0, false), Some(Evidence::Breach));
        assert_eq!(evidence(&r, 115.0, true), None);
        assert_eq!(evidence(&r, 110.0, true), Some(Evidence::Clearing));
        assert_eq!(
            evidence(&r, 115.0, false),
            None,
            "inside the hysteresis band is no breach"
        );
    }

    #[test]
    fn rule_without_limit_or_with_nan_value_gives_no_evidence() {
        assert_eq!(evidence(&rule(None, None, 0.0), 1.0, false), None);
        assert_eq!(
            evidence(&rule(None, Some(93.0), 0.0), f64::NAN, false),
            None
        );
    }
}
