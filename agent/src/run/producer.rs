//! The producer task: every start (and every time the spool asks for one) begins
//! with a full listing; then each change batch from the watcher and each resource
//! sample becomes a snapshot. Every snapshot is appended to the spool before the
//! stream task may send it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use driftwatch_proto::v1::{FileState, ResourceSample, Snapshot};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, now};
use crate::error::{AgentError, Result};
use crate::parts;
use crate::resources::ResourceSampler;
use crate::watch::{ChangeBatch, FileWatcher};

type Sampler = Option<Arc<Mutex<ResourceSampler>>>;

pub(super) async fn produce(
    shared: Arc<Shared>,
    watcher: Arc<FileWatcher>,
    mut changes: mpsc::Receiver<ChangeBatch>,
    sampler: Option<ResourceSampler>,
    token: CancellationToken,
) -> Result<()> {
    let sampler = sampler.map(|s| Arc::new(Mutex::new(s)));
    let interval = shared.config.resource_interval;
    let mut ticker = tokio::time::interval(if interval.is_zero() { Duration::from_secs(3600) } else { interval });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the full snapshot carries a sample

    // Every start begins with a full snapshot, so the server's view is whole.
    let mut full_pending = true;
    // Batches computed before the latest full scan are older than it: dropped.
    let mut scan_generation = 0;
    loop {
        if full_pending {
            let (generation, spooled) = spool_full_listing(&shared, &watcher, &sampler).await?;
            scan_generation = generation;
            full_pending = !spooled;
            if full_pending {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = shared.want_full.notified() => full_pending = true,
            batch = changes.recv() => {
                let Some(ChangeBatch { generation, files }) = batch else {
                    tracing::error!("file watcher stopped");
                    return Err(AgentError::Watch("file watcher stopped".into()));
                };
                if files.is_empty() || generation < scan_generation { continue; }
                full_pending = !spool_changes(&shared, files).await;
            }
            _ = ticker.tick(), if sampler.is_some() => {
                if let Some(r) = sample(&sampler).await {
                    let snap = Snapshot { taken_at: now(), resources: Some(r), ..Default::default() };
                    if let Err(e) = spool_append(&shared, snap).await {
                        tracing::warn!(error = %e, "cannot spool a resource sample; skipped");
                    }
                }
            }
        }
    }
}

/// Scan every watched file and spool the listing, in parts of bounded size; the last
/// part tells the server that anything not listed since the first part is gone.
/// Returns the scan's generation and whether every part was spooled.
async fn spool_full_listing(
    shared: &Arc<Shared>,
    watcher: &Arc<FileWatcher>,
    sampler: &Sampler,
) -> Result<(u64, bool)> {
    let w = watcher.clone();
    let (generation, files) = tokio::task::spawn_blocking(move || w.full_scan())
        .await
        .map_err(|e| AgentError::Watch(format!("scan task failed: {e}")))?;
    let mut resources = sample(sampler).await;
    let n = files.len();
    let parts = parts::split(files, parts::PART_BYTES);
    let last = parts.len() - 1;
    let mut first_seq = 0;
    for (i, files) in parts.into_iter().enumerate() {
        let snap = Snapshot {
            full: true,
            full_first_seq: first_seq,
            full_last: i == last,
            taken_at: now(),
            files,
            resources: resources.take(),
            ..Default::default()
        };
        match spool_append(shared, snap).await {
            Ok(seq) => {
                if i == 0 {
                    first_seq = seq;
                }
                if i == last {
                    tracing::info!(first_seq, last_seq = seq, files = n, "full snapshot spooled");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool the full snapshot; retrying");
                return Ok((generation, false));
            }
        }
    }
    Ok((generation, true))
}

/// Spool a batch of changed files (in parts). False when the spool failed: the next
/// full snapshot will carry these changes.
async fn spool_changes(shared: &Arc<Shared>, files: Vec<FileState>) -> bool {
    for files in parts::split(files, parts::PART_BYTES) {
        let n = files.len();
        let snap = Snapshot { taken_at: now(), files, ..Default::default() };
        match spool_append(shared, snap).await {
            Ok(seq) => tracing::debug!(seq, files = n, "change spooled"),
            Err(e) => {
                // Disk trouble: the next full snapshot will carry these changes.
                tracing::error!(error = %e, "cannot spool a change; a full snapshot follows");
                return false;
            }
        }
    }
    true
}

/// One resource sample on the blocking pool (it reads /proc).
async fn sample(sampler: &Sampler) -> Option<ResourceSample> {
    let s = sampler.clone()?;
    tokio::task::spawn_blocking(move || s.lock().sample()).await.ok()
}

/// Append a snapshot to the spool (fsync) off the async workers; wake the sender.
async fn spool_append(shared: &Arc<Shared>, mut snapshot: Snapshot) -> Result<u64> {
    let s = shared.clone();
    let seq = tokio::task::spawn_blocking(move || {
        let mut spool = s.spool.lock();
        let seq = spool.append(&mut snapshot)?;
        s.status.last_seq.store(seq, Ordering::Relaxed);
        s.status.pending.store(spool.pending(), Ordering::Relaxed);
        s.status.dropped.store(spool.dropped(), Ordering::Relaxed);
        if spool.take_need_full() {
            s.want_full.notify_one();
        }
        Ok::<_, AgentError>(seq)
    })
    .await
    .map_err(|e| AgentError::Watch(format!("spool task failed: {e}")))??;
    shared.spooled.notify_one();
    Ok(seq)
}
