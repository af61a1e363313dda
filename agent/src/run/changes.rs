//! Changes the server asks for, on the agent's side of the stream: queued to the
//! applier thread in arrival order, applied one at a time off the async workers
//! (`crate::apply`), and their results held until a stream has sent them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use driftwatch_proto::v1::{self, AgentMessage, agent_message};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;
use super::{AgentStatus, Shared};
use crate::apply::Applier;
use crate::error::{AgentError, Result};

/// Change results waiting for a stream; past this the oldest is dropped.
const MAX_QUEUED_RESULTS: usize = 1024;
/// On shutdown, how long to wait for a change being applied (commands included).
const APPLY_DRAIN: Duration = Duration::from_secs(60);

/// Change results not sent yet. The applier thread pushes; only the stream task pops,
/// after the result went out, so a result produced while disconnected (or while a
/// stream breaks) goes out on the next connection.
#[derive(Debug, Default)]
pub(super) struct ResultQueue {
    queue: Mutex<VecDeque<v1::ChangeResult>>,
    pub(super) ready: Notify,
}

impl ResultQueue {
    fn push(&self, r: v1::ChangeResult) {
        let mut q = self.queue.lock();
        if q.len() >= MAX_QUEUED_RESULTS
            && let Some(old) = q.pop_front()
        {
            tracing::warn!(change_id = %old.change_id, "too many unsent change results; dropped the oldest");
        }
        q.push_back(r);
        drop(q);
        self.ready.notify_one();
    }

    fn front(&self) -> Option<v1::ChangeResult> {
        self.queue.lock().front().cloned()
    }

    fn pop_sent(&self, change_id: &str) {
        let mut q = self.queue.lock();
        if q.front().is_some_and(|r| r.change_id == change_id) {
            q.pop_front();
        }
    }
}

/// The applier's thread: changes one at a time, in arrival order, off the async workers.
/// A reloaded config waiting for the applier thread (see [`spawn_applier`]).
pub(super) type Reconfigure = parking_lot::Mutex<Option<crate::config::AgentConfig>>;

pub(super) fn spawn_applier(
    mut applier: Applier,
    changes: std::sync::mpsc::Receiver<v1::ApplyChange>,
    results: Arc<ResultQueue>,
    (status, metrics): (Arc<AgentStatus>, Arc<AgentMetrics>),
    token: CancellationToken,
    reconfigure: Arc<Reconfigure>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("driftwatch-apply".into())
        .spawn(move || {
            while let Ok(change) = changes.recv() {
                if token.is_cancelled() {
                    tracing::warn!(
                        change_id = %change.change_id,
                        path = %change.path,
                        "agent stopping: change not applied"
                    );
                    continue;
                }
                // A reload's allowlist takes effect between two changes.
                if let Some(config) = reconfigure.lock().take()
                    && let Err(e) = applier.reconfigure(&config)
                {
                    tracing::error!(error = %e, "cannot apply the reloaded writable paths; the previous ones stay");
                }
                let result = applier.apply(&change);
                status.changes_handled.fetch_add(1, Ordering::Relaxed);
                metrics.change_result(result.outcome);
                results.push(result);
            }
        })
        .map_err(|e| AgentError::Apply(format!("cannot start the applier thread: {e}")))
}

/// Hand a change from the server to the applier thread, which decides (allowlist
/// first); once the agent is stopping it is answered as not applied.
pub(super) fn queue_change(shared: &Shared, c: v1::ApplyChange) {
    tracing::info!(
        change_id = %c.change_id,
        path = %c.path,
        dry_run = c.dry_run,
        reason = %c.reason,
        "change received"
    );
    let not_queued = match shared.changes.lock().as_ref() {
        Some(changes) => changes.send(c).err().map(|e| e.0),
        None => Some(c),
    };
    if let Some(c) = not_queued {
        shared.metrics.change_result(v1::ChangeOutcome::Failed as i32);
        shared.results.push(v1::ChangeResult {
            change_id: c.change_id,
            path: c.path,
            outcome: v1::ChangeOutcome::Failed as i32,
            message: "the agent is stopping; nothing written".into(),
            ..Default::default()
        });
    }
}

/// Send every queued change result; each leaves the queue once handed to the stream.
pub(super) async fn send_results(shared: &Shared, tx: &mpsc::Sender<AgentMessage>) -> Result<()> {
    while let Some(r) = shared.results.front() {
        let id = r.change_id.clone();
        tx.send(AgentMessage { kind: Some(agent_message::Kind::ChangeResult(r)) })
            .await
            .map_err(|_| AgentError::Watch("stream closed while sending a change result".into()))?;
        shared.results.pop_sent(&id);
    }
    Ok(())
}

/// At shutdown: let a change being applied finish (a write half done with its
/// commands not run would skip the rollback); changes still queued are not started.
pub(super) async fn drain_applier(shared: &Shared, applier_thread: &std::thread::JoinHandle<()>) {
    drop(shared.changes.lock().take());
    // Polled, not joined on the blocking pool: a runtime being dropped waits for its
    // blocking tasks, and a stuck command must not hold the process past the deadline.
    let drain_until = tokio::time::Instant::now() + APPLY_DRAIN;
    while !applier_thread.is_finished() {
        if tokio::time::Instant::now() >= drain_until {
            tracing::warn!("a change is still being applied; stopping without waiting for it");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
