//! The alert state machine: a pure function of (previous alert, observation, now).
//!
//! Semantics follow Prometheus:
//! - a matching observation starts an episode (`active_since = now`); with `for == 0` the
//!   alert fires at once, otherwise it is `Pending` until `now - active_since >= for`;
//! - a non-matching observation drops a `Pending` alert back to `Inactive`; a `Firing`
//!   alert keeps firing while `now - keep_since < keep_firing_for` (`keep_since` is the
//!   time of the first non-matching observation after the last match) and is `Resolved`
//!   after that;
//! - an evaluation error holds the state as it is (an error never fires nor resolves);
//! - `Resolved` and `Inactive` behave alike on the next match: a new episode starts.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How bad an alert is. Ordered: info < low < medium < high < critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Never matched, or a pending episode ended before `for` elapsed.
    #[default]
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// Identity of an alert: rule (group + name), host, file and key — never the value.
/// 32 lower-case hex characters (the first 128 bits of SHA-256 over the NUL-separated parts).
pub fn fingerprint(group: &str, rule: &str, host: &str, file: Option<&str>, key: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [group, rule, host, file.unwrap_or(""), key.unwrap_or("")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Per-rule timing that drives the state machine, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
}

/// What one evaluation said about an alert's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Matched,
    NotMatched,
    /// The expression could not be evaluated: hold the state.
    Error,
}

impl Observation {
    pub fn from_outcome(matched: bool, error: bool) -> Self {
        match (error, matched) {
            (true, _) => Observation::Error,
            (false, true) => Observation::Matched,
            (false, false) => Observation::NotMatched,
        }
    }
}

/// The state of one alert (one fingerprint), as the state machine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AlertStatus {
    pub state: AlertState,
    /// Start of the current episode (first match after inactive/resolved).
    pub active_since_ms: Option<i64>,
    /// When the current episode started firing.
    pub fired_at_ms: Option<i64>,
    /// Last time the condition matched.
    pub last_matched_ms: Option<i64>,
    /// First non-matching observation since the last match while firing (keep_firing_for).
    pub keep_since_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
}

/// One state change, to be recorded as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: AlertState,
    pub to: AlertState,
    pub at_ms: i64,
}

/// Advance one alert. `prev` is `None` for an alert never seen (same as `Inactive`).
/// Returns the new status and the transitions that happened (zero or one).
pub fn step(
    prev: Option<&AlertStatus>,
    timing: Timing,
    obs: Observation,
    now_ms: i64,
) -> (AlertStatus, Vec<Transition>) {
    let mut s = prev.cloned().unwrap_or_default();
    let from = s.state;
    match obs {
        Observation::Error => return (s, Vec::new()),
        Observation::Matched => {
            s.last_matched_ms = Some(now_ms);
            s.keep_since_ms = None;
            match s.state {
                AlertState::Inactive | AlertState::Resolved => {
                    s.active_since_ms = Some(now_ms);
                    s.resolved_at_ms = None;
                    s.fired_at_ms = None;
                    if timing.for_ms <= 0 {
                        s.state = AlertState::Firing;
                        s.fired_at_ms = Some(now_ms);
                    } else {
                        s.state = AlertState::Pending;
                    }
                }
                AlertState::Pending => {
                    let since = s.active_since_ms.unwrap_or(now_ms);
                    if now_ms.saturating_sub(since) >= timing.for_ms {
                        s.state = AlertState::Firing;
                        s.fired_at_ms = Some(now_ms);
                    }
                }
                AlertState::Firing => {}
            }
        }
        Observation::NotMatched => match s.state {
            AlertState::Inactive | AlertState::Resolved => {}
            AlertState::Pending => {
                s.state = AlertState::Inactive;
                s.active_since_ms = None;
            }
            AlertState::Firing => {
                let keep_since = *s.keep_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(keep_since) >= timing.keep_firing_for_ms {
                    s.state = AlertState::Resolved;
                    s.resolved_at_ms = Some(now_ms);
                    s.keep_since_ms = None;
                    s.active_since_ms = None;
                }
            }
        },
    }
    let transitions = if s.state != from { vec![Transition { from, to: s.state, at_ms: now_ms }] } else { Vec::new() };
    (s, transitions)
}
