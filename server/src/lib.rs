//! driftwatch server: holds every agent's stream, keeps the fleet's current state
//! in memory with SQLite as its durable copy, and answers queries over gRPC.
//!
//! Entry point: [`start`] (used by `main.rs`, `driftwatch up` and the tests).

pub mod access;
pub mod alert_book;
pub mod alerts;
pub mod audit;
pub mod baselines;
pub mod changes;
pub mod config;
pub mod engine;
pub mod enroll;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod hub;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod operators;
pub mod principal;
pub mod reload;
pub mod retention;
pub mod rpc_metrics;
pub mod rule_input;
pub mod rules_service;
pub mod selector;
pub mod silences;
pub mod spool_report;
pub mod state;
pub mod state_gauges;
pub mod tls;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1::{
    self, access_server::AccessServer, agent_gateway_server::AgentGatewayServer, alerts_server::AlertsServer,
    audit_server::AuditServer, baselines_server::BaselinesServer, changes_server::ChangesServer,
    enrollment_server::EnrollmentServer, fleet_server::FleetServer, rules_server::RulesServer,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

pub use config::{ServerConfig, ServerFile, StorageConfig};
pub use error::{Result, ServerError};

/// How long shutdown waits for streams and the store writer to drain.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A started server. Dropping it does not stop it: call [`RunningServer::stop`].
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    /// The rules loaded from `--rules`, checked at start (reloads replace them in
    /// the engine; `Rules.ListRules` shows the running set).
    pub rules: Option<Arc<driftwatch_rules::RuleSet>>,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<state::FleetState>,
    pub metrics: Arc<metrics::Metrics>,
    /// The rule engine (tests use `flush` to wait for evaluation).
    pub engine: engine::EngineHandle,
    /// Every alert and silence as the engine last left them.
    pub alerts: Arc<alert_book::AlertBook>,
    /// Configured notifiers (status for tests and the Alerts API).
    pub notifiers: Arc<notify::Notifiers>,
    /// The audit log (who changed what); `Audit.ListEvents` reads it. It holds a store
    /// writer sender: a clone kept past `stop` holds the writer's drain up to its deadline.
    pub audit: audit::AuditLog,
    /// Corrections and rollouts (tests send raw changes through its dispatcher).
    pub changes: Arc<changes::ChangesCore>,
    /// SIGHUP: the config file applied as far as it can be live.
    pub reloader: Arc<reload::Reloader>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Ask the server to stop (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The service manager's watchdog check: the store writer is not stalled.
    pub fn liveness(&self) -> impl FnMut() -> std::result::Result<(), String> + Send + 'static {
        reload::liveness(self.metrics.clone())
    }

    /// Wait until the server has stopped (after `shutdown`, or on a fatal error).
    pub async fn wait(self) -> Result<()> {
        // Our engine handle would keep the engine (and so the writer) running.
        // The reloader's rules handle holds one too.
        let Self { task, engine, audit, changes, reloader, .. } = self;
        drop((engine, audit, changes, reloader));
        match task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Unavailable(format!("server task failed: {e}"))),
        }
    }

    /// Stop and wait for the drain.
    pub async fn stop(self) -> Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Open storage, load the last known state, bind the listeners and start serving.
pub async fn start(config: ServerConfig) -> Result<RunningServer> {
    // The notifiers' HTTPS client takes the process default.
    driftwatch_pki::install_tls_provider();
    let db_path = config.sqlite_path();
    let (store, reader, loaded) = tokio::task::spawn_blocking(move || {
        let store = driftwatch_store::Store::open(&db_path)?;
        // A second connection for reads (history, events): WAL lets it read while the writer commits.
        let reader = driftwatch_store::Store::open(&db_path)?;
        let loaded = Loaded {
            hosts: store.load_hosts()?,
            files: store.load_files()?,
            resources: store.latest_resources()?,
            baselines: store.load_baselines()?,
            alerts: store.load_alerts()?,
            silences: store.load_silences()?,
            max_event_id: store.max_event_id()?,
            tokens: store.load_identities(enroll::records::TOKEN_KIND)?,
            identities: store.load_identities(enroll::records::HOST_KIND)?,
            operators: store.load_identities(operators::records::OPERATOR_KIND)?,
        };
        Ok::<_, ServerError>((store, reader, loaded))
    })
    .await
    .map_err(|e| ServerError::Unavailable(format!("store open task failed: {e}")))??;
    let reader = Arc::new(parking_lot::Mutex::new(reader));
    let Loaded {
        hosts,
        files,
        resources,
        baselines: baseline_records,
        alerts,
        silences,
        max_event_id,
        tokens: token_records,
        identities: identity_records,
        operators: operator_records,
    } = loaded;

    let state = state::FleetState::new();
    let (n_hosts, n_files) = (hosts.len(), files.len());
    let skipped = state.load(hosts, files, resources);
    tracing::info!(hosts = n_hosts, files = n_files, skipped, db = %config.sqlite_path().display(), "state loaded; every host offline until it reconnects");

    // Rules are checked before anything is served: a broken rules directory is a
    // configuration error listing every problem, as `driftwatch rules check` does.
    let rules = match config.rules.clone() {
        None => None,
        Some(dir) => {
            let set = tokio::task::spawn_blocking(move || driftwatch_rules::RuleSet::load_dir(&dir))
                .await
                .map_err(|e| ServerError::Unavailable(format!("rules task failed: {e}")))?
                .map_err(|errs| ServerError::Config(errs.iter().map(ToString::to_string).collect()))?;
            tracing::info!(rules = set.rules().len(), dir = %config.rules.as_ref().map(|d| d.display().to_string()).unwrap_or_default(), "rules loaded");
            Some(Arc::new(set))
        }
    };
    let (baseline_set, skipped_baselines) = baselines::BaselineSet::load(baseline_records);
    if skipped_baselines > 0 {
        tracing::warn!(skipped = skipped_baselines, "some stored baseline versions do not decode");
    }
    let baseline_set = baselines::SharedBaselines::new(baseline_set);

    let metrics = metrics::Metrics::new();
    let (writer_tx, writer_thread) = writer::spawn(store, state.clone(), metrics.clone(), config.max_batch);
    let audit = audit::AuditLog::new(writer_tx.clone());
    tracing::info!(alerts = alerts.len(), silences = silences.len(), last_event = max_event_id, "alert state loaded");
    let hub = hub::EventHub::with_capacity(max_event_id, config.subscriber_ring.max(16));
    let notifiers = notify::Notifiers::new(
        config.notifiers.clone(),
        notify::links::Links::new(config.external_url.clone()),
        metrics.clone(),
    )?;
    let book = Arc::new(alert_book::AlertBook::new(
        alerts.iter().filter_map(|r| match v1::Alert::decode(r.payload.as_slice()) {
            Ok(a) => Some(alert_book::Tracked::restored(a)),
            Err(e) => {
                tracing::warn!(fingerprint = %r.fingerprint, error = %e, "stored alert does not decode; skipped");
                None
            }
        }),
        silences.iter().filter_map(|s| {
            match v1::Silence::decode(s.payload.as_slice())
                .map_err(|e| e.to_string())
                .and_then(silences::ActiveSilence::new)
            {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(silence = %s.id, error = %e, "stored silence does not load; skipped");
                    None
                }
            }
        }),
    ));
    let (engine, engine_thread) = engine::spawn(engine::EngineInit {
        rules: rules.clone(),
        state: state.clone(),
        baselines: baseline_set.current(),
        book: book.clone(),
        writer: writer_tx.clone(),
        metrics: metrics.clone(),
        reader: Some(reader.clone()),
        max_event_id,
        retention: config.retention,
        hub: hub.clone(),
        router: (!notifiers.is_empty()).then(|| notifiers.clone() as Arc<dyn engine::EventRouter>),
    });
    let rules_handle = rules_service::RulesHandle::new(
        config.rules.clone(),
        rules.clone(),
        engine.clone(),
        metrics.clone(),
        audit.clone(),
    );

    let tls = match config.tls.clone() {
        Some(t) => Some((
            tokio::task::spawn_blocking(move || tls::TlsMaterial::load(t.source))
                .await
                .map_err(|e| ServerError::Unavailable(format!("TLS setup task failed: {e}")))??,
            config.tls.clone().expect("some"),
        )),
        None => None,
    };
    let deny = tls::DenyList::default();
    let identities = enroll::Identities::load(
        token_records,
        identity_records,
        deny.clone(),
        writer_tx.clone(),
        tls.as_ref().and_then(|(m, _)| m.built_in()),
        config.tls.as_ref().map_or(driftwatch_pki::DEFAULT_CERT_LIFETIME, |t| t.cert_lifetime),
    );
    let operators =
        operators::Operators::load(operator_records, writer_tx.clone(), tls.as_ref().and_then(|(m, _)| m.built_in()));
    if tls.is_some()
        && let Some(path) = operators.bootstrap_admin(&config.data_dir()).await?
    {
        tracing::warn!(file = %path.display(), "first start: an admin token was written (readable by this user only); use it to create operators' tokens (driftwatch token create), then revoke it");
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let grpc_addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(metrics::local_addr);
    if config.insecure {
        tracing::warn!(%grpc_addr, "INSECURE: plaintext gRPC without authentication (loopback development only)");
    }

    let shutdown = CancellationToken::new();
    let notifier_tasks = notifiers.start(writer_tx.clone(), reader.clone(), book.clone(), shutdown.clone());
    let audit_retention = audit.spawn_retention(config.audit_retention, config.retention.interval, shutdown.clone());
    let audit_grpc = audit::AuditService { reader: reader.clone() };
    let dispatcher = changes::Dispatcher::new(state.clone());
    let gateway = gateway::Gateway {
        changes: dispatcher.clone(),
        state: state.clone(),
        writer: writer_tx,
        metrics: metrics.clone(),
        heartbeat_interval: config.heartbeat_interval,
        limits: config.limits,
        shutdown: shutdown.clone(),
        engine: engine.clone(),
        identities: identities.clone(),
        tls: tls.as_ref().map(|(m, _)| m.clone()),
    };
    let fleet = fleet::FleetService {
        state: state.clone(),
        baselines: baseline_set.clone(),
        reader: reader.clone(),
        identities: identities.clone(),
        writer: gateway.writer.clone(),
        engine: engine.clone(),
        limits: config.limits,
    };
    let enrollment = enroll::service::EnrollmentService { identities: identities.clone() };
    let access_grpc = operators::service::AccessService { operators: operators.clone() };
    let baselines = baselines::BaselinesService {
        state: state.clone(),
        baselines: baseline_set,
        writer: gateway.writer.clone(),
        engine: engine.clone(),
        audit: audit.clone(),
    };
    // One count of subscriber streams per principal, Subscribe and WatchRollout alike.
    let subscribers = limits::Subscribers::new(config.limits, metrics.clone());
    let alerts_service = alerts::AlertsService {
        engine: engine.clone(),
        book: book.clone(),
        state: state.clone(),
        reader: reader.clone(),
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        stall: config.subscriber_stall,
        notifiers: Some({
            let n = notifiers.clone();
            Arc::new(move || n.status())
        }),
        audit: audit.clone(),
        limits: config.limits,
        subscribers: subscribers.clone(),
    };
    let changes_core = Arc::new(changes::ChangesCore {
        state: state.clone(),
        baselines_service: baselines.clone(),
        rules: rules_handle.clone(),
        engine: engine.clone(),
        book: book.clone(),
        writer: gateway.writer.clone(),
        dispatcher,
        audit: audit.clone(),
        reader: reader.clone(),
        shutdown: shutdown.clone(),
        rollouts: Default::default(),
        limits: config.limits,
    });
    // Rollouts under way when the server stopped go on where they were.
    let unfinished = changes_core
        .load_rollouts(
            vec![v1::RolloutState::Pending as i32, v1::RolloutState::Running as i32, v1::RolloutState::Paused as i32],
            10_000,
        )
        .await?;
    changes_core.resume_rollouts(unfinished).await;
    metrics.state_gauges.watch(&state, &book, &changes_core, config.metrics_per_host);
    let remediation = tokio::spawn(changes::remediate::run(changes_core.clone(), hub.clone(), config.remediation));
    let changes_grpc = changes::ChangesService { core: changes_core.clone(), subscribers };
    let host_expiry = retention::HostExpiry {
        state: state.clone(),
        writer: gateway.writer.clone(),
        engine: engine.clone(),
        metrics: metrics.clone(),
        max_offline: config.retention.offline_hosts,
    }
    .spawn(config.retention.interval, shutdown.clone());
    let rules_watcher = rules_handle.watch(shutdown.clone());
    let reloader = Arc::new(reload::Reloader::new(config.clone(), rules_handle.clone(), metrics.clone()));
    let rules_grpc = rules_service::RulesService { rules: rules_handle, state: state.clone() };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentGatewayServer<gateway::Gateway>>().await;
    health_reporter.set_serving::<FleetServer<fleet::FleetService>>().await;
    health_reporter.set_serving::<BaselinesServer<baselines::BaselinesService>>().await;
    health_reporter.set_serving::<AlertsServer<alerts::AlertsService>>().await;
    health_reporter.set_serving::<RulesServer<rules_service::RulesService>>().await;
    health_reporter.set_serving::<AuditServer<audit::AuditService>>().await;
    health_reporter.set_serving::<ChangesServer<changes::ChangesService>>().await;
    health_reporter.set_serving::<EnrollmentServer<enroll::service::EnrollmentService>>().await;
    health_reporter.set_serving::<AccessServer<operators::service::AccessService>>().await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(driftwatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| ServerError::Unavailable(format!("reflection: {e}")))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| ServerError::Unavailable(format!("reflection: {e}")))?;

    let access = access::AccessLayer {
        mode: if tls.is_some() { access::Mode::Tls } else { access::Mode::Insecure },
        policy: config.access,
        deny: deny.clone(),
        creds: operators.clone(),
    };
    // Inside access: a refused call takes no place in the operator budget.
    let transport_limits = limits::transport::TransportLimitsLayer::new(config.limits, metrics.clone());
    // Outermost: refusals by access and limits are counted with the rest.
    let rpc_metrics = rpc_metrics::RpcMetricsLayer(metrics.rpc.clone());
    let router = tonic::transport::Server::builder()
        .layer(rpc_metrics)
        .layer(access)
        .layer(transport_limits)
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.keepalive.interval))
        .http2_keepalive_timeout(Some(config.keepalive.timeout))
        .add_service(AgentGatewayServer::new(gateway).max_decoding_message_size(config.limits.max_message_bytes))
        .add_service(FleetServer::new(fleet))
        .add_service(BaselinesServer::new(baselines))
        .add_service(AlertsServer::new(alerts_service))
        .add_service(RulesServer::new(rules_grpc))
        .add_service(AuditServer::new(audit_grpc))
        .add_service(ChangesServer::new(changes_grpc))
        .add_service(EnrollmentServer::new(enrollment))
        .add_service(AccessServer::new(access_grpc))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let metrics_task = metrics_listener.map(|l| {
        let token = shutdown.clone();
        let m = metrics.clone();
        let scrape_token = config.metrics_token.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, m, scrape_token, async move { token.cancelled().await }).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        })
    });

    let tls_reload = tls.as_ref().map(|(m, c)| m.clone().spawn_reload(c.reload_interval, shutdown.clone()));
    let incoming = match &tls {
        Some((material, _)) => {
            tracing::info!(%grpc_addr, "serving gRPC over TLS");
            tls::listener::serve_tls(listener, material.clone(), shutdown.clone())
        }
        None => tls::listener::serve_plain(listener, shutdown.clone()),
    };
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        // The router future owns every service (and with them every writer sender);
        // it must be gone, not just finished, before the writer can drain.
        let result = {
            let serve = router.serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned());
            tokio::pin!(serve);
            // Serve until told to stop; then give streams and the writer a deadline.
            tokio::select! {
                r = &mut serve => r,
                _ = token.cancelled() => match tokio::time::timeout(DRAIN_DEADLINE, &mut serve).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("streams did not drain within the deadline; closing");
                        Ok(())
                    }
                },
            }
        };
        health_reporter.set_not_serving::<FleetServer<fleet::FleetService>>().await;
        if let Some(t) = metrics_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        if let Some(t) = tls_reload {
            let _ = t.await;
        }
        // Deliveries stop first: they write through the writer, which drains after the engine.
        notifier_tasks.join(DRAIN_DEADLINE).await;
        // The router (and every engine handle it held) is gone; with the rules watcher
        // stopped, the engine drains its queue and exits, then the writer flushes and exits.
        if let Some(w) = rules_watcher {
            let _ = w.await;
        }
        let _ = audit_retention.await;
        let _ = host_expiry.await;
        // Remediation and rollout tasks stop on the shutdown signal (a rollout saves
        // where it is and resumes at the next start).
        let _ = tokio::time::timeout(DRAIN_DEADLINE, remediation).await;
        let joined = tokio::task::spawn_blocking(move || engine_thread.join());
        if tokio::time::timeout(DRAIN_DEADLINE, joined).await.is_err() {
            tracing::warn!("rule engine did not finish within the deadline");
        }
        let joined = tokio::task::spawn_blocking(move || writer_thread.join());
        if tokio::time::timeout(DRAIN_DEADLINE, joined).await.is_err() {
            tracing::warn!("store writer did not finish within the deadline");
        }
        tracing::info!("server stopped");
        result.map_err(ServerError::from)
    });

    Ok(RunningServer {
        grpc_addr,
        rules,
        metrics_addr,
        state,
        metrics,
        engine,
        alerts: book,
        notifiers,
        audit,
        changes: changes_core,
        reloader,
        shutdown,
        task,
    })
}

/// What the server reads back from the store at start.
struct Loaded {
    hosts: Vec<driftwatch_store::HostRecord>,
    files: Vec<driftwatch_store::FileRecord>,
    resources: Vec<driftwatch_store::ResourceRecord>,
    baselines: Vec<driftwatch_store::BaselineRecord>,
    alerts: Vec<driftwatch_store::AlertRecord>,
    silences: Vec<driftwatch_store::SilenceRecord>,
    max_event_id: u64,
    tokens: Vec<driftwatch_store::IdentityRecord>,
    identities: Vec<driftwatch_store::IdentityRecord>,
    operators: Vec<driftwatch_store::IdentityRecord>,
}
