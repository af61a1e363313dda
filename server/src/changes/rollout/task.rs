//! One rollout's task: walk the waves (apply, wait for the new files, bake, check
//! the gate), stop (roll every changed host back, or pause), or succeed (and
//! promote the new values into baselines). Every step is saved before it is
//! published, with its audit events in the same transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1::{self, OnFailure, RolloutHostState as HS, RolloutState as RS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::host::{apply_host, rollback_host};
use super::{Control, GATE_POLL, PARALLEL_HOSTS, host_timeout, now_ts, set_host};
use crate::changes::{ChangesCore, SERVER_ACTOR, plan};

/// Why the wave's gate failed, if it did.
#[derive(Debug)]
enum Stop {
    /// A rollback a restart interrupted: finish it, ending in this state.
    Finish {
        state: RS,
        reason: String,
    },
    Gate(String),
    Abort {
        by: String,
        reason: String,
    },
    Shutdown,
}

pub(super) struct RolloutTask {
    pub(super) core: Arc<ChangesCore>,
    pub(super) r: watch::Sender<v1::Rollout>,
    pub(super) control: mpsc::Receiver<Control>,
    /// Audit events written with the next save, in its transaction: a wave of a
    /// thousand hosts is one commit, not a thousand.
    pub(super) audit: Vec<crate::audit::AuditEntry>,
}

impl RolloutTask {
    fn snapshot(&self) -> v1::Rollout {
        self.r.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut v1::Rollout)) {
        self.r.send_modify(|r| {
            f(r);
            r.updated_at = Some(now_ts());
        });
    }

    /// Record an audit event; it is written with the next save.
    #[allow(clippy::too_many_arguments)]
    fn note(&mut self, actor: &str, action: &str, host: &str, before: &str, after: &str, detail: &str) {
        let r = self.r.borrow();
        self.audit.push(ChangesCore::audit_entry(&r, actor, action, host, before, after, detail));
    }

    async fn save(&mut self) {
        let r = self.snapshot();
        let audit = std::mem::take(&mut self.audit);
        if let Err(e) = self.core.persist_with(&r, audit).await {
            // The in-memory rollout goes on; a restart resumes from the last saved step.
            tracing::warn!(rollout = %r.id, error = %e, "rollout state not persisted");
        }
    }

    /// Change, persist (with pending audit events), and only then publish: whoever sees
    /// the new state (a final one, say) finds it and its audit events in the store.
    async fn commit(&mut self, f: impl FnOnce(&mut v1::Rollout)) {
        let mut r = self.snapshot();
        f(&mut r);
        r.updated_at = Some(now_ts());
        let audit = std::mem::take(&mut self.audit);
        if let Err(e) = self.core.persist_with(&r, audit).await {
            tracing::warn!(rollout = %r.id, error = %e, "rollout state not persisted");
        }
        self.r.send_replace(r);
    }

    pub(super) async fn run(&mut self) {
        let start = self.snapshot();
        if let Ok(state @ (RS::RolledBack | RS::Aborted)) = RS::try_from(start.rolling_back_to) {
            return self.stop(Stop::Finish { state, reason: start.stop_reason }).await;
        }
        if start.state == RS::Paused as i32
            && let Some(stop) = self.wait_while_paused().await
        {
            return self.stop(stop).await;
        }
        self.update(|r| r.state = RS::Running as i32);
        self.save().await;
        let waves = self.snapshot().waves.len();
        for w in 0..waves {
            if self.snapshot().waves[w].done {
                continue;
            }
            if let Err(stop) = self.run_wave(w).await {
                match stop {
                    Stop::Gate(reason) if self.snapshot().on_failure == OnFailure::Pause as i32 => {
                        self.note(SERVER_ACTOR, "rollout.paused", "", "", "", &reason);
                        self.commit(|r| {
                            r.state = RS::Paused as i32;
                            r.stop_reason = reason.clone();
                            r.waves[w].done = true;
                        })
                        .await;
                        if let Some(stop) = self.wait_while_paused().await {
                            return self.stop(stop).await;
                        }
                        self.update(|r| r.state = RS::Running as i32);
                        self.save().await;
                    }
                    stop => return self.stop(stop).await,
                }
            }
        }
        self.succeed().await;
    }

    /// Paused: wait for Resume (None) or Abort/shutdown (Some).
    async fn wait_while_paused(&mut self) -> Option<Stop> {
        tokio::select! {
            _ = self.core.shutdown.cancelled() => Some(Stop::Shutdown),
            c = self.control.recv() => match c {
                None => Some(Stop::Shutdown),
                Some(Control::Abort { by, reason }) => Some(Stop::Abort { by, reason }),
                Some(Control::Resume { by, reason }) => {
                    let detail = if reason.trim().is_empty() { String::new() } else { format!("reason: {}", reason.trim()) };
                    self.note(&by, "rollout.resumed", "", "", "", &detail);
                    None
                }
            },
        }
    }

    /// Check for an abort or shutdown without waiting.
    fn interrupted(&mut self) -> Option<Stop> {
        if self.core.shutdown.is_cancelled() {
            return Some(Stop::Shutdown);
        }
        match self.control.try_recv() {
            Ok(Control::Abort { by, reason }) => Some(Stop::Abort { by, reason }),
            _ => None,
        }
    }

    /// Wait until `deadline`, unless an abort or shutdown comes first.
    async fn sleep_until(&mut self, deadline: Instant) -> Option<Stop> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = self.core.shutdown.cancelled() => return Some(Stop::Shutdown),
                c = self.control.recv() => match c {
                    None => return Some(Stop::Shutdown),
                    Some(Control::Abort { by, reason }) => return Some(Stop::Abort { by, reason }),
                    Some(Control::Resume { .. }) => {}
                },
            }
        }
    }

    async fn run_wave(&mut self, w: usize) -> Result<(), Stop> {
        let r = self.snapshot();
        let wave_start_ms = match &r.waves[w].started_at {
            Some(t) => driftwatch_proto::timestamp_millis(t),
            None => {
                let now = driftwatch_proto::now_millis();
                let detail = format!("wave {} of {}: {} host(s)", w + 1, r.waves.len(), r.waves[w].hosts.len());
                self.note(SERVER_ACTOR, "rollout.wave_started", "", "", "", &detail);
                self.commit(|r| r.waves[w].started_at = Some(driftwatch_proto::timestamp_from_millis(now))).await;
                now
            }
        };
        tracing::info!(rollout = %r.id, wave = w + 1, hosts = r.waves[w].hosts.len(), "wave started");

        // Apply to every host of the wave that has not been dealt with yet.
        let todo: Vec<v1::RolloutHost> = r.waves[w]
            .hosts
            .iter()
            .filter(|h| matches!(HS::try_from(h.state), Ok(HS::Waiting | HS::Applying)))
            .cloned()
            .collect();
        let timeout = host_timeout(&r);
        let mut tasks = tokio::task::JoinSet::new();
        let mut queue = todo.into_iter();
        // Stripped once per wave: a per-host copy of the whole rollout would be
        // quadratic in its size.
        let lite = r.clone_for_host();
        loop {
            while tasks.len() < PARALLEL_HOSTS {
                let Some(h) = queue.next() else { break };
                let core = self.core.clone();
                let r = lite.clone();
                tasks.spawn(async move { apply_host(core, r, h, timeout).await });
            }
            if let Some(stop) = self.interrupted() {
                tasks.abort_all();
                return Err(stop);
            }
            let Some(done) = tasks.join_next().await else { break };
            let Ok((h, event)) = done else { continue };
            let host = h.host_id.clone();
            self.update(|r| set_host(r, &host, |x| *x = h.clone()));
            if let Some((action, detail)) = event {
                self.note(SERVER_ACTOR, action, &host, &h.before_hash, &h.after_hash, &detail);
            }
        }
        self.save().await;

        let r = self.snapshot();
        let failed = failed_hosts(&r.waves[w]);
        if !failed.is_empty() {
            return Err(self
                .gate_failed(
                    &r,
                    format!("the change failed on {} host(s): {}", failed.len(), failed.join("; ")),
                    Vec::new(),
                )
                .await);
        }

        // The gate judges the new files: wait until the server holds them and the
        // rules have seen them, then bake.
        let applied: Vec<(String, String, String)> = r.waves[w]
            .hosts
            .iter()
            .filter(|h| h.state == HS::Applied as i32)
            .map(|h| (h.host_id.clone(), h.path.clone(), h.after_hash.clone()))
            .collect();
        let ingest_deadline = Instant::now() + timeout;
        for (host, path, after) in &applied {
            while !self.core.holds_hash(host, path, after) {
                if Instant::now() >= ingest_deadline {
                    let reason = format!(
                        "host {host} applied the change but its new file did not arrive within {} s",
                        timeout.as_secs()
                    );
                    return Err(self.gate_failed(&r, reason, Vec::new()).await);
                }
                if let Some(stop) = self.sleep_until(Instant::now() + Duration::from_millis(20)).await {
                    return Err(stop);
                }
            }
        }
        let _ = self.core.engine.flush().await;
        let bake_until_ms = match &r.waves[w].bake_until {
            Some(t) => driftwatch_proto::timestamp_millis(t),
            None => {
                let bake = r.bake.as_ref().and_then(|d| driftwatch_proto::duration::from_proto("bake", d).ok());
                let bake_ms = bake.unwrap_or_default().as_millis() as i64;
                let t = driftwatch_proto::now_millis() + bake_ms;
                self.update(|r| r.waves[w].bake_until = Some(driftwatch_proto::timestamp_from_millis(t)));
                if bake_ms > 0 {
                    self.save().await;
                }
                t
            }
        };
        // Bake: the gate is checked all along (a breach stops the wave at once) and
        // once more at the end, after the engine has caught up.
        let hosts: HashSet<&str> = r.waves[w].hosts.iter().map(|h| h.host_id.as_str()).collect();
        let gate = v1::Severity::try_from(r.gate_severity).unwrap_or(v1::Severity::Medium);
        let check =
            |core: &ChangesCore| core.book.scan(|alerts| plan::gate_findings(alerts, &hosts, wave_start_ms, gate));
        loop {
            let findings = check(&self.core);
            if !findings.is_empty() {
                let reason = format!("gate failed in wave {}: {}", w + 1, plan::describe_findings(&findings));
                return Err(self.gate_failed(&r, reason, findings).await);
            }
            let left = bake_until_ms - driftwatch_proto::now_millis();
            if left <= 0 {
                break;
            }
            let step = Duration::from_millis((left as u64).min(GATE_POLL.as_millis() as u64));
            if let Some(stop) = self.sleep_until(Instant::now() + step).await {
                return Err(stop);
            }
        }
        let _ = self.core.engine.flush().await;
        let findings = check(&self.core);
        if !findings.is_empty() {
            let reason = format!("gate failed in wave {}: {}", w + 1, plan::describe_findings(&findings));
            return Err(self.gate_failed(&r, reason, findings).await);
        }
        self.update(|r| r.waves[w].done = true);
        self.save().await;
        Ok(())
    }

    async fn gate_failed(&mut self, r: &v1::Rollout, reason: String, findings: Vec<v1::GateFinding>) -> Stop {
        tracing::warn!(rollout = %r.id, %reason, "rollout gate failed");
        self.note(SERVER_ACTOR, "rollout.gate_failed", "", "", "", &reason);
        self.commit(|r| {
            r.stop_reason = reason.clone();
            r.findings.extend(findings);
        })
        .await;
        Stop::Gate(reason)
    }

    /// Roll back every host the change reached, then settle the final state.
    async fn stop(&mut self, stop: Stop) {
        let Some(settlement) = Settlement::of(stop) else {
            // Shutdown is not a failure: the next start resumes from the saved state.
            self.save().await;
            return;
        };
        // Saved before the first host is touched: a restart finishes the rollback.
        self.commit(|r| {
            r.stop_reason = settlement.reason.clone();
            r.rolling_back_to = settlement.all_back as i32;
        })
        .await;
        let r = self.snapshot();
        let timeout = host_timeout(&r);
        let mut tasks = tokio::task::JoinSet::new();
        let lite = r.clone_for_host();
        for h in r.waves.iter().flat_map(|w| &w.hosts) {
            if matches!(HS::try_from(h.state), Ok(HS::Applied | HS::Applying | HS::Failed)) {
                let core = self.core.clone();
                let rr = lite.clone();
                let h = h.clone();
                tasks.spawn(async move { rollback_host(core, rr, h, timeout).await });
            }
        }
        let mut all_back = true;
        loop {
            let done = tokio::select! {
                biased;
                _ = self.core.shutdown.cancelled() => {
                    // What is rolled back is saved; the next start rolls back the rest
                    // (a host already back is recognised by its hash).
                    tasks.abort_all();
                    self.save().await;
                    return;
                }
                done = tasks.join_next() => done,
            };
            let Some(done) = done else { break };
            let Ok((h, event)) = done else { continue };
            if h.state == HS::RollbackFailed as i32 {
                all_back = false;
            }
            let host = h.host_id.clone();
            self.update(|r| set_host(r, &host, |x| *x = h.clone()));
            if let Some((action, detail)) = event {
                self.note(SERVER_ACTOR, action, &host, &h.after_hash, &h.before_hash, &detail);
            }
        }
        let (state, action) = settlement.end(all_back);
        let mut reason = self.snapshot().stop_reason;
        if !all_back {
            reason.push_str("; some hosts could not be rolled back (see their messages)");
        }
        self.note(&settlement.actor, action, "", "", "", &reason);
        self.commit(|r| {
            r.state = state as i32;
            r.stop_reason = reason.clone();
            r.rolling_back_to = RS::Unspecified as i32;
        })
        .await;
        tracing::info!(rollout = %self.r.borrow().id, state = driftwatch_proto::rollout_state_name(state as i32), %reason, "rollout stopped");
    }

    async fn succeed(&mut self) {
        let r = self.snapshot();
        let mut note = String::new();
        let mut promoted = String::new();
        if r.promote_baseline {
            match self.core.promote(&r).await {
                Ok(names) if names.is_empty() => note = "no touched host has a baseline for this file".into(),
                Ok(names) => promoted = names.join(", "),
                Err(e) => note = format!("baseline promotion failed: {e}"),
            }
        }
        let hosts = r.waves.iter().flat_map(|w| &w.hosts);
        let applied = hosts.clone().filter(|h| h.state == HS::Applied as i32).count();
        let skipped = hosts.filter(|h| h.state == HS::Skipped as i32).count();
        let detail = format!(
            "{applied} host(s) applied, {skipped} skipped; promoted: {}{}",
            if promoted.is_empty() { "none" } else { &promoted },
            if note.is_empty() { String::new() } else { format!("; {note}") }
        );
        self.note(SERVER_ACTOR, "rollout.succeeded", "", "", "", &detail);
        self.commit(|r| {
            r.state = RS::Succeeded as i32;
            r.stop_reason = note.clone();
            r.promoted_baseline = promoted.clone();
        })
        .await;
        tracing::info!(rollout = %r.id, applied, skipped, "rollout succeeded");
    }
}

/// How a stopped rollout ends.
#[derive(Debug, PartialEq)]
struct Settlement {
    /// The state when every changed host is back, and when some could not be.
    all_back: RS,
    some_left: RS,
    /// Who ends it, with which audit action, and why.
    actor: String,
    action: &'static str,
    reason: String,
}

impl Settlement {
    /// None for a shutdown: the rollout is saved where it is and resumes at the next start.
    fn of(stop: Stop) -> Option<Self> {
        let by_server = |all_back, some_left, action, reason| Settlement {
            all_back,
            some_left,
            actor: SERVER_ACTOR.to_string(),
            action,
            reason,
        };
        Some(match stop {
            Stop::Shutdown => return None,
            Stop::Gate(reason) => by_server(RS::RolledBack, RS::Failed, "rollout.rolled_back", reason),
            Stop::Finish { state: RS::Aborted, reason } => {
                by_server(RS::Aborted, RS::Aborted, "rollout.aborted", reason)
            }
            Stop::Finish { state, reason } => by_server(state, RS::Failed, "rollout.rolled_back", reason),
            Stop::Abort { by, reason } => {
                let reason = if reason.trim().is_empty() {
                    format!("aborted by {by}")
                } else {
                    format!("aborted by {by}: {reason}")
                };
                Settlement {
                    all_back: RS::Aborted,
                    some_left: RS::Aborted,
                    actor: by,
                    action: "rollout.aborted",
                    reason,
                }
            }
        })
    }

    /// The final state and its audit action, once the rollback is over.
    fn end(&self, all_back: bool) -> (RS, &'static str) {
        let state = if all_back { self.all_back } else { self.some_left };
        (state, if state == RS::Failed { "rollout.failed" } else { self.action })
    }
}

/// The hosts of a wave whose change failed, as `host: message`.
fn failed_hosts(wave: &v1::Wave) -> Vec<String> {
    wave.hosts
        .iter()
        .filter(|h| h.state == HS::Failed as i32)
        .map(|h| format!("{}: {}", h.host_id, h.message))
        .collect()
}

trait CloneForHost {
    /// The rollout without its host lists (what a per-host task needs).
    fn clone_for_host(&self) -> v1::Rollout;
}

impl CloneForHost for v1::Rollout {
    fn clone_for_host(&self) -> v1::Rollout {
        v1::Rollout { waves: Vec::new(), findings: Vec::new(), forced_past: Vec::new(), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_gate_rolls_back_or_fails() {
        let s = Settlement::of(Stop::Gate("gate failed in wave 2".into())).unwrap();
        assert_eq!(
            (s.actor.as_str(), s.action, s.reason.as_str()),
            ("driftwatch", "rollout.rolled_back", "gate failed in wave 2")
        );
        assert_eq!(s.end(true), (RS::RolledBack, "rollout.rolled_back"));
        assert_eq!(s.end(false), (RS::Failed, "rollout.failed"), "a host that could not be put back fails the rollout");
    }

    #[test]
    fn an_abort_names_who_and_why_and_stays_aborted() {
        let s = Settlement::of(Stop::Abort { by: "alice".into(), reason: "wrong ticket".into() }).unwrap();
        assert_eq!((s.actor.as_str(), s.reason.as_str()), ("alice", "aborted by alice: wrong ticket"));
        assert_eq!(s.end(true), (RS::Aborted, "rollout.aborted"));
        assert_eq!(s.end(false), (RS::Aborted, "rollout.aborted"));
        let s = Settlement::of(Stop::Abort { by: "bob".into(), reason: "  ".into() }).unwrap();
        assert_eq!(s.reason, "aborted by bob");
    }

    #[test]
    fn a_rollback_interrupted_by_a_restart_ends_as_it_would_have() {
        let s = Settlement::of(Stop::Finish { state: RS::RolledBack, reason: "gate".into() }).unwrap();
        assert_eq!(s.end(true), (RS::RolledBack, "rollout.rolled_back"));
        assert_eq!(s.end(false).0, RS::Failed);
        let s = Settlement::of(Stop::Finish { state: RS::Aborted, reason: "aborted by carol".into() }).unwrap();
        assert_eq!(s.end(false), (RS::Aborted, "rollout.aborted"));
        assert!(Settlement::of(Stop::Shutdown).is_none(), "a shutdown saves and resumes, it does not end the rollout");
    }

    #[test]
    fn failed_hosts_of_a_wave() {
        let host = |id: &str, state: HS, message: &str| v1::RolloutHost {
            host_id: id.into(),
            state: state as i32,
            message: message.into(),
            ..Default::default()
        };
        let wave = v1::Wave {
            hosts: vec![
                host("a", HS::Applied, ""),
                host("b", HS::Failed, "refused: not writable"),
                host("c", HS::Skipped, ""),
            ],
            ..Default::default()
        };
        assert_eq!(failed_hosts(&wave), ["b: refused: not writable"]);
    }

    #[test]
    fn a_host_task_gets_the_rollout_without_its_host_lists() {
        let r = v1::Rollout {
            id: "r-1".into(),
            waves: vec![v1::Wave::default(); 3],
            findings: vec![v1::GateFinding::default()],
            forced_past: vec![v1::GateFinding::default()],
            ..Default::default()
        };
        let lite = r.clone_for_host();
        assert_eq!(lite.id, "r-1");
        assert!(lite.waves.is_empty() && lite.findings.is_empty() && lite.forced_past.is_empty());
    }
}
