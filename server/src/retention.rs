//! Retention: what is pruned and rolled up, and when. Resolved alerts and their
//! events go after `alerts`, raw resource samples are rolled up into 5-minute
//! buckets after `raw_resources`, rollups go after `rollups`, audit events after
//! the audit retention (see `audit`). A pending or firing alert is never pruned.
//!
//! The rule engine decides which alerts and silences go (it owns them) and hands
//! the store-side pass ([`maintain_store`]) to the writer thread, which runs it
//! between batches.

use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, ResourceSample};
use driftwatch_store::Store;
use prost::Message;

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
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            alerts: Duration::from_secs(72 * 3600),
            raw_resources: Duration::from_secs(24 * 3600),
            rollups: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
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
pub fn maintain_store(store: &mut Store, events_before: i64, raw_before: i64, rollups_before: i64) {
    let extract =
        |blob: &[u8]| ResourceSample::decode(blob).map(|s| driftwatch_rules::resource_metrics(&s)).unwrap_or_default();
    let started = Instant::now();
    // One chunk per call keeps the writer's other work flowing; the next pass continues.
    let rolled = store.downsample_resources_chunk(raw_before, ROLLUP_BUCKET_MS, 20_000, &extract);
    let events = store.prune_events(events_before);
    let rollups = store.prune_rollups(rollups_before);
    match (rolled, events, rollups) {
        (Ok(r), Ok(e), Ok(p)) => {
            if r + e + p > 0 {
                tracing::info!(
                    samples_rolled_up = r,
                    events_pruned = e,
                    rollups_pruned = p,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention"
                );
            }
        }
        (r, e, p) => {
            tracing::error!(rollup = ?r.err(), events = ?e.err(), rollups = ?p.err(), "retention failed; retried next pass")
        }
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
}
