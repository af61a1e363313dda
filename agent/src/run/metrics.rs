//! The agent's own `/metrics` and `/healthz` (`--metrics-listen`, off by default),
//! served by `driftwatch_telemetry::serve` like the server's.
//!
//! Gauges are read from the agent's state when scraped; counters are counted where
//! things happen. Names start with `driftwatch_agent_` and differ from what the
//! server exports about agents (`driftwatch_agent_spool_dropped_total` there is the
//! sum of every agent's reported drops; here `driftwatch_agent_spool_dropped` is this
//! agent's own count).
//!
//! `/healthz` rule ([`health`]): 503 when the spool cannot be written (snapshots are
//! held in memory and lost on a restart), or when the agent has been without its
//! server for longer than `healthz_grace` (default 5m), counted from its start if it
//! never connected, else from when the stream was lost; 200 otherwise, also while
//! reconnecting within the grace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use driftwatch_proto::v1;

use super::{AGENT_VERSION, Shared};

/// Where the kernel says how many inotify watches one user may hold.
const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

type OutcomeLabel = [(&'static str, &'static str); 1];

/// Every change outcome an agent reports, so each series exists from the start.
const OUTCOMES: [v1::ChangeOutcome; 8] = [
    v1::ChangeOutcome::Applied,
    v1::ChangeOutcome::DryRun,
    v1::ChangeOutcome::Refused,
    v1::ChangeOutcome::Conflict,
    v1::ChangeOutcome::Failed,
    v1::ChangeOutcome::RolledBack,
    v1::ChangeOutcome::Rejected,
    v1::ChangeOutcome::Unchanged,
];

#[derive(Debug)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    started: Instant,
    /// Milliseconds after `started` of the last ack (a Welcome's included); 0: none yet.
    last_ack_ms: AtomicU64,
    /// Milliseconds after `started` when the stream last came up or went down; 0: never up.
    link_changed_ms: AtomicU64,
    pub(super) unspooled: Counter,
    pub(super) connections: Counter,
    changes: Family<OutcomeLabel, Counter>,
    connected: Gauge,
    spool_bytes: Gauge,
    spool_pending: Gauge,
    spool_dropped: Gauge,
    spool_degraded: Gauge,
    held_in_memory: Gauge,
    watched_files: Gauge,
    inotify_watches: Gauge,
    inotify_max_user_watches: Gauge,
    inotify_headroom: Gauge,
    last_ack_age: Gauge<f64, AtomicU64>,
}

/// What a scrape reads from the agent's state.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Reading {
    pub connected: bool,
    pub spool_bytes: u64,
    pub spool_pending: u64,
    pub spool_dropped: u64,
    pub degraded: Option<String>,
    pub held_in_memory: u64,
    pub watched_files: u64,
    pub inotify_watches: u64,
    pub max_user_watches: Option<u64>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl AgentMetrics {
    /// `host`: the host id the agent starts with (its certificate's, else the
    /// configured one), a label of `driftwatch_agent_build_info` so dashboards can
    /// tell agents apart by host rather than by scrape address.
    pub(crate) fn new(host: &str) -> Self {
        // Unprefixed for the standard `process_*` metrics, like the server's.
        let mut root = Registry::default();
        root.register_collector(Box::new(driftwatch_telemetry::ProcessCollector));
        let r = root.sub_registry_with_prefix("driftwatch_agent");
        let build = vec![("version".to_string(), AGENT_VERSION.to_string()), ("host".to_string(), host.to_string())];
        r.register("build", "The agent's version and host id", Info::new(build));
        let r = &mut *r;
        let connected = gauge(r, "connected", "1 while a stream to the server is up (past its Welcome)");
        let connections = counter(r, "connections", "Streams to the server opened (past their Welcome)");
        let last_ack_age = Gauge::<f64, AtomicU64>::default();
        r.register(
            "last_ack_age_seconds",
            "Seconds since the server last acknowledged a snapshot (or welcomed a stream); since the start before that",
            last_ack_age.clone(),
        );
        let spool_bytes = gauge(r, "spool_bytes", "Bytes of the on-disk spool (bounded by spool_max_bytes)");
        let spool_pending = gauge(r, "spool_pending", "Snapshots in the spool the server has not acknowledged yet");
        let spool_dropped = gauge(
            r,
            "spool_dropped",
            "Snapshots this spool dropped unacknowledged (size bound, full disk, damage); reported to the server",
        );
        let spool_degraded =
            gauge(r, "spool_degraded", "1 while the spool cannot be written (snapshots are held in memory)");
        let held_in_memory = gauge(
            r,
            "unspooled_pending",
            "Snapshots held in memory because the spool could not take them, until acknowledged",
        );
        let unspooled = counter(
            r,
            "unspooled_snapshots",
            "Snapshots sent from memory because the spool could not take them (lost if the agent stops first)",
        );
        let watched_files = gauge(r, "watched_files", "Files tracked (matching a watch pattern, or named)");
        let inotify_watches = gauge(r, "inotify_watches", "inotify watches this agent holds (directories)");
        let inotify_max_user_watches = gauge(
            r,
            "inotify_max_user_watches",
            "The kernel's per-user inotify watch limit (fs.inotify.max_user_watches)",
        );
        let inotify_headroom = gauge(
            r,
            "inotify_watch_headroom",
            "max_user_watches minus this agent's watches (other processes of the same user share the limit)",
        );
        let changes = Family::<OutcomeLabel, Counter>::default();
        for o in OUTCOMES {
            let _ = changes.get_or_create(&[("outcome", driftwatch_proto::change_outcome_name(o as i32))]);
        }
        r.register("changes", "Changes the server asked for, by outcome", changes.clone());
        Self {
            registry: root,
            started: Instant::now(),
            last_ack_ms: AtomicU64::new(0),
            link_changed_ms: AtomicU64::new(0),
            unspooled,
            connections,
            changes,
            connected,
            spool_bytes,
            spool_pending,
            spool_dropped,
            spool_degraded,
            held_in_memory,
            watched_files,
            inotify_watches,
            inotify_max_user_watches,
            inotify_headroom,
            last_ack_age,
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1: 0 means "never".
        ms(self.started.elapsed()).max(1)
    }

    /// The server acknowledged something (or welcomed a stream).
    pub(super) fn acked(&self) {
        self.last_ack_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The stream came up or went down.
    pub(super) fn link(&self, up: bool) {
        if up || self.link_changed_ms.load(Ordering::Relaxed) != 0 {
            self.link_changed_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A change's result, by its outcome.
    pub(super) fn change_result(&self, outcome: i32) {
        self.changes.get_or_create(&[("outcome", driftwatch_proto::change_outcome_name(outcome))]).inc();
    }

    /// Seconds since the last ack, or since the start before the first.
    fn last_ack_age(&self) -> Duration {
        let now = ms(self.started.elapsed());
        Duration::from_millis(now.saturating_sub(self.last_ack_ms.load(Ordering::Relaxed)))
    }

    /// Since when the agent is without its server, if it is (`connected` from the state).
    fn without_server(&self, connected: bool) -> Option<(bool, Duration)> {
        if connected {
            return None;
        }
        let changed = self.link_changed_ms.load(Ordering::Relaxed);
        let now = ms(self.started.elapsed());
        Some((changed != 0, Duration::from_millis(now.saturating_sub(changed))))
    }

    fn render(&self, r: &Reading) -> String {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.connected.set(i64::from(r.connected));
        self.spool_bytes.set(g(r.spool_bytes));
        self.spool_pending.set(g(r.spool_pending));
        self.spool_dropped.set(g(r.spool_dropped));
        self.spool_degraded.set(i64::from(r.degraded.is_some()));
        self.held_in_memory.set(g(r.held_in_memory));
        self.watched_files.set(g(r.watched_files));
        self.inotify_watches.set(g(r.inotify_watches));
        if let Some(max) = r.max_user_watches {
            self.inotify_max_user_watches.set(g(max));
            self.inotify_headroom.set(g(max) - g(r.inotify_watches));
        }
        self.last_ack_age.set(self.last_ack_age().as_secs_f64());
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `/healthz` (pure: tested below). `without_server`: None while connected, else
/// (whether it was ever connected, for how long it has been without the server).
pub(crate) fn health(
    degraded: Option<&str>,
    without_server: Option<(bool, Duration)>,
    grace: Duration,
) -> Result<String, String> {
    if let Some(why) = degraded {
        return Err(format!("spool: cannot write ({why}); snapshots are held in memory"));
    }
    let grace_s = grace.as_secs();
    match without_server {
        None => Ok("ok: connected".into()),
        Some((ever, d)) if d > grace => Err(if ever {
            format!("disconnected from the server for {}s (healthz_grace {grace_s}s)", d.as_secs())
        } else {
            format!("never connected to the server in {}s (healthz_grace {grace_s}s)", d.as_secs())
        }),
        Some((ever, d)) => Ok(format!(
            "ok: {} for {}s (within healthz_grace {grace_s}s)",
            if ever { "reconnecting" } else { "connecting" },
            d.as_secs()
        )),
    }
}

/// What the metrics listener serves.
pub(super) struct Served(pub(super) Arc<Shared>);

impl Served {
    fn reading(&self) -> Reading {
        let s = &self.0;
        let (spool_bytes, spool_pending, spool_dropped) = {
            let spool = s.spool.lock();
            (spool.bytes(), spool.pending(), spool.dropped())
        };
        Reading {
            connected: *s.link.borrow(),
            spool_bytes,
            spool_pending,
            spool_dropped,
            degraded: s.health.lock().degraded().map(str::to_string),
            held_in_memory: s.unspooled.lock().len() as u64,
            watched_files: s.watch_counts.files.load(Ordering::Relaxed),
            inotify_watches: s.watch_counts.watches.load(Ordering::Relaxed),
            max_user_watches: std::fs::read_to_string(MAX_USER_WATCHES).ok().and_then(|t| t.trim().parse().ok()),
        }
    }
}

impl driftwatch_telemetry::Endpoint for Served {
    fn render(&self) -> String {
        self.0.metrics.render(&self.reading())
    }

    fn health(&self) -> Result<String, String> {
        let s = &self.0;
        let degraded = s.health.lock().degraded().map(str::to_string);
        health(degraded.as_deref(), s.metrics.without_server(*s.link.borrow()), s.config.healthz_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_on_a_degraded_spool_or_a_server_gone_past_the_grace() {
        let grace = Duration::from_secs(60);
        let s = |n| Duration::from_secs(n);
        assert_eq!(health(None, None, grace), Ok("ok: connected".into()));
        assert!(health(None, Some((true, s(59))), grace).unwrap().contains("reconnecting for 59s"));
        assert!(health(None, Some((false, s(10))), grace).unwrap().contains("connecting for 10s"));
        let why = health(None, Some((true, s(61))), grace).unwrap_err();
        assert_eq!(why, "disconnected from the server for 61s (healthz_grace 60s)");
        let why = health(None, Some((false, s(61))), grace).unwrap_err();
        assert!(why.starts_with("never connected to the server in 61s"), "{why}");
        let why = health(Some("storage full"), None, grace).unwrap_err();
        assert!(why.contains("spool: cannot write (storage full)"), "{why}");
    }

    #[test]
    fn every_metric_is_exported_with_its_name() {
        let m = AgentMetrics::new("web-1");
        m.change_result(v1::ChangeOutcome::Conflict as i32);
        let text = m.render(&Reading {
            connected: true,
            spool_bytes: 4096,
            inotify_watches: 3,
            max_user_watches: Some(8192),
            ..Default::default()
        });
        for line in [
            "driftwatch_agent_build_info{version=\"",
            "host=\"web-1\"} 1",
            "process_open_fds ",
            "driftwatch_agent_connected 1",
            "driftwatch_agent_spool_bytes 4096",
            "driftwatch_agent_inotify_watch_headroom 8189",
            "driftwatch_agent_changes_total{outcome=\"conflict\"} 1",
            "driftwatch_agent_changes_total{outcome=\"applied\"} 0",
            "driftwatch_agent_unspooled_snapshots_total 0",
            "driftwatch_agent_last_ack_age_seconds ",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn time_without_the_server_counts_from_the_start_until_a_first_connection() {
        let m = AgentMetrics::new("web-1");
        assert_eq!(m.without_server(true), None);
        assert!(matches!(m.without_server(false), Some((false, _))));
        m.link(true);
        m.link(false);
        assert!(matches!(m.without_server(false), Some((true, _))));
    }
}
