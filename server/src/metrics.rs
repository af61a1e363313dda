//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//!
//! Everything the server counts is named `driftwatch_*`, beside the standard
//! `process_*` metrics (`driftwatch_telemetry::process`). Per-RPC metrics are in
//! [`crate::rpc_metrics`], gauges counted from the server's state when scraped in
//! [`crate::state_gauges`].

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::rpc_metrics::RpcMetrics;
use crate::state_gauges::StateGauges;

/// `notifier` (name) and `target` (its endpoint's position: 0, or an Alertmanager
/// instance's index in `urls`); never a URL.
pub type NotifierLabels = Vec<(String, String)>;

#[derive(Debug)]
pub struct Metrics {
    /// Unprefixed (`process_*`), with a `driftwatch` sub-registry for the rest.
    pub registry: Registry,
    /// Calls by RPC and status, and their latency (the gRPC server's outer layer).
    pub rpc: Arc<RpcMetrics>,
    /// Alerts, hosts and rollouts by state, counted when scraped once wired in.
    pub state_gauges: Arc<StateGauges>,
    pub connected_agents: Gauge,
    pub snapshots_ingested: Counter,
    pub snapshots_duplicate: Counter,
    pub snapshots_rejected: Counter,
    /// Snapshots agents sent from memory because their spool could not take them.
    pub snapshots_unspooled: Counter,
    /// Snapshots agents reported dropping (sum of every host's increases).
    pub agent_spool_dropped: Counter,
    /// Full listings whose last part arrived with a part missing (nothing pruned).
    pub listings_incomplete: Counter,
    pub connections_refused: Counter,
    pub ingest_ack_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_batch_items: Histogram,
    pub store_errors: Counter,
    /// Failed store transactions by `driftwatch_store::FailureKind` (label `kind`).
    pub store_commit_failures: Family<[(&'static str, &'static str); 1], Counter>,
    /// 1 while the writer's commits fail (transient: retried, nothing acknowledged).
    pub store_commits_failing: Gauge,
    /// Writes refused because they could never be stored (the rest of their batch was).
    pub store_quarantined: Counter,
    /// Writes queued for the store writer or waiting for room in its queue.
    pub writer_queue_depth: Gauge,
    /// Writes that found the writer's queue full and waited for room.
    pub writer_queue_full_waits: Counter,
    pub rule_evaluations: Counter,
    pub rule_evaluation_errors: Counter,
    pub rule_queue_overflows: Counter,
    pub rule_eval_seconds: Histogram,
    pub alert_events: Counter,
    pub rules_loaded: Gauge,
    pub rules_last_reload_success: Gauge,
    pub rules_reloads: Counter,
    pub rules_reload_failures: Counter,
    /// SIGHUP reloads of the config file, those refused, and whether the last one parsed.
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub config_last_reload_success: Gauge,
    /// Commit attempts the store writer finished (either way): the watchdog's sign of progress.
    pub writer_attempts: std::sync::atomic::AtomicU64,
    pub subscribers: Gauge,
    pub retention_passes: Counter,
    /// Requests refused (or cut, or pruned) by a configured limit, by the limit's
    /// config key (`crate::limits::Limit`).
    pub limit_hits: Family<[(&'static str, &'static str); 1], Counter>,
    /// Per notifier target (labels `notifier`, `target`).
    pub notifications_delivered: Family<NotifierLabels, Counter>,
    pub notification_failures: Family<NotifierLabels, Counter>,
    pub notifications_expired: Family<NotifierLabels, Counter>,
    pub notifications_pending: Family<NotifierLabels, Gauge>,
    /// 1 while a target's circuit is not closed (open, or half-open probing): its
    /// endpoint failed `breaker_failures` times in a row and has not answered since.
    pub notifier_circuit_open: Family<NotifierLabels, Gauge>,
    /// Why the store writer's last commit failed; None once one succeeds (`/healthz`).
    store_problem: parking_lot::Mutex<Option<String>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        root.register_collector(Box::new(driftwatch_telemetry::ProcessCollector));
        let registry = root.sub_registry_with_prefix("driftwatch");
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
        );
        let rpc = RpcMetrics::register(
            registry,
            crate::access::table::TABLE.iter().map(|(service, methods)| (*service, methods.iter().map(|(m, _)| *m))),
        );
        let state_gauges = Arc::new(StateGauges::default());
        registry.register_collector(Box::new(state_gauges.clone()));
        let connected_agents = Gauge::default();
        registry.register("connected_agents", "Agent streams currently connected", connected_agents.clone());
        let snapshots_ingested = Counter::default();
        registry.register(
            "snapshots_ingested",
            "Snapshots durably stored and acknowledged",
            snapshots_ingested.clone(),
        );
        let snapshots_duplicate = Counter::default();
        registry.register(
            "snapshots_duplicate",
            "Resent snapshots already stored (deduplicated by host and seq)",
            snapshots_duplicate.clone(),
        );
        let snapshots_rejected = Counter::default();
        registry.register("snapshots_rejected", "Snapshots refused as invalid", snapshots_rejected.clone());
        let snapshots_unspooled = Counter::default();
        registry.register(
            "snapshots_unspooled",
            "Snapshots agents sent from memory because their spool could not take them (not durable on the host)",
            snapshots_unspooled.clone(),
        );
        let agent_spool_dropped = Counter::default();
        registry.register(
            "agent_spool_dropped",
            "Snapshots agents reported dropping because their spool was full (GetHost shows the host)",
            agent_spool_dropped.clone(),
        );
        let listings_incomplete = Counter::default();
        registry.register(
            "full_listings_incomplete",
            "Full listings that arrived with a part missing; they pruned nothing",
            listings_incomplete.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Agent streams refused (bad hello, duplicate host id, limits)",
            connections_refused.clone(),
        );
        let ingest_ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "ingest_ack_seconds",
            "Time from receiving a snapshot to it being durably stored (ack published)",
            ingest_ack_seconds.clone(),
        );
        let store_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register("store_commit_seconds", "Store transaction commit latency", store_commit_seconds.clone());
        let store_batch_items = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("store_batch_items", "Items per store transaction", store_batch_items.clone());
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed store transactions of any kind (see store_commit_failures by kind)",
            store_errors.clone(),
        );
        let store_commit_failures = Family::<[(&'static str, &'static str); 1], Counter>::default();
        for kind in driftwatch_store::FailureKind::ALL {
            let _ = store_commit_failures.get_or_create(&[("kind", kind.label())]);
        }
        registry.register(
            "store_commit_failures",
            "Failed store transactions by kind: data (an item that can never be stored, isolated and quarantined) \
             or a transient kind (disk_full, busy, io, read_only, corrupt, memory, other: retried, nothing acknowledged)",
            store_commit_failures.clone(),
        );
        let store_commits_failing = Gauge::default();
        registry.register(
            "store_commits_failing",
            "1 while the store writer's commits fail and are retried (/healthz says why)",
            store_commits_failing.clone(),
        );
        let store_quarantined = Counter::default();
        registry.register(
            "store_quarantined",
            "Writes refused because the store could never take them (logged with host and seq, kept in the quarantine table)",
            store_quarantined.clone(),
        );
        let writer_queue_depth = Gauge::default();
        registry.register(
            "writer_queue_depth",
            "Writes queued for the store writer or waiting for room in its queue",
            writer_queue_depth.clone(),
        );
        let writer_queue_full_waits = Counter::default();
        registry.register(
            "writer_queue_full_waits",
            "Writes that found the store writer's queue full and waited for room (back-pressure into agents' spools)",
            writer_queue_full_waits.clone(),
        );
        let rule_evaluations = Counter::default();
        registry.register("rule_evaluations", "Rule outcomes computed (rule x subject)", rule_evaluations.clone());
        let rule_evaluation_errors = Counter::default();
        registry.register(
            "rule_evaluation_errors",
            "Rule evaluations that failed (wrong value type, missing history); the alert state is held",
            rule_evaluation_errors.clone(),
        );
        let rule_queue_overflows = Counter::default();
        registry.register(
            "rule_queue_overflows",
            "Changes not queued for evaluation because the engine was behind (the fleet is re-evaluated instead)",
            rule_queue_overflows.clone(),
        );
        let rule_eval_seconds = Histogram::new(exponential_buckets(0.000_001, 4.0, 14));
        registry.register(
            "rule_eval_seconds",
            "Time to evaluate one change against the rules",
            rule_eval_seconds.clone(),
        );
        let alert_events = Counter::default();
        registry.register("alert_events", "Alert events recorded (transitions, acks, silences)", alert_events.clone());
        let rules_loaded = Gauge::default();
        registry.register("rules_loaded", "Rules currently evaluated", rules_loaded.clone());
        let rules_last_reload_success = Gauge::default();
        registry.register(
            "rules_last_reload_success",
            "1 when the last rules (re)load succeeded, 0 when it failed and the previous rules run",
            rules_last_reload_success.clone(),
        );
        let rules_reloads = Counter::default();
        registry.register("rules_reloads", "Rules directory reload attempts", rules_reloads.clone());
        let rules_reload_failures = Counter::default();
        registry.register(
            "rules_reload_failures",
            "Rules directory reloads refused (errors)",
            rules_reload_failures.clone(),
        );
        let config_reloads = Counter::default();
        registry.register("config_reloads", "Config file reloads (SIGHUP)", config_reloads.clone());
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Config file reloads refused (the file did not parse or validate; the running config stays)",
            config_reload_failures.clone(),
        );
        let config_last_reload_success = Gauge::default();
        config_last_reload_success.set(1);
        registry.register(
            "config_last_reload_success",
            "1 when the last config file reload (or the start) succeeded, 0 when it was refused",
            config_last_reload_success.clone(),
        );
        let retention_passes = Counter::default();
        registry.register(
            "retention_passes",
            "Retention passes run (alerts, silences, resource rollups)",
            retention_passes.clone(),
        );
        let limit_hits = Family::<[(&'static str, &'static str); 1], Counter>::default();
        // Every [limits] key from zero: rate() and alerts see a series before the first hit.
        for l in crate::limits::Limit::ALL {
            let _ = limit_hits.get_or_create(&[("limit", l.key())]);
        }
        registry.register(
            "limit_hits",
            "Times a configured limit was hit (label limit: its config key); see README, server limits",
            limit_hits.clone(),
        );
        let subscribers = Gauge::default();
        registry.register("alert_subscribers", "Alerts.Subscribe streams open", subscribers.clone());
        let notifications_delivered = Family::<NotifierLabels, Counter>::default();
        registry.register(
            "notifications_delivered",
            "Notifications delivered (2xx) from the outbox",
            notifications_delivered.clone(),
        );
        let notification_failures = Family::<NotifierLabels, Counter>::default();
        registry.register(
            "notification_failures",
            "Failed notification attempts (retried with backoff)",
            notification_failures.clone(),
        );
        let notifications_expired = Family::<NotifierLabels, Counter>::default();
        registry.register(
            "notifications_expired",
            "Notifications dropped undelivered after the notifier's max_age",
            notifications_expired.clone(),
        );
        let notifications_pending = Family::<NotifierLabels, Gauge>::default();
        registry.register(
            "notifications_pending",
            "Notifications waiting in the outbox (including retries)",
            notifications_pending.clone(),
        );
        let notifier_circuit_open = Family::<NotifierLabels, Gauge>::default();
        registry.register(
            "notifier_circuit_open",
            "1 while the target's circuit breaker is open or half-open (deliveries paused between probes)",
            notifier_circuit_open.clone(),
        );
        Arc::new(Self {
            registry: root,
            notifier_circuit_open,
            rpc,
            state_gauges,
            subscribers,
            retention_passes,
            limit_hits,
            notifications_delivered,
            notification_failures,
            notifications_expired,
            notifications_pending,
            rule_evaluations,
            rule_evaluation_errors,
            rule_queue_overflows,
            rule_eval_seconds,
            alert_events,
            rules_loaded,
            rules_last_reload_success,
            rules_reloads,
            rules_reload_failures,
            config_reloads,
            config_reload_failures,
            config_last_reload_success,
            writer_attempts: Default::default(),
            connected_agents,
            snapshots_ingested,
            snapshots_duplicate,
            snapshots_rejected,
            snapshots_unspooled,
            agent_spool_dropped,
            listings_incomplete,
            connections_refused,
            ingest_ack_seconds,
            store_commit_seconds,
            store_batch_items,
            store_errors,
            store_commit_failures,
            store_commits_failing,
            store_quarantined,
            writer_queue_depth,
            writer_queue_full_waits,
            store_problem: parking_lot::Mutex::new(None),
        })
    }

    /// A store transaction failed with an error of `kind`.
    pub fn store_commit_failed(&self, kind: driftwatch_store::FailureKind) {
        self.store_errors.inc();
        self.writer_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store_commit_failures.get_or_create(&[("kind", kind.label())]).inc();
    }

    /// Commits fail for `reason` (the store's words, without the database's path).
    pub fn store_failing(&self, reason: String) {
        self.store_commits_failing.set(1);
        *self.store_problem.lock() = Some(reason);
    }

    /// A commit succeeded.
    pub fn store_committing(&self) {
        self.writer_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.store_commits_failing.get() != 0 {
            self.store_commits_failing.set(0);
            *self.store_problem.lock() = None;
        }
    }

    /// Why the server is not healthy (`/healthz`), or None.
    pub fn unhealthy(&self) -> Option<String> {
        self.store_problem.lock().as_ref().map(|r| format!("store: commits failing: {r}"))
    }

    /// Count `n` hits of the limit whose config key is `key`.
    pub fn limit_hit(&self, key: &'static str, n: u64) {
        self.limit_hits.get_or_create(&[("limit", key)]).inc_by(n);
    }

    /// Hits of the limit whose config key is `key` so far.
    pub fn limit_hits(&self, key: &'static str) -> u64 {
        self.limit_hits.get_or_create(&[("limit", key)]).get()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl driftwatch_telemetry::Endpoint for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
    fn health(&self) -> Result<String, String> {
        self.unhealthy().map_or(Ok("ok".into()), Err)
    }
}

/// Serve `/metrics` (behind `token` when set) and `/healthz` (open: probes) until
/// `shutdown` resolves (`driftwatch_telemetry::serve`). `/healthz` is 503 with the
/// reason while store commits fail (nothing is acknowledged then), 200 again after
/// the next commit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    driftwatch_telemetry::serve(listener, metrics, token, shutdown).await
}

pub fn local_addr(l: &tokio::net::TcpListener) -> SocketAddr {
    l.local_addr().expect("bound listener has an address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_says_why_commits_fail_until_one_succeeds() {
        let m = Metrics::new();
        assert_eq!(m.unhealthy(), None);
        m.store_commit_failed(driftwatch_store::FailureKind::DiskFull);
        m.store_failing("database or disk is full".into());
        assert_eq!(m.unhealthy().as_deref(), Some("store: commits failing: database or disk is full"));
        assert_eq!(m.store_commits_failing.get(), 1);
        let text = m.render();
        assert!(text.contains("driftwatch_store_commit_failures_total{kind=\"disk_full\"} 1"), "{text}");
        assert!(text.contains("driftwatch_store_commit_failures_total{kind=\"data\"} 0"), "{text}");
        m.store_committing();
        assert_eq!(m.unhealthy(), None);
        assert_eq!(m.store_commits_failing.get(), 0);
    }
}
