//! Resource history: the history functions (`avg('1h')`, `trend('30m')`, ...), their one
//! implementation over a window of samples, and the per-call memo of their results.
//!
//! CEL's custom functions (`expr`) and the fast path (`fast`) both compute through
//! [`history_stat`], so the two can never disagree on a statistic. Imports nothing of the
//! crate.

/// The history functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryFn {
    Avg,
    MinOver,
    MaxOver,
    Rate,
    Trend,
    Zscore,
    Samples,
}

impl HistoryFn {
    pub(crate) const ALL: [HistoryFn; 7] = [
        HistoryFn::Avg,
        HistoryFn::MinOver,
        HistoryFn::MaxOver,
        HistoryFn::Rate,
        HistoryFn::Trend,
        HistoryFn::Zscore,
        HistoryFn::Samples,
    ];

    pub(crate) fn parse(name: &str) -> Option<Self> {
        HistoryFn::ALL.into_iter().find(|f| f.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            HistoryFn::Avg => "avg",
            HistoryFn::MinOver => "min_over",
            HistoryFn::MaxOver => "max_over",
            HistoryFn::Rate => "rate",
            HistoryFn::Trend => "trend",
            HistoryFn::Zscore => "zscore",
            HistoryFn::Samples => "samples",
        }
    }
}

/// A history function's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stat {
    Double(f64),
    Int(i64),
}

fn mean(pts: &[(i64, f64)]) -> f64 {
    pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64
}

fn secs(t: i64) -> f64 {
    t as f64 / 1000.0
}

/// `f` over the window `(now - window_ms, now]` of `samples` (time order). The one
/// implementation behind both CEL and the fast path. Err((samples in the window, needed)).
pub(crate) fn history_stat(
    f: HistoryFn,
    window_ms: i64,
    now_ms: i64,
    samples: &[(i64, f64)],
) -> Result<Stat, (usize, usize)> {
    let from = now_ms.saturating_sub(window_ms);
    let end = samples.partition_point(|(t, _)| *t <= now_ms);
    let start = samples[..end].partition_point(|(t, _)| *t <= from);
    let current = if end > 0 { samples[end - 1].1 } else { f64::NAN };
    let pts = &samples[start..end];
    let need = |n: usize| if pts.len() < n { Err((pts.len(), n)) } else { Ok(()) };
    let v = match f {
        HistoryFn::Samples => return Ok(Stat::Int(pts.len() as i64)),
        HistoryFn::Avg => {
            need(1)?;
            mean(pts)
        }
        HistoryFn::MinOver => {
            need(1)?;
            pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
        }
        HistoryFn::MaxOver => {
            need(1)?;
            pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max)
        }
        HistoryFn::Rate => {
            need(2)?;
            let (a, b) = (pts[0], pts[pts.len() - 1]);
            if b.0 <= a.0 { 0.0 } else { (b.1 - a.1) / (secs(b.0) - secs(a.0)) }
        }
        HistoryFn::Trend => {
            need(2)?;
            // Times relative to the first sample keep the sums well conditioned.
            let t0 = pts[0].0;
            let n = pts.len() as f64;
            let mt = pts.iter().map(|p| secs(p.0 - t0)).sum::<f64>() / n;
            let mv = mean(pts);
            let (mut num, mut den) = (0.0, 0.0);
            for (t, v) in pts {
                let dt = secs(t - t0) - mt;
                num += dt * (v - mv);
                den += dt * dt;
            }
            if den == 0.0 { 0.0 } else { num / den }
        }
        HistoryFn::Zscore => {
            need(1)?;
            let m = mean(pts);
            let var = pts.iter().map(|p| (p.1 - m) * (p.1 - m)).sum::<f64>() / pts.len() as f64;
            let sd = var.sqrt();
            if sd == 0.0 { 0.0 } else { (current - m) / sd }
        }
    };
    Ok(Stat::Double(v))
}

/// History results of one call: rules on a metric often share a statistic (`avg('15m')`
/// at two thresholds), and it is the same pure function of the same samples.
#[derive(Default)]
pub(crate) struct HistoryMemo {
    entries: std::cell::RefCell<([MemoEntry; 16], usize)>,
}

/// (function, window ms, result; `None` for an error).
type MemoEntry = (Option<HistoryFn>, i64, Option<Stat>);

impl HistoryMemo {
    pub(crate) fn get_or_insert(&self, f: HistoryFn, ms: i64, compute: impl FnOnce() -> Option<Stat>) -> Option<Stat> {
        let mut e = self.entries.borrow_mut();
        let (items, len) = &mut *e;
        if let Some((_, _, stat)) = items[..*len].iter().find(|(g, w, _)| *g == Some(f) && *w == ms) {
            return *stat;
        }
        let stat = compute();
        if *len < items.len() {
            items[*len] = (Some(f), ms, stat);
            *len += 1;
        }
        stat
    }
}
