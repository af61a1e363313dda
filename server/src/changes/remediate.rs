//! Remediation: a rule with `remediate: restore_baseline` makes the server put the
//! alert's key back to the host's effective baseline when the alert fires.
//!
//! Fired events for one (host, file) are coalesced briefly so a regressed file with
//! several bad keys is one correction. A per-(host, file) [`Limiter`] spaces attempts
//! and caps them within a window, so a fight with another writer (a config manager
//! putting the bad value back) cannot loop: past the cap the server gives up, records
//! it in the audit log and raises its own `remediation_gave_up` alert, which resolves
//! once nothing remediable fires on that file any more.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1;
use driftwatch_rules::{Remediation, Severity};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{ChangesCore, SERVER_ACTOR};
use crate::engine::{Command, SYSTEM_GROUP, SystemAlert};

/// The alert raised when remediation gives up on a file.
pub const GAVE_UP_RULE: &str = "remediation_gave_up";
/// Fired events within this long of each other make one correction.
const COALESCE: Duration = Duration::from_millis(200);

/// `[remediation]` in the server config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemediationSettings {
    /// Least time between two attempts on one (host, file).
    pub min_interval: Duration,
    /// Most attempts on one (host, file) within `window`; the next one gives up.
    pub max_attempts: u32,
    pub window: Duration,
}

impl Default for RemediationSettings {
    fn default() -> Self {
        Self { min_interval: Duration::from_secs(60), max_attempts: 3, window: Duration::from_secs(3600) }
    }
}

/// What to do about one (host, file) now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Attempt,
    /// Too soon after the last attempt: try again at this time (ms).
    WaitUntil(i64),
    /// The cap is reached: give up (raise the alert), once.
    GiveUp,
    /// Already gave up; stay quiet until the file is fine again.
    Suppressed,
}

/// Attempts per (host, file): pure, clock passed in.
#[derive(Debug, Default)]
pub struct Limiter {
    attempts: HashMap<(String, String), VecDeque<i64>>,
    gave_up: BTreeSet<(String, String)>,
}

impl Limiter {
    pub fn decide(&mut self, s: &RemediationSettings, host: &str, path: &str, now_ms: i64) -> Decision {
        let key = (host.to_string(), path.to_string());
        if self.gave_up.contains(&key) {
            return Decision::Suppressed;
        }
        let window = s.window.as_millis() as i64;
        let q = self.attempts.entry(key.clone()).or_default();
        while q.front().is_some_and(|&t| t <= now_ms - window) {
            q.pop_front();
        }
        if q.len() >= s.max_attempts as usize {
            self.gave_up.insert(key);
            return Decision::GiveUp;
        }
        if let Some(&last) = q.back() {
            let next = last + s.min_interval.as_millis() as i64;
            if now_ms < next {
                return Decision::WaitUntil(next);
            }
        }
        q.push_back(now_ms);
        Decision::Attempt
    }

    /// The file is fine again. After a give-up (true) the slate is clean: someone
    /// fixed the fight. Otherwise the attempts stay counted: a correction that
    /// resolved the alert is exactly what a fight with another writer looks like.
    pub fn settle(&mut self, host: &str, path: &str) -> bool {
        let key = (host.to_string(), path.to_string());
        let gave_up = self.gave_up.remove(&key);
        if gave_up {
            self.attempts.remove(&key);
        }
        gave_up
    }

    pub fn attempts(&self, host: &str, path: &str) -> usize {
        self.attempts.get(&(host.to_string(), path.to_string())).map_or(0, VecDeque::len)
    }
}

struct Due {
    keys: BTreeSet<String>,
    rules: BTreeSet<String>,
    at: Instant,
}

/// Whether the alert's rule asks to restore the baseline.
fn remediable(core: &ChangesCore, a: &v1::Alert) -> bool {
    if a.path.is_empty() || a.key.is_empty() {
        return false;
    }
    core.rules.current().is_some_and(|set| {
        set.rules()
            .iter()
            .any(|r| r.group == a.group && r.name == a.rule && r.remediate == Some(Remediation::RestoreBaseline))
    })
}

/// Remediable alerts firing on (host, path), by key.
fn firing_keys(core: &ChangesCore, host: &str, path: &str) -> BTreeSet<String> {
    let alerts =
        core.book.alerts_where(|a| a.host_id == host && a.path == path && a.state == v1::AlertState::Firing as i32);
    alerts.into_iter().filter(|a| remediable(core, a)).map(|a| a.key).collect()
}

/// Queue the alert's key for its file's next correction (coalescing briefly).
fn schedule(due: &mut BTreeMap<(String, String), Due>, a: &v1::Alert) {
    let d = due.entry((a.host_id.clone(), a.path.clone())).or_insert_with(|| Due {
        keys: BTreeSet::new(),
        rules: BTreeSet::new(),
        at: Instant::now() + COALESCE,
    });
    d.keys.insert(a.key.clone());
    d.rules.insert(a.rule.clone());
}

/// Run until shutdown: watch alert events and remediate.
pub async fn run(core: Arc<ChangesCore>, hub: Arc<crate::hub::EventHub>, settings: RemediationSettings) {
    let mut events = hub.subscribe();
    let mut limiter = Limiter::default();
    let mut due: BTreeMap<(String, String), Due> = BTreeMap::new();
    loop {
        let next = due.values().map(|d| d.at).min();
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                let ready: Vec<(String, String)> = due.iter().filter(|(_, d)| d.at <= now).map(|(k, _)| k.clone()).collect();
                for key in ready {
                    let d = due.remove(&key).expect("present");
                    if let Some(later) = attempt(&core, &settings, &mut limiter, &key.0, &key.1, d).await {
                        due.insert(key, later);
                    }
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let Some(a) = ev.alert.as_ref() else { continue };
                    if a.group == SYSTEM_GROUP || !remediable(&core, a) {
                        continue;
                    }
                    match v1::AlertEventKind::try_from(ev.kind) {
                        Ok(v1::AlertEventKind::Fired) => schedule(&mut due, a),
                        Ok(v1::AlertEventKind::Resolved)
                            if firing_keys(&core, &a.host_id, &a.path).is_empty()
                                && limiter.settle(&a.host_id, &a.path) =>
                        {
                            raise(&core, &a.host_id, &a.path, false, String::new()).await;
                        }
                        _ => {}
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    // Missed events: take what fires now from the alert book instead.
                    tracing::warn!(missed = n, "remediation fell behind the alert events; rescanning firing alerts");
                    let firing = core.book.firing();
                    for a in firing.iter().filter(|a| remediable(&core, a)) {
                        schedule(&mut due, a);
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// One remediation turn for (host, path); returns the entry again if it must wait.
async fn attempt(
    core: &Arc<ChangesCore>,
    s: &RemediationSettings,
    limiter: &mut Limiter,
    host: &str,
    path: &str,
    mut d: Due,
) -> Option<Due> {
    // Only keys still firing: the file may have been fixed meanwhile.
    let firing = firing_keys(core, host, path);
    d.keys.retain(|k| firing.contains(k));
    if d.keys.is_empty() {
        return None;
    }
    let now = driftwatch_proto::now_millis();
    match limiter.decide(s, host, path, now) {
        Decision::Attempt => {
            let keys: Vec<String> = d.keys.iter().cloned().collect();
            let rules: Vec<String> = d.rules.iter().cloned().collect();
            let req = v1::CorrectRequest {
                host_id: host.to_string(),
                path: path.to_string(),
                action: Some(v1::correct_request::Action::RestoreBaseline(v1::RestoreBaseline { keys })),
                reason: format!(
                    "remediation (attempt {} of {}): rule {} fired",
                    limiter.attempts(host, path),
                    s.max_attempts,
                    rules.join(", ")
                ),
                ..Default::default()
            };
            // Off the event loop: a correction waits for the agent.
            let core = core.clone();
            let (host, path) = (host.to_string(), path.to_string());
            tokio::spawn(async move {
                match core.correct(req, SERVER_ACTOR).await {
                    Ok(r) => {
                        let outcome = r.result.as_ref().map_or(0, |r| r.outcome);
                        tracing::info!(host = %host, path = %path, change = %r.change_id, outcome = driftwatch_proto::change_outcome_name(outcome), "remediation attempted");
                    }
                    Err(e) => tracing::warn!(host = %host, path = %path, error = %e, "remediation could not be sent"),
                }
            });
            None
        }
        Decision::WaitUntil(t) => {
            d.at = Instant::now() + Duration::from_millis((t - now).max(0) as u64);
            Some(d)
        }
        Decision::GiveUp => {
            let summary = format!(
                "driftwatch restored {path} on {host} {} times within {} s and it drifted again each time: \
                 another writer is fighting the baseline; remediation stopped for this file",
                s.max_attempts,
                s.window.as_secs()
            );
            tracing::warn!(host, path, attempts = s.max_attempts, "remediation gave up");
            core.audit
                .record(crate::audit::AuditEntry {
                    actor: SERVER_ACTOR.to_string(),
                    action: "remediation.gave_up".into(),
                    target: format!("{host}:{path}"),
                    host_id: host.to_string(),
                    path: path.to_string(),
                    before_hash: String::new(),
                    after_hash: String::new(),
                    detail: summary.clone(),
                    change_id: String::new(),
                })
                .await;
            raise(core, host, path, true, summary).await;
            None
        }
        Decision::Suppressed => None,
    }
}

async fn raise(core: &ChangesCore, host: &str, path: &str, firing: bool, summary: String) {
    let alert = SystemAlert {
        name: GAVE_UP_RULE.into(),
        host: host.to_string(),
        path: path.to_string(),
        key: String::new(),
        severity: Severity::High,
        summary,
        firing,
    };
    // Through the command path, which waits for room in the engine's queue: a plain
    // `send` drops work when the queue is full, and a re-evaluation would not bring a
    // system alert back. The reply only confirms the hand-over.
    if let Err(e) = core
        .engine
        .command(move |reply| {
            let _ = reply.send(());
            Command::SystemAlert(alert)
        })
        .await
    {
        tracing::warn!(error = %e, "could not raise the remediation alert");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> RemediationSettings {
        RemediationSettings { min_interval: Duration::from_secs(10), max_attempts: 3, window: Duration::from_secs(100) }
    }

    #[test]
    fn attempts_are_spaced_capped_and_give_up_once() {
        let mut l = Limiter::default();
        let s = s();
        assert_eq!(l.decide(&s, "h", "/f", 0), Decision::Attempt);
        assert_eq!(l.decide(&s, "h", "/f", 5_000), Decision::WaitUntil(10_000));
        assert_eq!(l.decide(&s, "h", "/other", 5_000), Decision::Attempt, "files are limited separately");
        assert_eq!(l.decide(&s, "h", "/f", 10_000), Decision::Attempt);
        assert_eq!(l.decide(&s, "h", "/f", 20_000), Decision::Attempt);
        assert_eq!(l.decide(&s, "h", "/f", 30_000), Decision::GiveUp);
        assert_eq!(l.decide(&s, "h", "/f", 40_000), Decision::Suppressed);
        assert_eq!(l.decide(&s, "h", "/f", 1_000_000), Decision::Suppressed, "until the file is fine again");
        assert!(l.settle("h", "/f"));
        assert!(!l.settle("h", "/f"));
        assert_eq!(l.decide(&s, "h", "/f", 1_000_000), Decision::Attempt);
        // Resolving without a give-up keeps the count: the fight goes on.
        assert_eq!(l.decide(&s, "h", "/f", 1_010_000), Decision::Attempt);
        assert!(!l.settle("h", "/f"));
        assert_eq!(l.attempts("h", "/f"), 2);
    }

    #[test]
    fn old_attempts_leave_the_window() {
        let mut l = Limiter::default();
        let s = s();
        for t in [0, 10_000, 20_000] {
            assert_eq!(l.decide(&s, "h", "/f", t), Decision::Attempt);
        }
        // At 100 s the first attempt (t=0) is out of the 100 s window.
        assert_eq!(l.decide(&s, "h", "/f", 100_000), Decision::Attempt);
        assert_eq!(l.attempts("h", "/f"), 3);
    }

    proptest::proptest! {
        /// Whatever the timing, never more than max_attempts within any window, and
        /// never two attempts closer than min_interval.
        #[test]
        fn never_more_than_the_cap(gaps in proptest::collection::vec(0i64..30_000, 1..60)) {
            let mut l = Limiter::default();
            let s = s();
            let mut t = 0i64;
            let mut done: Vec<i64> = Vec::new();
            for g in gaps {
                t += g;
                if l.decide(&s, "h", "/f", t) == Decision::Attempt {
                    if let Some(&last) = done.last() {
                        proptest::prop_assert!(t - last >= 10_000);
                    }
                    done.push(t);
                    let in_window = done.iter().filter(|&&x| x > t - 100_000).count();
                    proptest::prop_assert!(in_window <= 3);
                }
            }
        }
    }
}
