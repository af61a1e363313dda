//! Where a snapshot goes before the stream task sends it: the spool when it can take
//! it, else memory ([`Unspooled`](super::unspooled::Unspooled)).
//!
//! - While connected, a snapshot waits for room first (the server's acks make it), so
//!   a listing never overruns a small spool and drops its own first parts; a listing
//!   part is abandoned when the connection drops (the next connection lists again).
//! - A failed append marks the spool degraded (reported to the server at once), and
//!   appends pause on the connection backoff's schedule (1 s, ×1.6, up to 120 s):
//!   meanwhile snapshots go to memory without touching the disk, so a full disk costs
//!   no retry storm, and a connected agent still brings the server's view up to date.
//! - On a full disk while disconnected, the oldest spooled snapshots are dropped
//!   (counted; the next snapshot is a full listing) to make room.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::Snapshot;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::backoff::Backoff;
use crate::error::AgentError;
use crate::spool::Spool;

/// Bytes a spool record adds to a snapshot measured before it has a seq: the record
/// header (length, CRC, seq: 16) and the seq field in the payload (up to 11), rounded up.
const RECORD_OVERHEAD: u64 = 32;
/// How often a wait for room looks again without being woken.
const ROOM_POLL: Duration = Duration::from_secs(1);

/// Where a snapshot went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Put {
    Spooled(u64),
    /// Held in memory (not durable), sent like a spooled one.
    Unspooled(u64),
    /// Not placed: the connection dropped while a listing part waited for room.
    Abandoned,
}

impl Put {
    pub fn seq(self) -> Option<u64> {
        match self {
            Put::Spooled(s) | Put::Unspooled(s) => Some(s),
            Put::Abandoned => None,
        }
    }
}

/// A part of a full listing (abandoned when the connection drops while it waits for
/// room), or anything else (placed regardless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Listing,
    Other,
}

/// Whether the spool can take the failed append after dropping its oldest segment.
#[derive(Debug, PartialEq, Eq)]
enum OnFailure {
    DropOldestAndRetry,
    Memory,
}

/// What to do when the spool refuses a snapshot. Connected: memory (acks free the
/// disk; dropping would throw away what is about to be sent). Disconnected on a full
/// disk: make room by dropping the oldest, as the size bound does.
fn on_failure(storage_full: bool, connected: bool, spool_pending: u64) -> OnFailure {
    if storage_full && !connected && spool_pending > 0 { OnFailure::DropOldestAndRetry } else { OnFailure::Memory }
}

/// Whether the spool takes `len` more payload bytes without passing its bound (an
/// empty spool takes anything: a single record is never dropped for its size).
fn spool_has_room(bytes: u64, pending: u64, max_bytes: u64, len: usize) -> bool {
    pending == 0 || bytes + len as u64 + RECORD_OVERHEAD <= max_bytes
}

/// Whether an error says the disk (or the quota) is full.
pub(super) fn storage_full(e: &AgentError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
        {
            return true;
        }
        source = err.source();
    }
    let text = e.to_string().to_ascii_lowercase();
    text.contains("storage full") || text.contains("no space left")
}

/// Whether the spool can be written, and when to try again after a failure.
#[derive(Debug, Default)]
pub(super) struct SpoolHealth {
    /// Why the spool cannot be written; `None`: it can.
    degraded: Option<String>,
    backoff: Backoff,
    /// No append is tried before this.
    paused_until: Option<Instant>,
}

impl SpoolHealth {
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    fn may_append(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|t| now >= t)
    }

    /// An append failed: pause appends; returns the pause and whether the state changed.
    fn failed(&mut self, reason: String, now: Instant, unit: f64) -> (Duration, bool) {
        let delay = self.backoff.next_delay(unit);
        self.paused_until = Some(now + delay);
        let changed = self.degraded.as_ref() != Some(&reason);
        self.degraded = Some(reason);
        (delay, changed)
    }

    /// An append succeeded: returns whether the spool was degraded until now.
    fn succeeded(&mut self) -> bool {
        self.paused_until = None;
        self.backoff.reset();
        self.degraded.take().is_some()
    }
}

/// Place `snapshot` (waiting for room first while connected) and wake the sender.
pub(super) async fn put(shared: &Arc<Shared>, snapshot: Snapshot, kind: Kind, token: &CancellationToken) -> Put {
    let room = wait_for_room(shared, snapshot.encoded_len(), token).await;
    if !room && kind == Kind::Listing {
        return Put::Abandoned;
    }
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || place(&s, snapshot)).await {
        Ok(put) => {
            shared.spooled.notify_one();
            put
        }
        Err(e) => {
            tracing::error!(error = %e, "spool task failed; a full listing follows");
            shared.want_full.notify_one();
            Put::Abandoned
        }
    }
}

/// Wait while connected until the spool and memory take `len` more bytes. True: room;
/// false: not connected (or stopping).
async fn wait_for_room(shared: &Arc<Shared>, len: usize, token: &CancellationToken) -> bool {
    let mut link = shared.link.subscribe();
    let mut acked = shared.acked.subscribe();
    loop {
        if !*link.borrow_and_update() || token.is_cancelled() {
            return false;
        }
        let spool_room = {
            let s = shared.spool.lock();
            spool_has_room(s.bytes(), s.pending(), shared.config.spool_max_bytes, len)
        };
        if spool_room && shared.unspooled.lock().has_room(len) {
            return true;
        }
        tokio::select! {
            _ = token.cancelled() => return false,
            _ = link.changed() => {}
            _ = acked.changed() => {}
            _ = tokio::time::sleep(ROOM_POLL) => {}
        }
    }
}

/// Blocking: append to the spool (unless appends are paused), making room on a full
/// disk while disconnected; else hold the snapshot in memory.
fn place(shared: &Shared, mut snapshot: Snapshot) -> Put {
    let mut spool = shared.spool.lock();
    let connected = shared.status.connected.load(Ordering::Relaxed);
    let mut health = shared.health.lock();
    let now = Instant::now();
    if health.may_append(now) {
        loop {
            match spool.append(&mut snapshot) {
                Ok(seq) => {
                    if health.succeeded() {
                        tracing::info!("the spool is writable again");
                        shared.health_changed.notify_one();
                    }
                    drop(health);
                    publish(shared, &mut spool);
                    return Put::Spooled(seq);
                }
                Err(e) => {
                    let full = storage_full(&e);
                    if on_failure(full, connected, spool.pending()) == OnFailure::DropOldestAndRetry {
                        match spool.drop_oldest() {
                            Ok(Some(n)) => {
                                tracing::warn!(
                                    dropped = n,
                                    total_dropped = spool.dropped(),
                                    "disk full: dropped the oldest spooled snapshots to make room"
                                );
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot drop the oldest spool segment"),
                        }
                    }
                    let reason = if full { format!("storage full: {e}") } else { format!("write failed: {e}") };
                    let (delay, changed) = health.failed(reason, now, rand::random::<f64>());
                    let retry_in_ms = delay.as_millis() as u64;
                    if changed {
                        tracing::warn!(error = %e, retry_in_ms, "cannot write the spool; snapshots are sent from memory until it can");
                        shared.health_changed.notify_one();
                    } else {
                        tracing::debug!(error = %e, retry_in_ms, "the spool still cannot be written");
                    }
                    break;
                }
            }
        }
    }
    drop(health);
    let seq = spool.take_seq(&mut snapshot);
    snapshot.unspooled = true;
    let dropped = shared.unspooled.lock().push(snapshot);
    if dropped > 0 {
        spool.count_dropped(dropped);
        tracing::warn!(
            dropped,
            total_dropped = spool.dropped(),
            "memory bound reached: dropped the oldest unspooled snapshots"
        );
    }
    shared.status.unspooled.fetch_add(1, Ordering::Relaxed);
    shared.metrics.unspooled.inc();
    publish(shared, &mut spool);
    Put::Unspooled(seq)
}

/// Publish the spool's counters; wake the producer when a full listing is due.
fn publish(shared: &Shared, spool: &mut Spool) {
    shared.status.last_seq.store(spool.last_seq(), Ordering::Relaxed);
    shared.status.pending.store(spool.pending(), Ordering::Relaxed);
    shared.status.dropped.store(spool.dropped(), Ordering::Relaxed);
    if spool.take_need_full() {
        shared.want_full.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_append_goes_to_memory_unless_dropping_makes_room_offline() {
        assert_eq!(on_failure(true, false, 3), OnFailure::DropOldestAndRetry);
        assert_eq!(on_failure(true, false, 0), OnFailure::Memory, "nothing of ours left to drop");
        assert_eq!(on_failure(true, true, 3), OnFailure::Memory, "connected: acks free the disk");
        assert_eq!(on_failure(false, false, 3), OnFailure::Memory, "an I/O error: dropping would not help");
    }

    #[test]
    fn room_in_the_spool() {
        assert!(spool_has_room(0, 0, 65_536, 1 << 20), "an empty spool takes a record above its bound");
        assert!(spool_has_room(40_000, 2, 65_536, 16_000));
        assert!(!spool_has_room(60_000, 2, 65_536, 16_000));
        assert!(spool_has_room(60_000, 0, 65_536, 16_000), "everything acked");
    }

    #[test]
    fn storage_full_is_recognised_through_the_error_chain() {
        let enospc = AgentError::io("/state/spool", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(storage_full(&enospc));
        let quota = AgentError::io("/state/spool", std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert!(storage_full(&quota));
        let said = AgentError::Spool { path: "/state/spool".into(), message: "append: storage full".into() };
        assert!(storage_full(&said));
        let eio = AgentError::io("/state/spool", std::io::Error::from_raw_os_error(libc::EIO));
        assert!(!storage_full(&eio));
    }

    #[test]
    fn appends_pause_with_a_growing_backoff_and_resume_on_success() {
        let mut h = SpoolHealth::default();
        let t0 = Instant::now();
        assert!(h.may_append(t0));
        let (d1, changed) = h.failed("storage full".into(), t0, 1.0);
        assert!(changed);
        assert_eq!(d1, Duration::from_secs(1));
        assert!(!h.may_append(t0 + Duration::from_millis(500)));
        assert!(h.may_append(t0 + d1));
        let (d2, changed) = h.failed("storage full".into(), t0 + d1, 1.0);
        assert!(!changed, "the same reason again is no news");
        assert!(d2 > d1);
        assert_eq!(h.degraded(), Some("storage full"));
        assert!(h.succeeded());
        assert!(!h.succeeded());
        assert!(h.may_append(t0));
        assert_eq!(h.degraded(), None);
        assert_eq!(h.failed("write failed".into(), t0, 1.0).0, Duration::from_secs(1), "the backoff starts over");
    }
}
