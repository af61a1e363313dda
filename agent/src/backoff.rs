//! gRPC connection backoff (grpc/doc/connection-backoff.md): 1 s initial,
//! ×1.6 per failure, ±20 % jitter, 120 s cap; each attempt gets at least 20 s
//! to connect.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(1);
pub const MULTIPLIER: f64 = 1.6;
pub const JITTER: f64 = 0.2;
pub const MAX: Duration = Duration::from_secs(120);
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { current: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt; `unit` in [0, 1) supplies the jitter.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.current.as_secs_f64();
        let jittered = base * (1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0));
        self.current = Duration::from_secs_f64((base * MULTIPLIER).min(MAX.as_secs_f64()));
        Duration::from_secs_f64(jittered)
    }

    /// The base of the next delay (before jitter).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.current = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_1_6_and_caps_at_120s() {
        let mut b = Backoff::default();
        let mid: Vec<f64> = (0..14).map(|_| b.next_delay(0.5).as_secs_f64()).collect();
        assert!((mid[0] - 1.0).abs() < 1e-9);
        assert!((mid[1] - 1.6).abs() < 1e-9);
        assert!((mid[2] - 2.56).abs() < 1e-9);
        assert!(mid.iter().all(|d| *d <= 120.0 + 1e-9));
        assert!((mid[13] - 120.0).abs() < 1e-9, "{mid:?}");
    }

    #[test]
    fn jitter_is_plus_minus_20_percent() {
        let mut lo = Backoff::default();
        let mut hi = Backoff::default();
        assert!((lo.next_delay(0.0).as_secs_f64() - 0.8).abs() < 1e-9);
        assert!((hi.next_delay(1.0).as_secs_f64() - 1.2).abs() < 1e-9);
        let mut capped = Backoff { current: MAX };
        assert!(capped.next_delay(1.0) <= Duration::from_secs(144));
        assert!(capped.next_delay(0.0) >= Duration::from_secs(96));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.next_delay(0.5), INITIAL);
    }
}
