//! Retention: what is pruned and rolled up, and when. Resolved alerts and their
//! events go after `alerts`, raw resource samples are rolled up into 5-minute
//! buckets after `raw_resources`, rollups go after `rollups`, audit events after
//! the audit retention (see `audit`), file versions beyond `file_history_versions`
//! per file or older than `file_history` (a file's newest version always stays), and
//! hosts offline longer than `offline_hosts` ([`HostExpiry`]). A pending or firing
//! alert is never pruned.
//!
//! The rule engine decides which alerts and silences go (it owns them) and hands
//! the store-side pass ([`maintain_store`]) to the writer thread, which runs it
//! between batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, ResourceSample};
use driftwatch_store::{Op, Store};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEntry, AuditLog, SERVER_ACTOR};
use crate::engine::{EngineHandle, EvalMsg};
use crate::metrics::Metrics;
use crate::state::FleetState;
use crate::writer::{WriteItem, WriteSender};

/// Retention settings (from the server config).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Resolved alerts and events older than this are pruned.
    pub alerts: Duration,
    /// Raw resource samples older than this are rolled up into 5-minute buckets.
    pub raw_resources: Duration,
    /// Rollups older than this are deleted.
    pub rollups: Duration,
    /// How often retention runs.
    pub interval: Duration,
    /// Hosts offline (unseen) longer than this are removed; zero: never.
    pub offline_hosts: Duration,
    /// File versions older than this are pruned (each file's newest stays); zero: no age limit.
    pub file_history: Duration,
    /// Versions kept per file; zero: no count limit.
    pub file_history_versions: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            alerts: Duration::from_secs(72 * 3600),
            raw_resources: Duration::from_secs(24 * 3600),
            rollups: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
            offline_hosts: Duration::from_secs(30 * 24 * 3600),
            file_history: Duration::ZERO,
            file_history_versions: 100,
        }
    }
}

/// Width of a resource rollup bucket.
pub const ROLLUP_BUCKET_MS: i64 = 5 * 60 * 1000;

/// Is this alert past retention at `cutoff_ms`? Only resolved alerts ever are.
pub fn alert_expired(a: &v1::Alert, cutoff_ms: i64) -> bool {
    a.state == v1::AlertState::Resolved as i32
        && a.resolved_at.as_ref().is_some_and(|r| driftwatch_proto::timestamp_millis(r) < cutoff_ms)
}

/// Store-side retention, run on the writer thread between batches.
pub fn maintain_store(
    store: &mut Store,
    events_before: i64,
    raw_before: i64,
    rollups_before: i64,
    history: FileHistoryRetention,
    metrics: &Metrics,
) {
    let extract =
        |blob: &[u8]| ResourceSample::decode(blob).map(|s| driftwatch_rules::resource_metrics(&s)).unwrap_or_default();
    let started = Instant::now();
    // One chunk per call keeps the writer's other work flowing; the next pass continues.
    let rolled = store.downsample_resources_chunk(raw_before, ROLLUP_BUCKET_MS, 20_000, &extract);
    let events = store.prune_events(events_before);
    let rollups = store.prune_rollups(rollups_before);
    let versions = match history.versions {
        0 => Ok(0),
        n => store.prune_file_history_versions(n, HISTORY_CHUNK),
    };
    let aged = match history.before_ms {
        Some(before) => store.prune_file_history_before(before, HISTORY_CHUNK),
        None => Ok(0),
    };
    match (rolled, events, rollups, versions, aged) {
        (Ok(r), Ok(e), Ok(p), Ok(v), Ok(a)) => {
            metrics.limit_hit("file_history_versions", v as u64);
            metrics.limit_hit("file_history", a as u64);
            if r + e + p + v + a > 0 {
                tracing::info!(
                    samples_rolled_up = r,
                    events_pruned = e,
                    rollups_pruned = p,
                    file_versions_over_count = v,
                    file_versions_over_age = a,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention"
                );
            }
        }
        (r, e, p, v, a) => {
            tracing::error!(rollup = ?r.err(), events = ?e.err(), rollups = ?p.err(), file_versions = ?v.err(), file_ages = ?a.err(), "retention failed; retried next pass")
        }
    }
}

/// File versions deleted per retention pass at most (per rule); the next pass goes on.
const HISTORY_CHUNK: usize = 20_000;

/// What a retention pass prunes of the file history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHistoryRetention {
    /// Versions kept per file (0: any number).
    pub versions: usize,
    /// Versions stored before this go (each file's newest stays).
    pub before_ms: Option<i64>,
}

impl Retention {
    pub fn file_history_at(&self, now_ms: i64) -> FileHistoryRetention {
        FileHistoryRetention {
            versions: self.file_history_versions,
            before_ms: (!self.file_history.is_zero()).then(|| now_ms - self.file_history.as_millis() as i64),
        }
    }
}

/// Hosts that expire at `now_ms`: offline (no stream) and unseen for longer than
/// `max_offline`. Never an online host, however old its last message.
pub fn expired_hosts<'a>(
    hosts: impl IntoIterator<Item = (&'a str, bool, i64)>,
    now_ms: i64,
    max_offline: Duration,
) -> Vec<String> {
    if max_offline.is_zero() {
        return Vec::new();
    }
    let cutoff = now_ms - max_offline.as_millis() as i64;
    hosts.into_iter().filter(|(_, online, seen)| !online && *seen < cutoff).map(|(id, _, _)| id.to_string()).collect()
}

/// Removes hosts offline longer than `[retention] offline_hosts`: from the fleet
/// state, then from the store (row, files, history, resources) with a `host.expired`
/// audit event in the same transaction. Identity records stay (a revoked host stays
/// revoked); a host that comes back is a new host.
pub struct HostExpiry {
    pub state: Arc<FleetState>,
    pub writer: WriteSender,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub max_offline: Duration,
}

impl HostExpiry {
    /// One pass; returns the hosts removed.
    pub async fn run_once(&self) -> Vec<String> {
        let now = driftwatch_proto::now_millis();
        let candidates = {
            let seen: Vec<(String, bool, i64)> =
                self.state.hosts.iter().map(|h| (h.key().clone(), h.connection.is_some(), h.last_seen_ms)).collect();
            expired_hosts(seen.iter().map(|(id, on, at)| (id.as_str(), *on, *at)), now, self.max_offline)
        };
        let mut removed = Vec::new();
        for id in candidates {
            let Some(durable) = self.remove(&id, now) else { continue };
            // Alerts of the host resolve (it is gone from the state the engine reads).
            let _ = durable.await;
            self.engine.send(EvalMsg::Reevaluate { host: Some(id.clone()) });
            self.metrics.limit_hit("offline_hosts", 1);
            removed.push(id);
        }
        removed
    }

    /// Remove `id` if it is still expired, queueing its store removal while the host's
    /// entry is locked: a reconnect of the same id waits for the lock, so its writes
    /// queue after the removal. None: it came back, or the writer is full (next pass).
    fn remove(&self, id: &str, now: i64) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let dashmap::Entry::Occupied(entry) = self.state.hosts.entry(id.to_string()) else { return None };
        let h = entry.get();
        if expired_hosts([(id, h.connection.is_some(), h.last_seen_ms)], now, self.max_offline).is_empty() {
            return None;
        }
        let offline_for = driftwatch_proto::duration::format_ms(now - h.last_seen_ms);
        let audit = AuditEntry {
            actor: SERVER_ACTOR.to_string(),
            action: "host.expired".into(),
            target: format!("host:{id}"),
            host_id: id.to_string(),
            detail: format!(
                "offline for {offline_for} ({} files); [retention] offline_hosts is {}",
                h.files.len(),
                driftwatch_proto::duration::format(self.max_offline)
            ),
            ..Default::default()
        };
        let (done, durable) = tokio::sync::oneshot::channel();
        let item = WriteItem {
            ops: vec![Op::RemoveHost { host_id: id.to_string() }, AuditLog::op(audit)],
            done: Some(done),
            ..Default::default()
        };
        if let Err(e) = self.writer.try_send(item) {
            tracing::debug!(host = %id, error = %e, "host expiry deferred: the store writer is busy");
            return None;
        }
        entry.remove();
        tracing::info!(host = %id, offline_for = %offline_for, "host expired: removed from the fleet");
        Some(durable)
    }

    /// A pass every `interval` (the first after a minute at most) until `shutdown`.
    pub fn spawn(self, interval: Duration, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut next = Duration::from_secs(60).min(interval);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(next) => {}
                }
                self.run_once().await;
                next = interval;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resolved_alerts_past_the_cutoff_expire() {
        let at = |ms| Some(driftwatch_proto::timestamp_from_millis(ms));
        let resolved =
            v1::Alert { state: v1::AlertState::Resolved as i32, resolved_at: at(1_000), ..Default::default() };
        assert!(alert_expired(&resolved, 2_000));
        assert!(!alert_expired(&resolved, 1_000), "not before the cutoff");
        for state in [v1::AlertState::Pending, v1::AlertState::Firing] {
            let live = v1::Alert { state: state as i32, resolved_at: at(1_000), ..resolved.clone() };
            assert!(!alert_expired(&live, i64::MAX), "{state:?} alerts are never pruned");
        }
    }

    #[test]
    fn only_offline_hosts_unseen_past_the_limit_expire() {
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400_000;
        let hosts = [("old-offline", false, 0), ("old-online", true, 0), ("recent", false, now - 1_000)];
        assert_eq!(expired_hosts(hosts, now, day), vec!["old-offline".to_string()]);
        assert!(expired_hosts(hosts, now, Duration::ZERO).is_empty(), "zero turns expiry off");
        assert!(expired_hosts([("edge", false, now - 86_400_000)], now, day).is_empty(), "not before the cutoff");
    }

    #[test]
    fn file_history_retention_from_the_settings() {
        let r = Retention { file_history: Duration::from_secs(10), file_history_versions: 3, ..Default::default() };
        assert_eq!(r.file_history_at(60_000), FileHistoryRetention { versions: 3, before_ms: Some(50_000) });
        let off = Retention { file_history: Duration::ZERO, ..r };
        assert_eq!(off.file_history_at(60_000).before_ms, None);
    }
}
