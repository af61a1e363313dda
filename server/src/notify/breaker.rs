//! Retry timing: exponential backoff with jitter, and a circuit breaker per endpoint.

use std::time::{Duration, Instant};

/// Delay before retry number `attempt` (1 after the first failure): `base · 2^(attempt-1)`
/// capped at `max`, then jittered uniformly into its upper half.
///
/// Half-range ("equal") jitter rather than full jitter: retries of many
/// notifications still spread out, but each delay is at least half its step, so
/// the gaps between attempts grow and stay visible in the receiver's timings.
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit_random: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let step = base.saturating_mul(1u32 << exp).min(max);
    let r = unit_random.clamp(0.0, 1.0);
    step.mul_f64(0.5 + 0.5 * r)
}

/// A uniformly random number in [0, 1).
pub fn unit_random() -> f64 {
    rand::random::<f64>()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Delivering.
    Closed,
    /// Failing: nothing is tried until the cool-down has passed.
    Open { until: Instant },
    /// One probe is allowed (or in flight); its outcome closes or reopens the circuit.
    HalfOpen { probing: bool },
}

/// Opens after `threshold` consecutive failures; after `cooldown`, lets one probe through.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: Circuit,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, failures: 0, state: Circuit::Closed }
    }

    /// May a request go out now? In half-open state only one may, until its outcome is recorded.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            Circuit::Closed => true,
            Circuit::Open { until } if now >= until => {
                self.state = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::Open { .. } => false,
            Circuit::HalfOpen { probing: false } => {
                self.state = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::HalfOpen { probing: true } => false,
        }
    }

    /// When a request may go out next (None: now).
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        match self.state {
            Circuit::Open { until } if until > now => Some(until),
            _ => None,
        }
    }

    /// Record a success; returns true when it ended a failing streak (the endpoint recovered).
    pub fn success(&mut self) -> bool {
        let recovered = self.failures > 0 || self.state != Circuit::Closed;
        self.failures = 0;
        self.state = Circuit::Closed;
        recovered
    }

    /// Record a failure; returns true when it opened the circuit.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = matches!(self.state, Circuit::HalfOpen { .. }) || self.failures >= self.threshold;
        let was_open = matches!(self.state, Circuit::Open { .. });
        if open {
            self.state = Circuit::Open { until: now + self.cooldown };
        }
        open && !was_open
    }

    /// An allowed request did not happen after all (shutdown): give the probe back.
    pub fn cancel(&mut self) {
        if self.state == (Circuit::HalfOpen { probing: true }) {
            self.state = Circuit::HalfOpen { probing: false };
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// closed, open or half_open (as `NotifierStatus.circuit`); an open circuit whose
    /// cool-down has passed shows as half_open.
    pub fn state_name(&self, now: Instant) -> &'static str {
        match self.state {
            Circuit::Closed => "closed",
            Circuit::Open { until } if now < until => "open",
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_is_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=12 {
            let step = (base * 2u32.pow(attempt - 1)).min(max);
            assert_eq!(backoff(attempt, base, max, 0.0), step / 2, "attempt {attempt}: lower bound");
            assert_eq!(backoff(attempt, base, max, 1.0), step, "attempt {attempt}: upper bound");
            for _ in 0..50 {
                let d = backoff(attempt, base, max, unit_random());
                assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?} outside [{:?}, {step:?}]", step / 2);
            }
        }
        // Consecutive delays never shrink (until the cap), whatever the jitter.
        for attempt in 1..6 {
            assert!(backoff(attempt + 1, base, max, 0.0) >= backoff(attempt, base, max, 1.0));
        }
        assert_eq!(backoff(1000, base, max, 1.0), max, "huge attempt counts do not overflow");
        assert_eq!(backoff(0, base, max, 1.0), base);
    }

    #[test]
    fn breaker_opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::new(3, cool);
        assert!(b.allow(t0));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state_name(t0), "closed");
        assert!(b.failure(t0), "third consecutive failure opens");
        assert_eq!(b.state_name(t0), "open");
        assert!(!b.allow(t0 + Duration::from_secs(29)));
        assert_eq!(b.blocked_until(t0), Some(t0 + cool));
        // Cool-down over: exactly one probe.
        let t1 = t0 + cool;
        assert_eq!(b.state_name(t1), "half_open");
        assert!(b.allow(t1));
        assert!(!b.allow(t1), "one probe at a time");
        // The probe fails: open again for a full cool-down.
        assert!(b.failure(t1));
        assert!(!b.allow(t1 + Duration::from_secs(1)));
        let t2 = t1 + cool;
        assert!(b.allow(t2));
        assert!(b.success(), "recovery is reported");
        assert_eq!(b.state_name(t2), "closed");
        assert_eq!(b.consecutive_failures(), 0);
        assert!(b.allow(t2) && b.allow(t2), "closed lets everything through");
        assert!(!b.success(), "a success after a success is no recovery");
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(t);
        assert!(b.success());
        assert!(!b.failure(t), "the streak started over");
        assert_eq!(b.state_name(t), "closed");
    }

    #[test]
    fn a_cancelled_probe_is_given_back() {
        let t = Instant::now();
        let mut b = Breaker::new(1, Duration::ZERO);
        b.failure(t);
        assert!(b.allow(t));
        b.cancel();
        assert!(b.allow(t), "the probe can be retried");
    }
}
