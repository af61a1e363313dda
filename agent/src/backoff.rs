//! Reconnect backoff: the base of gRPC's connection backoff
//! (grpc/doc/connection-backoff.md: 1 s initial, ×1.6 per failure, 120 s cap; each
//! attempt gets at least 20 s to connect), with the delay drawn uniformly from
//! 10-100 % of the base instead of gRPC's ±20 %. A server restart drops every agent's
//! stream at the same instant; with ±20 % the whole fleet came back inside 0.8-1.2 s,
//! a burst of several times the mean attempt rate (`driftwatch-sim restart`). Spread
//! over the whole base, the attempts are close to even over time. The 10 % floor
//! keeps an agent from retrying at once in a loop.
//!
//! After a connection that made progress (`reset_for_reconnect`), the first [`STEADY_AFTER_RESET`] delays keep
//! the initial base instead of growing: a restarting server is typically back within a
//! second or two, and an agent whose first retry found it not yet listening would
//! otherwise wait up to 1.6 s, then 2.56 s, trailing the rest of the fleet back. The
//! base grows from then on, so a server that stays down still sees gRPC's schedule.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(1);
pub const MULTIPLIER: f64 = 1.6;
/// The shortest delay, as a fraction of the base.
pub const MIN_FRACTION: f64 = 0.1;
pub const MAX: Duration = Duration::from_secs(120);
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How many delays after a reset keep the initial base.
pub const STEADY_AFTER_RESET: u32 = 3;

#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    /// Delays left at the initial base before it grows (after a reset only).
    steady: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { current: INITIAL, steady: 0 }
    }
}

impl Backoff {
    /// The delay before the next attempt: `unit` in [0, 1) (uniformly random) picks it
    /// between 10 % and 100 % of the current base.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.current.as_secs_f64();
        let jittered = base * (MIN_FRACTION + (1.0 - MIN_FRACTION) * unit.clamp(0.0, 1.0));
        if self.steady > 0 {
            self.steady -= 1;
        } else {
            self.current = Duration::from_secs_f64((base * MULTIPLIER).min(MAX.as_secs_f64()));
        }
        Duration::from_secs_f64(jittered)
    }

    /// The base of the next delay (before jitter).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Success: start over.
    pub fn reset(&mut self) {
        self.current = INITIAL;
        self.steady = 0;
    }

    /// The server refused what the agent sent: retrying soon would be refused again, so
    /// the base grows from the next delay on, hold or not.
    pub fn end_hold(&mut self) {
        self.steady = 0;
    }

    /// A connection made progress: start over, holding the initial base for the first
    /// few retries once it ends (see the module docs).
    pub fn reset_for_reconnect(&mut self) {
        self.current = INITIAL;
        self.steady = STEADY_AFTER_RESET;
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
        let mut capped = Backoff { current: MAX, steady: 0 };
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
    fn a_reset_starts_over_and_a_reconnect_reset_holds_the_initial_base_a_few_times() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset_for_reconnect();
        let top: Vec<Duration> = (0..STEADY_AFTER_RESET + 2).map(|_| b.next_delay(1.0)).collect();
        let steady = STEADY_AFTER_RESET as usize;
        assert!(top[..=steady].iter().all(|d| *d == INITIAL), "{top:?}");
        assert_eq!(top[steady + 1], INITIAL.mul_f64(MULTIPLIER), "then it grows: {top:?}");
        // A fresh backoff (never connected), or a plain reset, grows from its first delay.
        let mut fresh = Backoff::default();
        fresh.next_delay(1.0);
        assert_eq!(fresh.next_delay(1.0), INITIAL.mul_f64(MULTIPLIER));
        b.reset();
        b.next_delay(1.0);
        assert_eq!(b.next_delay(1.0), INITIAL.mul_f64(MULTIPLIER));
        // A refusal ends the hold.
        b.reset_for_reconnect();
        b.end_hold();
        b.next_delay(1.0);
        assert_eq!(b.next_delay(1.0), INITIAL.mul_f64(MULTIPLIER));
    }
}
