//! Jittered exponential backoff for reconnects and refused-row retries.
//!
//! rumqttc reconnects immediately on every `poll()` after an error (rust-stack.md §1.5), which
//! spins the CPU and floods the log when the broker is away; the session sleeps with this
//! between attempts. The jitter source is a caller-provided number so the schedule is testable.

use std::time::Duration;

/// Doubling delays from `initial` up to `max`, each drawn uniformly from [d/2, d].
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The un-jittered delay of the next attempt.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay; `unit` in [0, 1) picks the point in [ceiling/2, ceiling].
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let c = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let u = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        c.mul_f64(0.5 + 0.5 * u)
    }

    /// The next delay with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Back to the first delay (after a connection proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_capped_at_max() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_with(1.0);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
    }

    #[test]
    fn backoff_jitter_stays_within_half_to_full_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
        assert_eq!(b.next_with(0.0), Duration::from_secs(4));
        assert_eq!(
            b.next_with(0.999_999),
            Duration::from_secs(16).mul_f64(0.999_999_5)
        );
    }

    #[test]
    fn backoff_never_exceeds_cap_after_many_attempts() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn backoff_reset_returns_to_initial() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        b.next_with(0.5);
        b.next_with(0.5);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
