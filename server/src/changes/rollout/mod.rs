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
//!
//! Code map: `start` plans a rollout and runs its pre-flight, `task` is the
//! wave/bake/gate loop of one rollout (and its rollback), `host` applies the change
//! to one host or puts it back; this file holds the registry of live rollouts,
//! the API calls that reach them, and persistence.

mod host;
mod start;
mod task;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use driftwatch_proto::v1::{self, RolloutState as RS};
use driftwatch_store::{Op, RolloutRecord};
use prost::Message;
use tokio::sync::{mpsc, watch};

use super::{ChangesCore, short};
use crate::error::ServerError;
use crate::writer::WriteItem;
use task::RolloutTask;

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
    /// Starts under way (persisted, not yet registered) per principal: they count
    /// against its limit, so two starts cannot both take its last place.
    starting: Arc<Mutex<HashMap<String, usize>>>,
}

/// A start's place among its principal's rollouts until it is registered (or fails).
pub(crate) struct Starting {
    starting: Arc<Mutex<HashMap<String, usize>>>,
    actor: String,
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut s = self.starting.lock();
        if let Some(n) = s.get_mut(&self.actor) {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.actor);
            }
        }
    }
}

impl Registry {
    pub(crate) fn get(&self, id: &str) -> Option<v1::Rollout> {
        self.live.lock().get(id).map(|l| l.rollout.borrow().clone())
    }

    pub(crate) fn subscribe(&self, id: &str) -> Option<watch::Receiver<v1::Rollout>> {
        self.live.lock().get(id).map(|l| l.rollout.subscribe())
    }

    fn control(&self, id: &str) -> Option<mpsc::Sender<Control>> {
        self.live.lock().get(id).map(|l| l.control.clone())
    }

    /// A place for one more rollout of `actor` if it has fewer than `max` unfinished
    /// (starts under way included); else how many it has.
    pub(crate) fn reserve(&self, actor: &str, max: usize) -> Result<Starting, usize> {
        let mut starting = self.starting.lock();
        let live = {
            let live = self.live.lock();
            let states: Vec<(String, i32)> = live
                .values()
                .map(|l| {
                    let r = l.rollout.borrow();
                    (r.actor.clone(), r.state)
                })
                .collect();
            crate::limits::active_rollouts(states.iter().map(|(a, s)| (a.as_str(), *s)), actor)
        };
        let n = starting.entry(actor.to_string()).or_default();
        if live + *n >= max {
            let total = live + *n;
            if *n == 0 {
                starting.remove(actor);
            }
            return Err(total);
        }
        *n += 1;
        Ok(Starting { starting: self.starting.clone(), actor: actor.to_string() })
    }

    /// The state of every live rollout (`driftwatch_rollouts`), without copying them.
    pub(crate) fn states(&self) -> Vec<i32> {
        self.live.lock().values().map(|l| l.rollout.borrow().state).collect()
    }

    fn all(&self) -> Vec<v1::Rollout> {
        self.live.lock().values().map(|l| l.rollout.borrow().clone()).collect()
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
        self.rollouts.live.lock().insert(rollout.id.clone(), Live { rollout: tx.clone(), control: control_tx });
        let core = self.clone();
        tokio::spawn(async move {
            let id = rollout.id.clone();
            let mut task = RolloutTask { core: core.clone(), r: tx, control: control_rx, audit: Vec::new() };
            task.run().await;
            core.rollouts.live.lock().remove(&id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> v1::Rollout {
        let host =
            |id: &str, path: &str| v1::RolloutHost { host_id: id.into(), path: path.into(), ..Default::default() };
        v1::Rollout {
            path: "/srv/*/app.env".into(),
            waves: vec![
                v1::Wave { hosts: vec![host("a", "/srv/one/app.env")], ..Default::default() },
                v1::Wave { hosts: vec![host("b", "/srv/two/app.env")], ..Default::default() },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn each_host_has_its_own_path() {
        let r = rollout();
        assert_eq!(host_path(&r, "b"), "/srv/two/app.env");
        assert_eq!(host_path(&r, "unknown"), "/srv/*/app.env", "the rollout's own path otherwise");
    }

    #[test]
    fn set_host_changes_one_host_and_stamps_it() {
        let mut r = rollout();
        set_host(&mut r, "b", |h| h.state = v1::RolloutHostState::Applied as i32);
        let b = &r.waves[1].hosts[0];
        assert_eq!(b.state, v1::RolloutHostState::Applied as i32);
        assert!(b.updated_at.is_some());
        assert!(r.waves[0].hosts[0].updated_at.is_none(), "other hosts are untouched");
        set_host(&mut r, "nobody", |_| panic!("no such host"));
    }

    #[test]
    fn host_timeout_defaults_and_floors() {
        let mut r = rollout();
        assert_eq!(host_timeout(&r), DEFAULT_HOST_TIMEOUT);
        r.host_timeout = Some(driftwatch_proto::duration::seconds(5));
        assert_eq!(host_timeout(&r), Duration::from_secs(5));
        r.host_timeout = Some(driftwatch_proto::duration::seconds(0));
        assert_eq!(host_timeout(&r), Duration::from_secs(1), "at least a second");
    }

    #[test]
    fn a_change_is_described_for_logs_and_audit() {
        let mut r = rollout();
        r.set_keys = [("POOL".to_string(), "12".to_string())].into();
        r.remove_keys = vec!["OLD".into()];
        assert_eq!(describe_change(&r), "POOL=12 -OLD");
        r.restore_hash = "0123456789abcdef0123".into();
        assert_eq!(describe_change(&r), "restore 0123456789ab");
    }
}
