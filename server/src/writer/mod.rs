//! Group commit: one thread owns the SQLite writer connection. Ingest tasks hand it
//! work items; it drains whatever has queued up (bounded by `max_batch`), writes
//! them in one transaction, and only after the commit publishes the stored seq so
//! the owning connection can Ack.
//!
//! Nothing handed to the writer is lost on the way:
//! - the queue is bounded, and [`WriteSender::send`] waits for room: a full queue
//!   backs up into the agents' streams and spools, not into server memory, and is
//!   counted (`driftwatch_writer_queue_full_waits_total`);
//! - a commit that fails for a transient reason (a full disk, a lock, an I/O error)
//!   is retried with backoff, nothing is acknowledged meanwhile, and `/healthz` says
//!   why;
//! - a commit that fails because of what an item holds (it can never be stored) is
//!   not retried forever: [`settle`] isolates the item, it is refused (recorded in
//!   the store's quarantine, logged with host and seq, counted, and its agent told),
//!   and the rest of the batch is committed.

mod settle;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_store::{Batch, FileRecord, HostRecord, Op, QuarantineRecord, ResourceRecord, Store, StoreError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::metrics::Metrics;
use crate::state::FleetState;
pub use settle::{Fate, settle};

/// The first wait after a failed commit; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between two attempts: how late a recovered disk is noticed.
const RETRY_MAX: Duration = Duration::from_secs(2);

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
    /// Told once this item is durable (control-plane writes wait on it). Dropped
    /// unanswered when the item is refused (it can never be stored).
    pub done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Store housekeeping (retention) run on the writer thread after this item's commit.
    pub maintenance: Option<Maintenance>,
    /// Run on the writer thread once this item is durable (publishing events to
    /// subscribers: nobody may see an event that a restart could lose). Not run
    /// when the item is refused.
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

/// Why a write was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotQueued {
    /// Only from [`WriteSender::try_send`].
    #[error("the store writer's queue is full")]
    Full,
    #[error("the store writer has stopped (server shutting down)")]
    Stopped,
}

/// The writer's queue. Bounded: a sender waits for room rather than drop an item.
#[derive(Debug, Clone)]
pub struct WriteSender {
    tx: mpsc::Sender<WriteItem>,
    depth: Gauge,
    full_waits: Counter,
}

impl WriteSender {
    /// A sender on `tx`, counted in metrics of its own (tests that stand in for the writer).
    #[cfg(test)]
    pub(crate) fn for_tests(tx: mpsc::Sender<WriteItem>) -> Self {
        Self { tx, depth: Gauge::default(), full_waits: Counter::default() }
    }

    /// Queue `item`, waiting while the queue is full (counted). Fails only once the
    /// writer has stopped (shutdown).
    pub async fn send(&self, item: WriteItem) -> Result<(), NotQueued> {
        let mut queued = Queued::start(&self.depth);
        let Some(item) = self.queue_now(item, &mut queued)? else { return Ok(()) };
        self.tx.send(item).await.map_err(|_| NotQueued::Stopped)?;
        queued.taken();
        Ok(())
    }

    /// [`WriteSender::send`] for threads that are not async workers (the engine
    /// thread, `spawn_blocking`); panics on an async worker, as `blocking_send` does.
    pub fn blocking_send(&self, item: WriteItem) -> Result<(), NotQueued> {
        let mut queued = Queued::start(&self.depth);
        let Some(item) = self.queue_now(item, &mut queued)? else { return Ok(()) };
        self.tx.blocking_send(item).map_err(|_| NotQueued::Stopped)?;
        queued.taken();
        Ok(())
    }

    /// The first step of both sends: queue `item` if there is room now (`None`), else
    /// count a wait and hand it back to wait for room.
    fn queue_now(&self, item: WriteItem, queued: &mut Queued) -> Result<Option<WriteItem>, NotQueued> {
        match self.tx.try_send(item) {
            Ok(()) => {
                queued.taken();
                Ok(None)
            }
            Err(TrySendError::Closed(_)) => Err(NotQueued::Stopped),
            Err(TrySendError::Full(item)) => {
                self.full_waits.inc();
                Ok(Some(item))
            }
        }
    }

    /// Hold a place in the queue (waiting for room, counted, as `send` does), so that
    /// the item can be queued without waiting inside the critical section that makes
    /// it: whatever another writer builds after that section is queued behind it.
    pub async fn reserve(&self) -> Result<WritePermit<'_>, NotQueued> {
        let queued = Queued::start(&self.depth);
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(TrySendError::Closed(())) => return Err(NotQueued::Stopped),
            Err(TrySendError::Full(())) => {
                self.full_waits.inc();
                self.tx.reserve().await.map_err(|_| NotQueued::Stopped)?
            }
        };
        Ok(WritePermit { permit, queued })
    }

    /// Queue `item` only if there is room now. Only for callers that keep the item
    /// and try again later themselves (host expiry, on its next pass).
    pub fn try_send(&self, item: WriteItem) -> Result<(), NotQueued> {
        let mut queued = Queued::start(&self.depth);
        self.tx.try_send(item).map_err(|e| match e {
            TrySendError::Full(_) => NotQueued::Full,
            TrySendError::Closed(_) => NotQueued::Stopped,
        })?;
        queued.taken();
        Ok(())
    }
}

/// A place in the writer's queue (see [`WriteSender::reserve`]); given back if dropped.
pub struct WritePermit<'a> {
    permit: mpsc::Permit<'a, WriteItem>,
    queued: Queued<'a>,
}

impl WritePermit<'_> {
    /// Queue `item` now (never waits).
    pub fn send(mut self, item: WriteItem) {
        self.permit.send(item);
        self.queued.taken();
    }
}

/// One write counted in the queue depth from when its sender starts until the writer
/// takes it; taken back if it never got into the queue (the send failed or was
/// given up half-way).
struct Queued<'a>(Option<&'a Gauge>);

impl<'a> Queued<'a> {
    fn start(depth: &'a Gauge) -> Self {
        depth.inc();
        Self(Some(depth))
    }

    /// In the queue: the writer takes it out of the count.
    fn taken(&mut self) {
        self.0 = None;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.0 {
            d.dec();
        }
    }
}

/// Write `ops` in one transaction and return once it is durable (control-plane writes:
/// a change takes effect only after it would survive a restart).
pub async fn commit_durable(writer: &WriteSender, ops: Vec<Op>) -> Result<(), crate::error::ServerError> {
    let (done, durable) = tokio::sync::oneshot::channel();
    let gone = |what: &str| crate::error::ServerError::Unavailable(what.into());
    writer
        .send(WriteItem { ops, done: Some(done), ..Default::default() })
        .await
        .map_err(|_| gone("server is shutting down"))?;
    durable.await.map_err(|_| {
        gone("the write was not stored: the server is shutting down, or the store refused it (see the server log)")
    })
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
    let sender = WriteSender {
        tx,
        depth: metrics.writer_queue_depth.clone(),
        full_waits: metrics.writer_queue_full_waits.clone(),
    };
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
                metrics.writer_queue_depth.dec_by(items.len() as i64);
                commit(&mut store, &state, &metrics, &mut items);
            }
            tracing::debug!("store writer drained and stopped");
        })
        .expect("spawn store writer thread");
    (sender, handle)
}

fn commit(store: &mut Store, state: &FleetState, metrics: &Metrics, items: &mut [WriteItem]) {
    let (batch, ranges) = batch_of(items);
    let fates = commit_all(metrics, &batch.ops, &ranges, RETRY_FIRST, |parts| store.write_parts(parts));
    let refused: Vec<(usize, StoreError)> = fates
        .into_iter()
        .enumerate()
        .filter_map(|(i, f)| match f {
            Fate::Refused(e) => Some((i, e)),
            _ => None,
        })
        .collect();
    let mut refusals = vec![None; items.len()];
    if !refused.is_empty() {
        quarantine(store, metrics, items, &batch.ops, &ranges, refused, &mut refusals);
    }
    metrics.store_batch_items.observe(items.len() as f64);
    // Durable (or refused, and that durably recorded): publish stored seqs; the host's
    // current connection (whichever it is now, even after a reconnect) turns them into Acks.
    let now = Instant::now();
    for (i, refusal) in items.iter_mut().zip(&refusals) {
        if refusal.is_none() {
            if let Some(f) = i.on_durable.take() {
                (f.0)(store);
            }
            if let Some(done) = i.done.take() {
                let _ = done.send(());
            }
            if let Some(received) = i.received {
                metrics.ingest_ack_seconds.observe(now.duration_since(received).as_secs_f64());
            }
        }
        // A refused snapshot is settled too: it can never be stored, its refusal is, and
        // Acks are cumulative (the next stored seq would cover it anyway). Its agent's
        // stream is cut with the reason (the connection task sends a cut before any
        // Ack); the Welcome of its next stream acknowledges the seq.
        if let Some(a) = &i.ack
            && let Some(mut h) = state.hosts.get_mut(&a.host_id)
            && h.spool_id == a.spool_id
        {
            if a.seq > h.stored_seq {
                h.stored_seq = a.seq;
            }
            let stored = h.stored_seq;
            if let Some(c) = &h.connection {
                if let Some(why) = refusal {
                    let _ =
                        c.cut.send(Some(tonic::Status::from(crate::error::ServerError::InvalidArgument(why.clone()))));
                }
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
    let stored = items.iter().zip(&refusals).filter(|(i, r)| i.ack.is_some() && r.is_none()).count();
    if stored > 0 {
        metrics.snapshots_ingested.inc_by(stored as u64);
    }
}

/// Every item's operations in arrival order, in one batch, and the range of each
/// item's ops in it: a file removed by one full snapshot and re-added by the next
/// must end up present.
fn batch_of(items: &mut [WriteItem]) -> (Batch, Vec<Range<usize>>) {
    let mut batch = Batch::default();
    let mut ranges = Vec::with_capacity(items.len());
    for i in items.iter_mut() {
        let start = batch.ops.len();
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
        ranges.push(start..batch.ops.len());
    }
    (batch, ranges)
}

/// Commit the items whose ops are `ranges` of `ops` through `write` until none is
/// pending: all in one transaction when that works; a transient failure is retried
/// (waits from `first_retry`, doubling up to [`RETRY_MAX`]) with `/healthz` failing
/// meanwhile; an item that fails on its own because of what it holds is refused.
fn commit_all(
    metrics: &Metrics,
    ops: &[Op],
    ranges: &[Range<usize>],
    first_retry: Duration,
    mut write: impl FnMut(&[&[Op]]) -> Result<(), StoreError>,
) -> Vec<Fate<StoreError>> {
    let mut fates: Vec<Fate<StoreError>> = ranges.iter().map(|_| Fate::Pending).collect();
    let mut delay = first_retry;
    loop {
        let started = Instant::now();
        let attempt = settle(
            &mut fates,
            &mut |items: &[usize]| {
                let parts: Vec<&[Op]> = items.iter().map(|&i| &ops[ranges[i].clone()]).collect();
                write(&parts).inspect_err(|e| metrics.store_commit_failed(e.kind()))
            },
            &|e: &StoreError| e.kind().transient(),
        );
        match attempt {
            Ok(()) => {
                metrics.store_committing();
                metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
                return fates;
            }
            Err(e) => {
                let pending = fates.iter().filter(|f| matches!(f, Fate::Pending)).count();
                tracing::error!(error = %e, kind = e.kind().label(), retry_in_ms = delay.as_millis() as u64, items = pending, "store commit failed; nothing acknowledged, retrying");
                metrics.store_failing(e.reason());
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Record the refused items durably (the store's quarantine) and say why each was
/// refused: logged with host and seq, counted, and in `refusals` (the reason its
/// agent is given).
fn quarantine(
    store: &mut Store,
    metrics: &Metrics,
    items: &[WriteItem],
    ops: &[Op],
    ranges: &[Range<usize>],
    refused: Vec<(usize, StoreError)>,
    refusals: &mut [Option<String>],
) {
    let at_ms = driftwatch_proto::now_millis();
    let mut records = Vec::with_capacity(refused.len());
    for (i, e) in refused {
        let held = &ops[ranges[i].clone()];
        let (host_id, seq) = match &items[i].ack {
            Some(a) => (a.host_id.clone(), a.seq),
            None => (host_of(held).unwrap_or_default().to_string(), 0),
        };
        let detail = describe(held);
        tracing::error!(host = %host_id, seq, error = %e, held = %detail, "write refused: the store cannot take it however often it is tried; quarantined, the rest of its batch is stored");
        metrics.store_quarantined.inc();
        refusals[i] = Some(format!(
            "snapshot {seq} of host '{host_id}' was refused: the server's store cannot take it ({}); it is quarantined on the server and will not be stored",
            e.reason()
        ));
        records.push(Op::Quarantine(QuarantineRecord {
            at_ms,
            host_id,
            seq,
            error: e.reason(),
            detail,
            ..Default::default()
        }));
    }
    let all = 0..records.len();
    let one = std::slice::from_ref(&all);
    if let Some(Fate::Refused(e)) = commit_all(metrics, &records, one, RETRY_FIRST, |p| store.write_parts(p)).pop() {
        tracing::error!(error = %e, "the record of refused writes could not be stored");
    }
}

/// The host a write is about, from its ops.
fn host_of(ops: &[Op]) -> Option<&str> {
    ops.iter().find_map(|op| match op {
        Op::Host(h) => Some(h.host_id.as_str()),
        Op::File(f) => Some(f.host_id.as_str()),
        Op::RemoveFile { host_id, .. } | Op::ResetFileSeqs { host_id } | Op::RemoveHost { host_id } => {
            Some(host_id.as_str())
        }
        Op::Resource(r) => Some(r.host_id.as_str()),
        _ => None,
    })
}

/// What a write held, without its values: ops by kind, and the first few paths.
fn describe(ops: &[Op]) -> String {
    const PATHS: usize = 5;
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for op in ops {
        match kinds.iter_mut().find(|(k, _)| *k == op.kind()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((op.kind(), 1)),
        }
    }
    let mut out = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
    let paths: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::File(f) => Some(f.path.as_str()),
            Op::RemoveFile { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    if !paths.is_empty() {
        out.push_str("; paths: ");
        out.push_str(&paths[..paths.len().min(PATHS)].join(", "));
        if paths.len() > PATHS {
            out.push_str(&format!(" and {} more", paths.len() - PATHS));
        }
    }
    out
}

#[cfg(test)]
mod tests;
