//! Threshold rules: from one value to the level the rule asks for, with hysteresis.
//!
//! A rule is *breached* when the value is strictly beyond the limit (`above`: `v > limit`,
//! `below`: `v < limit`), compared in the metric's canonical unit on the device's value
//! converted with [`crate::reading::Unit::to_canonical`] (no chart rounding: the clinician wrote
//! the limit in the same unit). Once raised, the alert holds while the value is anywhere short of
//! the *clearing zone* (`above`: `v <= limit - hysteresis`, `below`: `v >= limit + hysteresis`),
//! so values oscillating around the limit do not flap. Persistence (`persist_secs`) and the clear
//! delay (`clear_after_secs`) are time, handled by [`super::lifecycle`].

use super::config::{Direction, Priority, ThresholdRule};

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

/// The level the rule asks for given a fresh `value` and whether its alert is raised:
/// breached -> the rule's priority; raised and not yet clearing -> hold the priority;
/// otherwise none. `None` for a rule without a valid limit or a non-finite value.
pub fn desired_level(rule: &ThresholdRule, value: f64, raised: bool) -> Option<Priority> {
    let (dir, limit) = rule.limit()?;
    if !value.is_finite() {
        return None;
    }
    if breached(dir, limit, value) || (raised && !clearing(dir, limit, rule.hysteresis, value)) {
        Some(rule.priority)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(desired_level(&r, 92.0, false), Some(Priority::High));
        assert_eq!(desired_level(&r, 93.0, false), None);
    }

    #[test]
    fn below_rule_holds_inside_hysteresis_band_once_raised() {
        let r = rule(None, Some(93.0), 2.0);
        assert_eq!(desired_level(&r, 94.0, true), Some(Priority::High));
        assert_eq!(desired_level(&r, 95.0, true), None);
    }

    #[test]
    fn above_rule_clears_only_at_limit_minus_hysteresis() {
        let r = rule(Some(120.0), None, 10.0);
        assert_eq!(desired_level(&r, 121.0, false), Some(Priority::High));
        assert_eq!(desired_level(&r, 115.0, true), Some(Priority::High));
        assert_eq!(desired_level(&r, 110.0, true), None);
        assert_eq!(
            desired_level(&r, 115.0, false),
            None,
            "hold only applies once raised"
        );
    }

    #[test]
    fn rule_without_limit_or_with_nan_value_asks_for_nothing() {
        assert_eq!(desired_level(&rule(None, None, 0.0), 1.0, false), None);
        assert_eq!(
            desired_level(&rule(None, Some(93.0), 0.0), f64::NAN, false),
            None
        );
    }
}
