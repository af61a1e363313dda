//! Reconnect backoff: the base of gRPC's connection backoff
//! (grpc/doc/connection-backoff.md: 1 s initial, ×1.6 per failure, 120 s cap; each
//! attempt gets at least 20 s to connect), with the delay drawn uniformly from
//! 10-100 % of the base instead of gRPC's ±20 %. A server restart drops every agent's
//! stream at the same instant; with ±20 % the whole fleet came back inside 0.8-1.2 s,
//! a burst of several times the mean attempt rate (`driftwatch-sim restart`). Spread
//! over the whole base, the attempts are close to even over time. The 10 % floor
//! keeps an agent from retrying at once in a loop.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(1);
pub const MULTIPLIER: f64 = 1.6;
/// The shortest delay, as a fraction of the base.
pub const MIN_FRACTION: f64 = 0.1;
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
    /// The delay before the next attempt: `unit` in [0, 1) (uniformly random) picks it
    /// between 10 % and 100 % of the current base.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.current.as_secs_f64();
        let jittered = base * (MIN_FRACTION + (1.0 - MIN_FRACTION) * unit.clamp(0.0, 1.0));
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
    fn base_grows_by_1_6_and_caps_at_120s() {
        let mut b = Backoff::default();
        let top: Vec<f64> = (0..14).map(|_| b.next_delay(1.0).as_secs_f64()).collect();
        assert!((top[0] - 1.0).abs() < 1e-9);
        assert!((top[1] - 1.6).abs() < 1e-9);
        assert!((top[2] - 2.56).abs() < 1e-9);
        assert!(top.iter().all(|d| *d <= 120.0 + 1e-9));
        assert!((top[13] - 120.0).abs() < 1e-9, "{top:?}");
    }

    #[test]
    fn delay_spans_10_to_100_percent_of_the_base() {
        assert!((Backoff::default().next_delay(0.0).as_secs_f64() - 0.1).abs() < 1e-9);
        assert!((Backoff::default().next_delay(0.5).as_secs_f64() - 0.55).abs() < 1e-9);
        let mut capped = Backoff { current: MAX };
        assert!(capped.next_delay(1.0) <= MAX);
        assert!(capped.next_delay(0.0) >= Duration::from_secs(12));
    }

    /// A fleet dropped at the same instant: its first retries are spread evenly over
    /// 0.1-1 s (no 100 ms bucket far above the mean), and so are the sums of its
    /// first three delays (a server that stays down a while).
    #[test]
    fn a_fleet_retries_spread_evenly() {
        let agents = 20_000;
        let mut first = vec![0usize; 10];
        let mut third = vec![0usize; 60];
        for _ in 0..agents {
            let mut b = Backoff::default();
            let d1 = b.next_delay(rand::random::<f64>()).as_secs_f64();
            first[((d1 * 10.0) as usize).min(9)] += 1;
            let d3 = d1
                + b.next_delay(rand::random::<f64>()).as_secs_f64()
                + b.next_delay(rand::random::<f64>()).as_secs_f64();
            third[((d3 * 10.0) as usize).min(59)] += 1;
        }
        assert_eq!(first[0], 0, "nothing retries within 100 ms");
        let mean = agents as f64 / 9.0;
        for (i, n) in first.iter().enumerate().skip(1) {
            assert!((*n as f64 - mean).abs() < mean * 0.15, "bucket {i}: {n} against a mean of {mean:.0}: {first:?}");
        }
        let busy: Vec<usize> = third.iter().copied().filter(|n| *n > 0).collect();
        let mean = agents as f64 / busy.len() as f64;
        let peak = *busy.iter().max().unwrap() as f64;
        assert!(peak < 3.0 * mean, "third retries: peak {peak} against a mean of {mean:.0}: {third:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), INITIAL);
    }
}
