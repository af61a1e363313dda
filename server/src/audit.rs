//! The audit log: who changed what, when. Corrections, rollout steps, baseline
//! edits, rule reloads, acknowledgements and silences each append one event; a change
//! sent to an agent has two, its intent (durable before it is sent) and its outcome.
//! The store chains every event to the one before it by hash
//! (`driftwatch_proto::audit_chain`), which `driftwatch audit verify` checks.
//!
//! Events go through the group-commit writer like every other write; the store
//! assigns their ids (strictly increasing, never reused). Recording never drops an
//! event to spare a caller: when the writer queue is full the caller waits for room.
//! A caller whose change is itself a store write should put [`AuditLog::op`] in the
//! same write item, so the change and its audit event commit together.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use driftwatch_proto::v1::{self, audit_server::Audit};
use driftwatch_store::{AuditFilter, AuditRecord, Op, Store};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::writer::{Maintenance, WriteItem, WriteSender};

/// The actor of what the server does on its own (rule reloads, rollout steps, remediation).
pub const SERVER_ACTOR: &str = "driftwatch";

/// One audit event as a caller describes it; the log stamps the time, the store the id.
/// Empty fields are fine (`host_id`, `path`, hashes, `change_id` when they do not apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: the caller's [`crate::principal::Principal`], or [`SERVER_ACTOR`].
    pub actor: String,
    /// Dotted, as listed in audit.proto: `rollout.started`, `baseline.pinned`, ...
    pub action: String,
    /// What it happened to: "host:path", a rollout id, a baseline name, an alert or silence id.
    pub target: String,
    pub host_id: String,
    pub path: String,
    pub before_hash: String,
    pub after_hash: String,
    /// Human-readable: outcome, reason, keys, diff summary.
    pub detail: String,
    /// The rollout or change this event belongs to.
    pub change_id: String,
}

/// Appends audit events through the store writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    writer: WriteSender,
}

impl AuditLog {
    pub fn new(writer: WriteSender) -> Self {
        Self { writer }
    }

    /// The store operation for `entry`, stamped now: for callers that write it in the
    /// same item (one transaction) as the change it records.
    pub fn op(entry: AuditEntry) -> Op {
        let AuditEntry { actor, action, target, host_id, path, before_hash, after_hash, detail, change_id } = entry;
        Op::Audit(AuditRecord {
            id: 0,
            at_ms: driftwatch_proto::now_millis(),
            actor,
            action,
            target,
            host_id,
            path,
            before_hash,
            after_hash,
            detail,
            change_id,
            // Chained by the store when it appends the record.
            prev_hash: String::new(),
            hash: String::new(),
        })
    }

    /// Record `entry` and return once it is durable (a `ListEvents` after this sees it).
    /// Waits for room when the writer queue is full. Only a stopped writer (shutdown)
    /// loses the event, and then it is logged in full at error level.
    pub async fn record(&self, entry: AuditEntry) {
        let _ = self.record_durable(entry).await;
    }

    /// [`AuditLog::record`] for an intent that must be durable before what it announces
    /// happens (a change sent to an agent): an error when it could not be written, and
    /// then the caller does not go on.
    pub async fn record_durable(&self, entry: AuditEntry) -> Result<(), ServerError> {
        let (done, durable) = tokio::sync::oneshot::channel();
        let item = WriteItem { ops: vec![Self::op(entry.clone())], done: Some(done), ..Default::default() };
        if self.writer.send(item).await.is_err() || durable.await.is_err() {
            lost(&entry);
            return Err(ServerError::Unavailable("the audit log cannot be written (server shutting down)".into()));
        }
        tracing::debug!(action = %entry.action, target = %entry.target, "audit event recorded");
        Ok(())
    }

    /// [`AuditLog::record`] for threads that are not async workers (the engine thread,
    /// `spawn_blocking`): blocks while the writer queue is full, returns once queued
    /// (not yet durable). Panics when called on an async worker, as `blocking_send` does.
    pub fn record_blocking(&self, entry: AuditEntry) {
        let item = WriteItem { ops: vec![Self::op(entry.clone())], ..Default::default() };
        if self.writer.blocking_send(item).is_err() {
            lost(&entry);
        }
    }

    /// One retention pass: delete the oldest events, those older than `max_age`, on the
    /// writer thread; the store leaves an `audit.pruned` event as the chain's new anchor.
    /// Returns once the pass has run (or the writer has stopped).
    pub async fn prune(&self, max_age: Duration) {
        let now = driftwatch_proto::now_millis();
        let before = now - max_age.as_millis().min(i64::MAX as u128) as i64;
        let (done, ran) = tokio::sync::oneshot::channel();
        let maintenance = Maintenance::new(move |store: &mut Store| {
            match store.prune_audit(before, SERVER_ACTOR, now) {
                Ok(0) => {}
                Ok(n) => tracing::info!(audit_events_pruned = n, "retention"),
                Err(e) => tracing::error!(error = %e, "audit retention failed; retried next pass"),
            }
            let _ = done.send(());
        });
        if self.writer.send(WriteItem { maintenance: Some(maintenance), ..Default::default() }).await.is_ok() {
            let _ = ran.await;
        }
    }

    /// Prune events older than `max_age` every `interval` (first pass after a minute at
    /// most, out of the start-up rush) until `shutdown`.
    pub fn spawn_retention(
        &self,
        max_age: Duration,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = Duration::from_secs(60).min(interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(next) => {}
                }
                this.prune(max_age).await;
                next = interval;
            }
        })
    }
}

fn lost(e: &AuditEntry) {
    tracing::error!(
        actor = %e.actor,
        action = %e.action,
        target = %e.target,
        host = %e.host_id,
        path = %e.path,
        change = %e.change_id,
        detail = %e.detail,
        "store writer stopped; audit event may not be recorded"
    );
}

/// `Audit` service: the log, filtered and paged, read on the blocking pool.
pub struct AuditService {
    pub reader: Arc<Mutex<Store>>,
}

fn to_proto(r: AuditRecord) -> v1::AuditEvent {
    v1::AuditEvent {
        id: r.id,
        at: Some(driftwatch_proto::timestamp_from_millis(r.at_ms)),
        actor: r.actor,
        action: r.action,
        target: r.target,
        host_id: r.host_id,
        path: r.path,
        before_hash: r.before_hash,
        after_hash: r.after_hash,
        detail: r.detail,
        change_id: r.change_id,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_audit_events(
        &self,
        request: Request<v1::ListAuditEventsRequest>,
    ) -> Result<Response<v1::ListAuditEventsResponse>, Status> {
        let r = request.into_inner();
        // The store applies the default page (0) and caps the limit: 5000 is 1000, not an error.
        let filter = AuditFilter {
            after_id: r.after_id,
            action_prefix: r.action_prefix.trim().to_string(),
            host_id: r.host_id.trim().to_string(),
            change_id: r.change_id.trim().to_string(),
            newest_first: r.newest_first,
            limit: r.limit as usize,
        };
        let reader = self.reader.clone();
        let records = tokio::task::spawn_blocking(move || reader.lock().list_audit(&filter))
            .await
            .map_err(|e| ServerError::Unavailable(format!("audit read task: {e}")))?
            .map_err(ServerError::from)?;
        Ok(Response::new(v1::ListAuditEventsResponse { events: records.into_iter().map(to_proto).collect() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry { actor: "alice".into(), action: action.into(), target: "t".into(), ..Default::default() }
    }

    async fn setup(dir: &std::path::Path) -> (AuditLog, Arc<Mutex<Store>>, std::thread::JoinHandle<()>) {
        let path = dir.join("d.db");
        let store = Store::open(&path).unwrap();
        let reader = Arc::new(Mutex::new(Store::open(&path).unwrap()));
        let (tx, thread) =
            crate::writer::spawn(store, crate::state::FleetState::new(), crate::metrics::Metrics::new(), 8);
        (AuditLog::new(tx), reader, thread)
    }

    fn list(reader: &Arc<Mutex<Store>>) -> Vec<AuditRecord> {
        reader.lock().list_audit(&AuditFilter::default()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn record_is_durable_on_return_and_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, reader, thread) = setup(dir.path()).await;
        let before = driftwatch_proto::now_millis();
        log.record(entry("baseline.pinned")).await;
        let l2 = log.clone();
        tokio::task::spawn_blocking(move || l2.record_blocking(entry("rules.reloaded"))).await.unwrap();
        log.record(entry("alert.acknowledged")).await;
        let got = list(&reader);
        assert_eq!(
            got.iter().map(|r| (r.id, r.action.as_str())).collect::<Vec<_>>(),
            vec![(1, "baseline.pinned"), (2, "rules.reloaded"), (3, "alert.acknowledged")]
        );
        assert!(got.iter().all(|r| r.at_ms >= before && r.actor == "alice"));
        drop(log);
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_removes_only_old_events() {
        let dir = tempfile::tempdir().unwrap();
        let (log, reader, thread) = setup(dir.path()).await;
        let old = Op::Audit(AuditRecord { at_ms: 1_000, action: "old".into(), ..Default::default() });
        let (done, durable) = tokio::sync::oneshot::channel();
        log.writer.send(WriteItem { ops: vec![old], done: Some(done), ..Default::default() }).await.unwrap();
        durable.await.unwrap();
        log.record(entry("new")).await;
        log.prune(Duration::from_secs(3600)).await;
        let left = list(&reader);
        assert_eq!(left.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), vec!["new", "audit.pruned"]);
        assert_eq!(left[1].actor, SERVER_ACTOR);
        drop(log);
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_writer_is_logged_not_a_panic() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let log = AuditLog::new(crate::writer::WriteSender::for_tests(tx));
        log.record(entry("x")).await;
        log.prune(Duration::from_secs(1)).await;
    }
}
