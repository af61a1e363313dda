//! Rollouts: one task per rollout walks its waves. Per wave: send the change to each
//! host (waiting up to the host timeout for offline ones, then skipping them), wait
//! until the server has ingested and evaluated every applied host's new file, bake,
//! and check the gate (every apply succeeded, no new alert at or above the gate
//! severity on the wave's hosts since the wave started). A failed gate rolls every
//! applied host back to its previous bytes (restore by content hash from the agent's
//! backup store) or pauses, as asked.
//!
//! The rollout lives in a `watch` channel (WatchRollout readers) and is persisted
//! after every step, so a restarted server resumes it from the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftwatch_proto::v1::{self, OnFailure, RolloutHostState as HS, RolloutState as RS};
use driftwatch_store::{Op, RolloutRecord};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{ChangesCore, SERVER_ACTOR, plan, short};
use crate::error::ServerError;
use crate::selector::Selector;
use crate::writer::WriteItem;

/// Hosts a wave talks to at once.
const PARALLEL_HOSTS: usize = 256;
/// An offline host is waited for this long by default.
const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the gate is looked at during a bake.
const GATE_POLL: Duration = Duration::from_millis(250);
/// The longest a single change may take on the agent (commands included).
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) enum Control {
    Abort { by: String, reason: String },
    Resume { by: String, reason: String },
}

struct Live {
    rollout: watch::Sender<v1::Rollout>,
    control: mpsc::Sender<Control>,
}

/// Rollouts with a running (or paused) task.
#[derive(Default)]
pub(crate) struct Registry {
    live: Mutex<HashMap<String, Live>>,
}

impl Registry {
    pub(crate) fn get(&self, id: &str) -> Option<v1::Rollout> {
        self.live.lock().expect("registry lock").get(id).map(|l| l.rollout.borrow().clone())
    }

    pub(crate) fn subscribe(&self, id: &str) -> Option<watch::Receiver<v1::Rollout>> {
        self.live.lock().expect("registry lock").get(id).map(|l| l.rollout.subscribe())
    }

    fn control(&self, id: &str) -> Option<mpsc::Sender<Control>> {
        self.live.lock().expect("registry lock").get(id).map(|l| l.control.clone())
    }

    fn all(&self) -> Vec<v1::Rollout> {
        self.live.lock().expect("registry lock").values().map(|l| l.rollout.borrow().clone()).collect()
    }
}

fn now_ts() -> prost_types::Timestamp {
    driftwatch_proto::timestamp_from_millis(driftwatch_proto::now_millis())
}

/// How long a rollout waits for an offline host (at least a second).
fn host_timeout(r: &v1::Rollout) -> Duration {
    r.host_timeout
        .as_ref()
        .and_then(|d| driftwatch_proto::duration::from_proto("host_timeout", d).ok())
        .unwrap_or(DEFAULT_HOST_TIMEOUT)
        .max(Duration::from_secs(1))
}

/// The file a rollout changes on one host.
fn host_path(r: &v1::Rollout, host: &str) -> String {
    r.waves.iter().flat_map(|w| &w.hosts).find(|h| h.host_id == host).map_or_else(|| r.path.clone(), |h| h.path.clone())
}

fn set_host(r: &mut v1::Rollout, host: &str, f: impl FnOnce(&mut v1::RolloutHost)) {
    if let Some(h) = r.waves.iter_mut().flat_map(|w| w.hosts.iter_mut()).find(|h| h.host_id == host) {
        f(h);
        h.updated_at = Some(now_ts());
    }
}

impl ChangesCore {
    /// Plan, pre-flight and (unless a dry run) start a rollout.
    pub async fn start_rollout(
        self: &Arc<Self>,
        req: v1::StartRolloutRequest,
        actor: &str,
    ) -> Result<v1::StartRolloutResponse, ServerError> {
        let invalid = ServerError::InvalidArgument;
        let selector_text = req.selector.trim().to_string();
        if selector_text.is_empty() {
            return Err(invalid(
                "selector is required (a label selector such as service=web2img,env=production)".into(),
            ));
        }
        let selector = Selector::parse(&selector_text).map_err(|e| invalid(format!("selector: {e}")))?;
        let path = req.path.trim().to_string();
        if !path.starts_with('/') {
            return Err(invalid("path must be the absolute path of the file on the hosts".into()));
        }
        let keys_change = !req.set_keys.is_empty() || !req.remove_keys.is_empty();
        let restore = req.restore_hash.trim().to_string();
        if keys_change != restore.is_empty() {
            return Err(invalid("give the change as set_keys/remove_keys, or as restore_hash (one of the two)".into()));
        }
        let set: BTreeMap<String, String> = req.set_keys.clone().into_iter().collect();
        plan::check_no_secrets(&set).map_err(invalid)?;
        let gate = match v1::Severity::try_from(req.gate_severity) {
            Ok(v1::Severity::Unspecified) | Err(_) => v1::Severity::Medium,
            Ok(s) => s,
        };
        let on_failure = match OnFailure::try_from(req.on_failure) {
            Ok(OnFailure::Pause) => OnFailure::Pause,
            _ => OnFailure::RollBack,
        };
        let host_timeout =
            driftwatch_proto::duration::from_proto_or("host_timeout", req.host_timeout.as_ref(), DEFAULT_HOST_TIMEOUT)
                .map_err(invalid)?
                .max(Duration::from_secs(1));
        let bake =
            driftwatch_proto::duration::from_proto_or("bake", req.bake.as_ref(), Duration::ZERO).map_err(invalid)?;

        // Targets: hosts the selector picks that watch the file (or one match of the
        // glob), in a stable order.
        let glob = if path.contains(['*', '?', '[']) {
            Some(driftwatch_rules::FileGlob::new(&path).map_err(|e| invalid(format!("path: {e}")))?)
        } else {
            None
        };
        let mut targets: Vec<(String, v1::FileState)> = Vec::new();
        for h in self.state.hosts.iter().filter(|h| selector.matches(&h.labels)) {
            let matches: Vec<&String> = match &glob {
                None => h.files.keys().filter(|p| **p == path).collect(),
                Some(g) => h.files.keys().filter(|p| g.is_match(p)).collect(),
            };
            match matches.as_slice() {
                [] => {}
                [one] => targets.push((h.key().clone(), h.files[*one].state())),
                many => {
                    return Err(ServerError::FailedPrecondition(format!(
                        "host '{}' watches {} files matching '{path}'; a rollout changes one file per host",
                        h.key(),
                        many.len()
                    )));
                }
            }
        }
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        if targets.is_empty() {
            return Err(ServerError::FailedPrecondition(format!(
                "no host matches '{selector_text}' and watches '{path}'"
            )));
        }
        let waves = plan::wave_counts(&req.waves, targets.len()).map_err(invalid)?;
        let busy: Vec<String> = {
            let ids: HashSet<&str> = targets.iter().map(|(h, _)| h.as_str()).collect();
            self.rollouts
                .all()
                .into_iter()
                .filter(|r| !driftwatch_proto::rollout_is_terminal(r.state))
                .filter(|r| {
                    r.waves.iter().flat_map(|w| &w.hosts).any(|h| {
                        ids.contains(h.host_id.as_str())
                            && targets.iter().any(|(id, f)| *id == h.host_id && f.path == h.path)
                    })
                })
                .map(|r| r.id)
                .collect()
        };
        if !busy.is_empty() {
            return Err(ServerError::FailedPrecondition(format!(
                "rollout {} is still changing '{path}' on some of these hosts; abort it or wait",
                busy.join(", ")
            )));
        }

        // Pre-flight: the new values against the rules, host by host.
        let mut preflight = Vec::new();
        if keys_change && let Some(rules) = self.rules.current() {
            for (host, current) in &targets {
                let Some(info) = self.host_info(host) else { continue };
                let candidate = plan::candidate_keys(&current.keys, &set, &req.remove_keys);
                let base = self.baseline_keys(host, &current.path).await.map(|(_, k)| k);
                preflight.extend(super::preflight_host(&rules, &info, current, &candidate, base.as_deref()));
            }
        }
        if !preflight.is_empty() && !req.force && !req.dry_run {
            return Err(ServerError::FailedPrecondition(format!(
                "pre-flight refused the rollout: the change would fire {} rule outcome(s): {} (force to start anyway)",
                preflight.len(),
                plan::describe_findings(&preflight)
            )));
        }

        let now = now_ts();
        let mut rollout = v1::Rollout {
            id: self.dispatcher.new_id("r"),
            state: RS::Pending as i32,
            selector: selector_text,
            path: path.clone(),
            set_keys: req.set_keys.clone(),
            remove_keys: req.remove_keys.clone(),
            restore_hash: restore,
            bake: Some(driftwatch_proto::duration::to_proto(bake)),
            gate_severity: gate as i32,
            on_failure: on_failure as i32,
            promote_baseline: req.promote_baseline,
            actor: actor.to_string(),
            reason: req.reason.clone(),
            created_at: Some(now),
            updated_at: Some(now),
            host_timeout: Some(driftwatch_proto::duration::to_proto(host_timeout)),
            forced_past: if req.force { preflight.clone() } else { Vec::new() },
            ..Default::default()
        };
        let mut from = 0;
        for (i, (size, upto)) in waves.iter().enumerate() {
            let hosts = targets[from..*upto]
                .iter()
                .map(|(h, f)| v1::RolloutHost {
                    host_id: h.clone(),
                    path: f.path.clone(),
                    state: HS::Waiting as i32,
                    before_hash: f.content_hash.clone(),
                    ..Default::default()
                })
                .collect();
            rollout.waves.push(v1::Wave { index: i as u32, size: size.clone(), hosts, ..Default::default() });
            from = *upto;
        }

        if req.dry_run {
            self.dry_run(&mut rollout).await;
            return Ok(v1::StartRolloutResponse { rollout: Some(rollout), preflight });
        }

        self.persist(&rollout).await?;
        let detail = format!(
            "{} host(s) in {} wave(s), selector {}, change {}{}",
            targets.len(),
            rollout.waves.len(),
            rollout.selector,
            describe_change(&rollout),
            if rollout.forced_past.is_empty() {
                String::new()
            } else {
                format!("; forced past pre-flight: {}", plan::describe_findings(&rollout.forced_past))
            }
        );
        self.audit.record(Self::audit_entry(&rollout, &rollout.actor, "rollout.started", "", "", "", &detail)).await;
        tracing::info!(rollout = %rollout.id, path = %path, hosts = targets.len(), waves = rollout.waves.len(), "rollout started");
        self.spawn_rollout(rollout.clone());
        Ok(v1::StartRolloutResponse { rollout: Some(rollout), preflight })
    }

    /// Every target host's diff, as its agent would write it; nothing written.
    async fn dry_run(&self, rollout: &mut v1::Rollout) {
        let mut tasks = tokio::task::JoinSet::new();
        for h in rollout.waves.iter().flat_map(|w| &w.hosts) {
            let change = self.change_for(rollout, h, &h.before_hash, true, "dry");
            let d = self.dispatcher.clone();
            let host = h.host_id.clone();
            tasks.spawn(async move {
                let r = d.apply(&host, change, Duration::from_secs(30)).await;
                (host, r)
            });
        }
        while let Some(Ok((host, r))) = tasks.join_next().await {
            set_host(rollout, &host, |h| match r {
                Ok(r) => {
                    h.after_hash = r.after_hash;
                    h.diff = r.diff;
                    h.message = format!("{}: {}", driftwatch_proto::change_outcome_name(r.outcome), r.message);
                }
                Err(e) => h.message = format!("no diff: {e}"),
            });
        }
    }

    fn change_for(
        &self,
        r: &v1::Rollout,
        h: &v1::RolloutHost,
        expected: &str,
        dry_run: bool,
        tag: &str,
    ) -> v1::ApplyChange {
        v1::ApplyChange {
            change_id: format!("{}/{tag}/{}", r.id, h.host_id),
            path: h.path.clone(),
            expected_hash: expected.to_string(),
            dry_run,
            set_text: r.set_keys.clone(),
            remove_keys: r.remove_keys.clone(),
            restore_hash: r.restore_hash.clone(),
            reason: format!("rollout {} by {}", r.id, r.actor),
            ..Default::default()
        }
    }

    /// Persist the rollout and wait until it is durable.
    pub(crate) async fn persist(&self, r: &v1::Rollout) -> Result<(), ServerError> {
        self.persist_with(r, Vec::new()).await
    }

    /// Persist the rollout together with its audit events (one transaction) and wait
    /// until both are durable.
    async fn persist_with(&self, r: &v1::Rollout, audit: Vec<crate::audit::AuditEntry>) -> Result<(), ServerError> {
        let record = RolloutRecord {
            id: r.id.clone(),
            state: r.state,
            created_ms: r.created_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or_default(),
            updated_ms: driftwatch_proto::now_millis(),
            body: r.encode_to_vec(),
        };
        let (done, durable) = tokio::sync::oneshot::channel();
        let mut ops = vec![Op::PutRollout(record)];
        ops.extend(audit.into_iter().map(crate::audit::AuditLog::op));
        let item = WriteItem { ops, done: Some(done), ..Default::default() };
        let gone = || ServerError::Unavailable("server is shutting down".into());
        self.writer.send(item).await.map_err(|_| gone())?;
        durable.await.map_err(|_| gone())
    }

    /// One audit event of a rollout (`host` empty: the rollout as a whole).
    #[allow(clippy::too_many_arguments)]
    fn audit_entry(
        r: &v1::Rollout,
        actor: &str,
        action: &str,
        host: &str,
        before: &str,
        after: &str,
        detail: &str,
    ) -> crate::audit::AuditEntry {
        crate::audit::AuditEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            target: if host.is_empty() { r.id.clone() } else { format!("{host}:{}", host_path(r, host)) },
            host_id: host.to_string(),
            path: if host.is_empty() { r.path.clone() } else { host_path(r, host) },
            before_hash: before.to_string(),
            after_hash: after.to_string(),
            detail: detail.to_string(),
            change_id: r.id.clone(),
        }
    }

    pub(crate) fn spawn_rollout(self: &Arc<Self>, rollout: v1::Rollout) {
        let (tx, _) = watch::channel(rollout.clone());
        let (control_tx, control_rx) = mpsc::channel(8);
        self.rollouts
            .live
            .lock()
            .expect("registry lock")
            .insert(rollout.id.clone(), Live { rollout: tx.clone(), control: control_tx });
        let core = self.clone();
        tokio::spawn(async move {
            let id = rollout.id.clone();
            let mut task = RolloutTask { core: core.clone(), r: tx, control: control_rx, audit: Vec::new() };
            task.run().await;
            core.rollouts.live.lock().expect("registry lock").remove(&id);
        });
    }

    /// Continue every rollout the store says was under way (after a restart).
    pub async fn resume_rollouts(self: &Arc<Self>, stored: Vec<v1::Rollout>) {
        for r in stored {
            if driftwatch_proto::rollout_is_terminal(r.state) {
                continue;
            }
            tracing::info!(rollout = %r.id, state = r.state, "resuming rollout after restart");
            self.spawn_rollout(r);
        }
    }

    pub async fn get_rollout(&self, id: &str) -> Result<v1::Rollout, ServerError> {
        if let Some(r) = self.rollouts.get(id) {
            return Ok(r);
        }
        self.load_rollout(id).await?.ok_or_else(|| ServerError::NotFound(format!("no rollout '{id}'")))
    }

    pub async fn abort_rollout(&self, req: v1::AbortRolloutRequest, actor: &str) -> Result<v1::Rollout, ServerError> {
        let Some(control) = self.rollouts.control(&req.id) else {
            let r = self.get_rollout(&req.id).await?;
            return Err(ServerError::FailedPrecondition(format!(
                "rollout '{}' has already ended ({})",
                r.id,
                driftwatch_proto::rollout_state_name(r.state)
            )));
        };
        let by = actor.to_string();
        let mut rx = self.rollouts.subscribe(&req.id).ok_or_else(|| ServerError::NotFound(req.id.clone()))?;
        control
            .send(Control::Abort { by, reason: req.reason })
            .await
            .map_err(|_| ServerError::FailedPrecondition("the rollout has just ended".into()))?;
        // Answer once the rollback is done: the caller sees the final state.
        loop {
            if driftwatch_proto::rollout_is_terminal(rx.borrow_and_update().state) {
                return Ok(rx.borrow().clone());
            }
            if rx.changed().await.is_err() {
                return self.get_rollout(&req.id).await;
            }
        }
    }

    pub async fn resume_rollout(&self, req: v1::ResumeRolloutRequest, actor: &str) -> Result<v1::Rollout, ServerError> {
        let r = self.get_rollout(&req.id).await?;
        if r.state != RS::Paused as i32 {
            return Err(ServerError::FailedPrecondition(format!(
                "rollout '{}' is {}, not paused",
                r.id,
                driftwatch_proto::rollout_state_name(r.state)
            )));
        }
        let control = self.rollouts.control(&req.id).ok_or_else(|| ServerError::NotFound(req.id.clone()))?;
        let by = actor.to_string();
        control
            .send(Control::Resume { by, reason: req.reason })
            .await
            .map_err(|_| ServerError::FailedPrecondition("rollout ended".into()))?;
        self.get_rollout(&req.id).await
    }
}

fn describe_change(r: &v1::Rollout) -> String {
    if !r.restore_hash.is_empty() {
        return format!("restore {}", short(&r.restore_hash));
    }
    let mut parts: Vec<String> = r.set_keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(r.remove_keys.iter().map(|k| format!("-{k}")));
    parts.join(" ")
}

/// Why the wave's gate failed, if it did.
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

struct RolloutTask {
    core: Arc<ChangesCore>,
    r: watch::Sender<v1::Rollout>,
    control: mpsc::Receiver<Control>,
    /// Audit events written with the next save, in its transaction: a wave of a
    /// thousand hosts is one commit, not a thousand.
    audit: Vec<crate::audit::AuditEntry>,
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

    async fn run(&mut self) {
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
        let failed: Vec<String> = r.waves[w]
            .hosts
            .iter()
            .filter(|h| h.state == HS::Failed as i32)
            .map(|h| format!("{}: {}", h.host_id, h.message))
            .collect();
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
        let check = |core: &ChangesCore| {
            let book = core.engine.book.read().expect("alert book lock");
            plan::gate_findings(book.alerts.values().map(|t| &t.alert), &hosts, wave_start_ms, gate)
        };
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
        let (final_ok, final_bad, actor, action, reason) = match stop {
            Stop::Shutdown => {
                // Not a failure: the next start resumes from the saved state.
                self.save().await;
                return;
            }
            Stop::Gate(reason) => (RS::RolledBack, RS::Failed, SERVER_ACTOR.to_string(), "rollout.rolled_back", reason),
            Stop::Finish { state: RS::Aborted, reason } => {
                (RS::Aborted, RS::Aborted, SERVER_ACTOR.to_string(), "rollout.aborted", reason)
            }
            Stop::Finish { state, reason } => {
                (state, RS::Failed, SERVER_ACTOR.to_string(), "rollout.rolled_back", reason)
            }
            Stop::Abort { by, reason } => {
                let reason = if reason.trim().is_empty() {
                    format!("aborted by {by}")
                } else {
                    format!("aborted by {by}: {reason}")
                };
                (RS::Aborted, RS::Aborted, by, "rollout.aborted", reason)
            }
        };
        // Saved before the first host is touched: a restart finishes the rollback.
        self.commit(|r| {
            r.stop_reason = reason.clone();
            r.rolling_back_to = final_ok as i32;
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
        let state = if all_back { final_ok } else { final_bad };
        let mut reason = self.snapshot().stop_reason;
        if !all_back {
            reason.push_str("; some hosts could not be rolled back (see their messages)");
        }
        let action = if state == RS::Failed { "rollout.failed" } else { action };
        self.note(&actor, action, "", "", "", &reason);
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

trait CloneForHost {
    /// The rollout without its host lists (what a per-host task needs).
    fn clone_for_host(&self) -> v1::Rollout;
}

impl CloneForHost for v1::Rollout {
    fn clone_for_host(&self) -> v1::Rollout {
        v1::Rollout { waves: Vec::new(), findings: Vec::new(), forced_past: Vec::new(), ..self.clone() }
    }
}

type HostEvent = Option<(&'static str, String)>;

/// A host's new state with its audit event (action, and the host's message as detail).
fn event(h: v1::RolloutHost, action: &'static str) -> (v1::RolloutHost, HostEvent) {
    let detail = h.message.clone();
    (h, Some((action, detail)))
}

/// Send the change to one host and record what came of it.
async fn apply_host(
    core: Arc<ChangesCore>,
    r: v1::Rollout,
    mut h: v1::RolloutHost,
    timeout: Duration,
) -> (v1::RolloutHost, HostEvent) {
    let deadline = Instant::now() + timeout;
    let current = match core.state.file_state(&h.host_id, &h.path) {
        Ok(f) => f.content_hash,
        Err(e) => {
            h.state = HS::Failed as i32;
            h.message = e.to_string();
            return event(h, "rollout.host_failed");
        }
    };
    if h.state == HS::Applying as i32 && current != h.before_hash {
        // Sent before a restart and the new file has arrived since: it went through.
        h.state = HS::Applied as i32;
        h.after_hash = current;
        h.message = "applied (result confirmed from the host's file after a restart)".into();
        return event(h, "rollout.host_applied");
    }
    if !core.dispatcher.wait_connected(&h.host_id, deadline).await {
        h.state = HS::Skipped as i32;
        h.message = format!("offline for {} s: skipped", timeout.as_secs());
        return event(h, "rollout.host_skipped");
    }
    // The content the plan saw: what a rollback restores.
    let planned = std::mem::replace(&mut h.before_hash, current.clone());
    h.state = HS::Applying as i32;
    let change = core.change_for(&r, &h, &current, false, "apply");
    match core.dispatcher.apply(&h.host_id, change, APPLY_TIMEOUT).await {
        Ok(res) => {
            h.diff = res.diff;
            h.message = res.message;
            match v1::ChangeOutcome::try_from(res.outcome) {
                Ok(v1::ChangeOutcome::Applied) => {
                    h.state = HS::Applied as i32;
                    h.after_hash = res.after_hash;
                    (h, Some(("rollout.host_applied", "applied".into())))
                }
                Ok(v1::ChangeOutcome::Unchanged) if !planned.is_empty() && planned != current => {
                    // The file changed since the plan to exactly this content: this rollout
                    // wrote it before a restart cut its record short. It is ours to undo.
                    h.state = HS::Applied as i32;
                    h.before_hash = planned;
                    h.after_hash = current;
                    h.message = "applied (before a server restart)".into();
                    event(h, "rollout.host_applied")
                }
                Ok(v1::ChangeOutcome::Unchanged) => {
                    h.state = HS::Skipped as i32;
                    h.after_hash = h.before_hash.clone();
                    h.message = "already had the change: nothing written".into();
                    event(h, "rollout.host_skipped")
                }
                _ => {
                    h.state = HS::Failed as i32;
                    h.after_hash = res.after_hash;
                    h.message = format!("{}: {}", driftwatch_proto::change_outcome_name(res.outcome), h.message);
                    event(h, "rollout.host_failed")
                }
            }
        }
        Err(e) => {
            // Unknown whether it was written: rollback compares hashes before acting.
            h.state = HS::Failed as i32;
            h.message = e.to_string();
            event(h, "rollout.host_failed")
        }
    }
}

/// Put one host's file back to its bytes from before the rollout.
async fn rollback_host(
    core: Arc<ChangesCore>,
    r: v1::Rollout,
    mut h: v1::RolloutHost,
    timeout: Duration,
) -> (v1::RolloutHost, HostEvent) {
    let current = core.state.file_state(&h.host_id, &h.path).map(|f| f.content_hash).unwrap_or_default();
    let was_applied = h.state == HS::Applied as i32;
    if !was_applied && (current.is_empty() || current == h.before_hash) {
        // Never written (refused, conflict, failed before writing): nothing to undo.
        return (h, None);
    }
    if current == h.before_hash {
        h.state = HS::RolledBack as i32;
        h.message = "already back to its previous content".into();
        return event(h, "rollout.host_rolled_back");
    }
    let deadline = Instant::now() + timeout;
    if !core.dispatcher.wait_connected(&h.host_id, deadline).await {
        h.state = HS::RollbackFailed as i32;
        h.message = format!("offline for {} s: not rolled back", timeout.as_secs());
        return event(h, "rollout.host_rollback_failed");
    }
    let expected = if was_applied && !h.after_hash.is_empty() { h.after_hash.clone() } else { current };
    let change = v1::ApplyChange {
        change_id: format!("{}/rollback/{}", r.id, h.host_id),
        path: h.path.clone(),
        expected_hash: expected,
        restore_hash: h.before_hash.clone(),
        reason: format!("rollback of rollout {}", r.id),
        ..Default::default()
    };
    match core.dispatcher.apply(&h.host_id, change, APPLY_TIMEOUT).await {
        Ok(res)
            if matches!(
                v1::ChangeOutcome::try_from(res.outcome),
                Ok(v1::ChangeOutcome::Applied | v1::ChangeOutcome::Unchanged)
            ) =>
        {
            h.state = HS::RolledBack as i32;
            h.message = format!("rolled back to {}", short(&h.before_hash));
            event(h, "rollout.host_rolled_back")
        }
        Ok(res)
            if res.outcome == v1::ChangeOutcome::Conflict as i32
                && !res.before_hash.is_empty()
                && res.before_hash == h.before_hash =>
        {
            // Already back (a rollback interrupted by a restart finished on the host).
            h.state = HS::RolledBack as i32;
            h.message = "already back to its previous content".into();
            event(h, "rollout.host_rolled_back")
        }
        Ok(res) => {
            h.state = HS::RollbackFailed as i32;
            h.message = format!("rollback {}: {}", driftwatch_proto::change_outcome_name(res.outcome), res.message);
            event(h, "rollout.host_rollback_failed")
        }
        Err(e) => {
            h.state = HS::RollbackFailed as i32;
            h.message = format!("rollback: {e}");
            event(h, "rollout.host_rollback_failed")
        }
    }
}

impl ChangesCore {
    /// Whether the server holds this content hash for the host's file.
    fn holds_hash(&self, host: &str, path: &str, hash: &str) -> bool {
        self.state
            .hosts
            .get(host)
            .and_then(|h| h.files.get(path).map(|f| f.state().content_hash == hash))
            .unwrap_or(false)
    }

    /// Write the rollout's new values into the baselines of the hosts it changed.
    async fn promote(&self, r: &v1::Rollout) -> Result<Vec<String>, ServerError> {
        use driftwatch_proto::v1::baselines_server::Baselines;
        if r.set_keys.is_empty() && r.remove_keys.is_empty() {
            return Err(ServerError::FailedPrecondition("a content restore has no keys to promote".into()));
        }
        // One promotion per baseline, from the first applied host it covers.
        // Per (baseline, file): one promotion, from the first applied host it covers.
        let mut by_baseline: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        for h in r.waves.iter().flat_map(|w| &w.hosts).filter(|h| h.state == HS::Applied as i32) {
            if let Some((name, keys)) = self.baseline_keys(&h.host_id, &h.path).await {
                by_baseline
                    .entry((name, h.path.clone()))
                    .or_insert_with(|| (h.host_id.clone(), keys.into_iter().map(|k| k.key).collect()));
            }
        }
        let mut names = Vec::new();
        for ((name, path), (host, base_keys)) in by_baseline {
            let req = v1::SetBaselineKeysRequest {
                name: name.clone(),
                path,
                promote_keys: r.set_keys.keys().cloned().collect(),
                promote_from_host_id: host,
                remove: r.remove_keys.iter().filter(|k| base_keys.contains(k)).cloned().collect(),
                reason: format!("promoted by rollout {}", r.id),
                ..Default::default()
            };
            // The promotion is the rollout's starter's act.
            let mut request = tonic::Request::new(req);
            request.extensions_mut().insert(crate::principal::Principal::named(r.actor.clone()));
            self.baselines_service
                .set_baseline_keys(request)
                .await
                .map_err(|s| ServerError::FailedPrecondition(s.message().to_string()))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }
}
