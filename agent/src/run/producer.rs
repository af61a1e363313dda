//! The producer task: every start (and every time the spool or the server asks for
//! one) brings a full listing; then each change batch from the watcher and each
//! resource sample becomes a snapshot, placed in the spool (or, when the spool cannot
//! take it, in memory: [`append`](super::append)) before the stream task may send it.
//!
//! A full listing is made only while connected: during an outage it could not be sent,
//! and on a spool smaller than the listing it would only push out older snapshots, and
//! its own first parts, over and over. One is owed instead, and made (freshly) once
//! the server has welcomed the agent; its parts wait for room in the spool, so a
//! listing is never cut by the spool's own bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use driftwatch_proto::v1::{FileState, ResourceSample, Snapshot};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::append::{Kind, Put, put};
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
    let mut link = shared.link.subscribe();

    // Every start owes a full listing, so the server's view is whole.
    let mut full_pending = true;
    // Batches computed before the latest full scan are older than it: dropped.
    let mut scan_generation = 0;
    loop {
        // Checked here, not only in the select below: an abandoned listing loops back
        // without reaching it, and the link can still read "connected" while stopping.
        if token.is_cancelled() {
            return Ok(());
        }
        if full_pending && *link.borrow_and_update() {
            let (generation, whole) = spool_full_listing(&shared, &watcher, &sampler, &token).await?;
            scan_generation = generation;
            full_pending = !whole;
            continue;
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = shared.want_full.notified() => {
                if !full_pending {
                    tracing::info!(connected = *link.borrow(), "a full listing is due");
                }
                full_pending = true;
            }
            r = link.changed() => if r.is_err() { return Ok(()) },
            batch = changes.recv() => {
                let Some(ChangeBatch { generation, files }) = batch else {
                    tracing::error!("file watcher stopped");
                    return Err(AgentError::Watch("file watcher stopped".into()));
                };
                if files.is_empty() || generation < scan_generation { continue; }
                spool_changes(&shared, files, &token).await;
            }
            _ = ticker.tick(), if sampler.is_some() => {
                if let Some(r) = sample(&sampler).await {
                    let snap = Snapshot { taken_at: now(), resources: Some(r), ..Default::default() };
                    put(&shared, snap, Kind::Other, &token).await;
                }
            }
        }
    }
}

/// Scan every watched file and place the listing, in parts of bounded size; the last
/// part tells the server that anything not listed since the first part is gone.
/// Returns the scan's generation and whether every part was placed (false: the
/// connection dropped in between, and the listing is owed again).
async fn spool_full_listing(
    shared: &Arc<Shared>,
    watcher: &Arc<FileWatcher>,
    sampler: &Sampler,
    token: &CancellationToken,
) -> Result<(u64, bool)> {
    let w = watcher.clone();
    let (generation, files) = tokio::task::spawn_blocking(move || w.full_scan())
        .await
        .map_err(|e| AgentError::Watch(format!("scan task failed: {e}")))?;
    shared.status.full_listings.fetch_add(1, Ordering::Relaxed);
    let mut resources = sample(sampler).await;
    let n = files.len();
    let parts = parts::split(files, parts::part_bytes(shared.config.spool_max_bytes));
    let last = parts.len() - 1;
    // The drops this listing heals (the server resolves its drop alert with it).
    let dropped = shared.spool.lock().dropped();
    let mut first_seq = 0;
    for (i, files) in parts.into_iter().enumerate() {
        let snap = Snapshot {
            full: true,
            full_first_seq: first_seq,
            full_last: i == last,
            taken_at: now(),
            files,
            resources: resources.take(),
            dropped_snapshots: dropped,
            ..Default::default()
        };
        let Some(seq) = put(shared, snap, Kind::Listing, token).await.seq() else {
            tracing::info!(
                part = i,
                parts = last + 1,
                "connection lost in the middle of a full listing; listing again on the next one"
            );
            return Ok((generation, false));
        };
        if i == 0 {
            first_seq = seq;
        }
        if i == last {
            tracing::info!(first_seq, last_seq = seq, files = n, parts = last + 1, "full snapshot placed");
        }
    }
    Ok((generation, true))
}

/// Place a batch of changed files (in parts).
async fn spool_changes(shared: &Arc<Shared>, files: Vec<FileState>, token: &CancellationToken) {
    for files in parts::split(files, parts::part_bytes(shared.config.spool_max_bytes)) {
        let n = files.len();
        let snap = Snapshot { taken_at: now(), files, ..Default::default() };
        match put(shared, snap, Kind::Other, token).await {
            Put::Spooled(seq) => tracing::debug!(seq, files = n, "change spooled"),
            Put::Unspooled(seq) => tracing::debug!(seq, files = n, "change held in memory"),
            Put::Abandoned => {}
        }
    }
}

/// One resource sample on the blocking pool (it reads /proc).
async fn sample(sampler: &Sampler) -> Option<ResourceSample> {
    let s = sampler.clone()?;
    tokio::task::spawn_blocking(move || s.lock().sample()).await.ok()
}
