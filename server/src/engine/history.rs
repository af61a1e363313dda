//! Resource history of the metrics resource rules look at, per host, on the
//! host's sample clock: bounded series (window and sample count) so an agent
//! sampling fast costs bounded memory and evaluation time.

use std::collections::{HashMap, VecDeque};

/// Sample density kept per series: `window / MAX_SERIES` is the least sum of two
/// consecutive gaps, so a window holds at most `2 × MAX_SERIES` samples.
const MAX_SERIES: usize = 2048;

/// One host's series.
#[derive(Default)]
pub(super) struct HostHistory {
    /// History was read back from the store (after a restart) once.
    pub(super) warmed: bool,
    pub(super) series: HashMap<String, VecDeque<(i64, f64)>>,
}

/// Append the sample `(t, value)` to a series that keeps `window_ms`.
///
/// Samples arrive in time order; an older one (the host's clock stepped back)
/// restarts the series. A sample closer than `window / MAX_SERIES` to the one
/// before the newest replaces the newest: the window holds at most
/// `2 × MAX_SERIES` samples however fast the agent samples, and the newest value
/// is always current.
pub(super) fn push(series: &mut VecDeque<(i64, f64)>, t: i64, value: f64, window_ms: i64) {
    if series.back().is_some_and(|&(last, _)| t < last) {
        series.clear();
    }
    let spacing = window_ms / MAX_SERIES as i64;
    let len = series.len();
    if series.back().is_some_and(|&(last, _)| t == last) || (len >= 2 && t - series[len - 2].0 < spacing) {
        series.pop_back();
    }
    series.push_back((t, value));
    while series.front().is_some_and(|&(ts, _)| ts <= t - window_ms) {
        series.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_its_window_in_time_order() {
        let mut s = VecDeque::new();
        let window = 10_000;
        for t in [0, 4_000, 8_000, 12_000] {
            push(&mut s, t, t as f64, window);
        }
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), [4_000, 8_000, 12_000], "0 fell out of the window");
        push(&mut s, 12_000, 1.0, window);
        assert_eq!(s.back(), Some(&(12_000, 1.0)), "a second sample at the same time replaces the first");
        push(&mut s, 5_000, 2.0, window);
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [(5_000, 2.0)], "a clock step back restarts the series");
    }

    #[test]
    fn fast_samples_are_bounded_per_window() {
        let window = MAX_SERIES as i64 * 100;
        // Every sampling interval below the spacing (100 ms), the worst near half of it.
        for every in [1, 10, 51, 60, 99] {
            let mut s = VecDeque::new();
            let n = window / every * 3;
            for i in 0..n {
                push(&mut s, i * every, i as f64, window);
            }
            assert!(s.len() <= 2 * MAX_SERIES + 1, "every {every} ms: {} samples", s.len());
            assert_eq!(s.back().unwrap().1, (n - 1) as f64, "the newest value is always current");
            assert!(s.front().unwrap().0 > (n - 1) * every - window, "nothing older than the window");
        }
    }
}
