//! Group commit: one thread owns the SQLite writer connection. Ingest tasks hand it
//! work items; it drains whatever has queued up (bounded by `max_batch`), writes
//! them in one transaction, and only after the commit publishes the stored seq so
//! the owning connection can Ack. A failed commit is retried with backoff and
//! nothing is acknowledged until it succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_store::{Batch, FileRecord, HostRecord, Op, ResourceRecord, Store};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::state::FleetState;

/// One unit of ingest work.
#[derive(Debug, Default)]
pub struct WriteItem {
    pub host: Option<HostRecord>,
    pub files: Vec<FileRecord>,
    pub removed_files: Vec<(String, String)>,
    pub resources: Option<ResourceRecord>,
    /// The host's agent has a new spool: its files' seqs restart (stored as 0).
    pub reset_file_seqs: bool,
    /// What to acknowledge once this item is durable.
    pub ack: Option<AckTarget>,
    pub received: Option<Instant>,
    /// Further operations (baseline versions, events), applied after the above.
    pub ops: Vec<Op>,
    /// Told once this item is durable (control-plane writes wait on it).
    pub done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Store housekeeping (retention) run on the writer thread after this item's commit.
    pub maintenance: Option<Maintenance>,
    /// Run on the writer thread once this item is durable (publishing events to
    /// subscribers: nobody may see an event that a restart could lose).
    pub on_durable: Option<Maintenance>,
}

/// Work that needs the writer's connection but is not a batch (retention passes), or
/// that must wait for a commit.
pub struct Maintenance(Box<dyn FnOnce(&mut Store) + Send>);

impl Maintenance {
    pub fn new(f: impl FnOnce(&mut Store) + Send + 'static) -> Self {
        Self(Box::new(f))
    }
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maintenance")
    }
}

#[derive(Debug, Clone)]
pub struct AckTarget {
    pub host_id: String,
    /// Seqs are per spool; an ack for a spool the host no longer uses is dropped.
    pub spool_id: String,
    pub seq: u64,
}

pub type WriteSender = mpsc::Sender<WriteItem>;

/// Write `ops` in one transaction and return once it is durable (control-plane writes:
/// a change takes effect only after it would survive a restart).
pub async fn commit_durable(writer: &WriteSender, ops: Vec<Op>) -> Result<(), crate::error::ServerError> {
    let (done, durable) = tokio::sync::oneshot::channel();
    let gone = || crate::error::ServerError::Unavailable("server is shutting down".into());
    writer.send(WriteItem { ops, done: Some(done), ..Default::default() }).await.map_err(|_| gone())?;
    durable.await.map_err(|_| gone())
}

/// Start the writer thread. It exits, after flushing what it holds, when every
/// sender is dropped.
pub fn spawn(
    mut store: Store,
    state: Arc<FleetState>,
    metrics: Arc<Metrics>,
    max_batch: usize,
) -> (WriteSender, std::thread::JoinHandle<()>) {
    // Bounded: when the disk falls behind, ingest tasks wait, which backs up into
    // the agents' streams (and their spools) instead of into server memory.
    let (tx, mut rx) = mpsc::channel::<WriteItem>(max_batch * 4);
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let mut items = Vec::with_capacity(max_batch);
            loop {
                items.clear();
                match rx.blocking_recv() {
                    Some(i) => items.push(i),
                    None => break,
                }
                while items.len() < max_batch {
                    match rx.try_recv() {
                        Ok(i) => items.push(i),
                        Err(_) => break,
                    }
                }
                commit(&mut store, &state, &metrics, &mut items);
            }
            tracing::debug!("store writer drained and stopped");
        })
        .expect("spawn store writer thread");
    (tx, handle)
}

fn commit(store: &mut Store, state: &FleetState, metrics: &Metrics, items: &mut [WriteItem]) {
    // Each item's operations in arrival order: a file removed by one full
    // snapshot and re-added by the next must end up present.
    let mut batch = Batch::default();
    for i in items.iter_mut() {
        if i.reset_file_seqs
            && let Some(h) = &i.host
        {
            batch.ops.push(Op::ResetFileSeqs { host_id: h.host_id.clone() });
        }
        batch.ops.extend(i.removed_files.drain(..).map(|(host_id, path)| Op::RemoveFile { host_id, path }));
        batch.ops.extend(i.files.drain(..).map(Op::File));
        batch.ops.extend(i.resources.take().map(Op::Resource));
        batch.ops.extend(i.host.take().map(Op::Host));
        batch.ops.append(&mut i.ops);
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        match store.write_batch(&batch) {
            Ok(()) => {
                metrics.healthy.store(true, std::sync::atomic::Ordering::Relaxed);
                metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
                metrics.store_batch_items.observe(items.len() as f64);
                break;
            }
            Err(e) => {
                metrics.store_errors.inc();
                metrics.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, items = items.len(), "store commit failed; nothing acknowledged, retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Durable: publish stored seqs; the host's current connection (whichever it is
    // now, even after a reconnect) turns them into Acks.
    let now = Instant::now();
    for i in items.iter_mut() {
        if let Some(f) = i.on_durable.take() {
            (f.0)(store);
        }
        if let Some(done) = i.done.take() {
            let _ = done.send(());
        }
        if let Some(received) = i.received {
            metrics.ingest_ack_seconds.observe(now.duration_since(received).as_secs_f64());
        }
        if let Some(a) = &i.ack
            && let Some(mut h) = state.hosts.get_mut(&a.host_id)
            && h.spool_id == a.spool_id
        {
            if a.seq > h.stored_seq {
                h.stored_seq = a.seq;
            }
            let stored = h.stored_seq;
            if let Some(c) = &h.connection {
                c.acks.send_if_modified(|v| {
                    let changed = stored > *v;
                    *v = (*v).max(stored);
                    changed
                });
            }
        }
    }
    for i in items.iter_mut() {
        if let Some(m) = i.maintenance.take() {
            (m.0)(store);
        }
    }
    if items.iter().any(|i| i.ack.is_some()) {
        metrics.snapshots_ingested.inc_by(items.iter().filter(|i| i.ack.is_some()).count() as u64);
    }
}
