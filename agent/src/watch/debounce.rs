//! Debouncing of inotify events: a burst of events is handled once, when it ends.
//! Editors and package managers touch a file several times per save (truncate,
//! write, chmod, rename); reading it after each event would send half-written
//! states and waste reads.

use std::time::{Duration, Instant};

/// Longest wait between the first event of a burst and processing it (unless the
/// configured quiet time is longer): a file written continuously is still seen.
const MAX_COALESCE: Duration = Duration::from_millis(100);

/// A burst ends after `quiet` without events, or `max_wait` after its first event.
#[derive(Debug)]
pub(super) struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    /// First event of the current burst; `None` between bursts.
    first: Option<Instant>,
    last: Instant,
}

impl Debounce {
    pub fn new(quiet: Duration) -> Self {
        Self { quiet, max_wait: MAX_COALESCE.max(quiet), first: None, last: Instant::now() }
    }

    /// Events arrived at `now`.
    pub fn events(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = now;
    }

    /// When the current burst ends, if one is going on.
    pub fn deadline(&self) -> Option<Instant> {
        self.first.map(|f| (self.last + self.quiet).min(f + self.max_wait))
    }

    /// Whether the current burst has ended by `now`: then its events are due, and the
    /// next event starts a new burst.
    pub fn take_due(&mut self, now: Instant) -> bool {
        let due = self.first.is_some_and(|f| now >= self.last + self.quiet || now >= f + self.max_wait);
        if due {
            self.first = None;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(5);

    #[test]
    fn a_burst_ends_after_quiet_time() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        assert_eq!(d.deadline(), None);
        assert!(!d.take_due(t0 + QUIET));
        d.events(t0);
        d.events(t0 + Duration::from_millis(3));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(8)));
        assert!(!d.take_due(t0 + Duration::from_millis(7)));
        assert!(d.take_due(t0 + Duration::from_millis(8)));
        assert_eq!(d.deadline(), None, "the next event starts a new burst");
    }

    #[test]
    fn a_burst_that_never_pauses_is_due_after_max_coalesce() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        let mut t = t0;
        while t < t0 + MAX_COALESCE {
            d.events(t);
            assert!(!d.take_due(t), "due too early at {:?}", t - t0);
            t += Duration::from_millis(2);
        }
        d.events(t);
        assert_eq!(d.deadline(), Some(t0 + MAX_COALESCE));
        assert!(d.take_due(t0 + MAX_COALESCE));
    }
}
