//! The agent's tasks, wired with channels:
//! - producer ([`producer`]): turns watcher batches and resource samples into
//!   snapshots and places them ([`append`]) in the spool (blocking I/O on the blocking
//!   pool), or in memory ([`unspooled`]) when the spool cannot take them; full
//!   listings only while connected;
//! - stream ([`stream`]): keeps one gRPC stream to the server (with connection
//!   backoff), resends the spool's unacknowledged snapshots, sends new ones as they
//!   land, and heartbeats; [`hello`] opens a stream, [`acks`] reads the server's side
//!   and drops what it acknowledges from the spool;
//! - applier ([`changes`]): a dedicated thread that applies the changes the server
//!   sends, one at a time in arrival order (`apply`); its results wait in a small
//!   queue until a stream can send them (also after a reconnect).
//!
//! Over TLS the stream task also enrolls the agent when it has no certificate yet
//! (`identity`), and renews the certificate on the stream ([`renew`]).
//!
//! One `CancellationToken` stops them all.

mod ack_log;
mod acks;
mod append;
mod changes;
mod hello;
mod metrics;
mod producer;
pub mod reload;
mod renew;
mod stream;
mod unspooled;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use driftwatch_formats::Masker;
use driftwatch_proto::v1;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::identity::{self, HostIdentity, IdentityFiles, Plan};
use crate::resources::ResourceSampler;
use crate::spool::Spool;
use crate::watch::{FileWatcher, WatchConfig, WatchCounts};
use append::SpoolHealth;
use changes::ResultQueue;
use metrics::AgentMetrics;
use unspooled::Unspooled;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use ack_log::ACK_LOG_ENV;

/// Live counters, for logs and tests.
#[derive(Debug, Default)]
pub struct AgentStatus {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub acked_seq: AtomicU64,
    pub last_seq: AtomicU64,
    pub pending: AtomicU64,
    pub dropped: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Changes from the server handled (any outcome).
    pub changes_handled: AtomicU64,
    /// Certificates renewed on the stream and stored.
    pub certificates_renewed: AtomicU64,
    /// Full listings scanned (every start, every one the spool or the server asked for).
    pub full_listings: AtomicU64,
    /// The reconnect backoff's current base delay, in milliseconds.
    pub backoff_ms: AtomicU64,
    /// Snapshots sent from memory because the spool could not take them.
    pub unspooled: AtomicU64,
}

/// What the tasks share.
struct Shared {
    config: AgentConfig,
    spool: Mutex<Spool>,
    /// Something new is in the spool.
    spooled: Notify,
    /// The producer should send a full snapshot next.
    want_full: Notify,
    /// Snapshots the spool could not take, until acknowledged.
    unspooled: Mutex<Unspooled>,
    /// Whether the spool can be written (and when to try again).
    health: Mutex<SpoolHealth>,
    /// The spool's health changed: tell the server now.
    health_changed: Notify,
    /// Connected, past the Welcome.
    link: watch::Sender<bool>,
    /// The highest seq the server has acknowledged (room in the spool may follow).
    acked: watch::Sender<u64>,
    status: Arc<AgentStatus>,
    key_id: String,
    /// To the applier thread; taken (closed) at shutdown.
    changes: Mutex<Option<std::sync::mpsc::Sender<v1::ApplyChange>>>,
    results: Arc<ResultQueue>,
    /// Over TLS: where the key and certificate live, and the ones in use (`None` until
    /// the agent has enrolled; replaced by a renewal, used from the next connect).
    identity_files: IdentityFiles,
    identity: Mutex<Option<HostIdentity>>,
    /// Test hook ([`ack_log::ACK_LOG_ENV`]): a ledger of every acknowledged snapshot.
    ack_log: Option<ack_log::AckLog>,
    /// The agent's own metrics (served with `metrics_listen`).
    metrics: Arc<AgentMetrics>,
    /// Files tracked and watches held, as the watcher last published them.
    watch_counts: Arc<WatchCounts>,
}

/// A started agent.
pub struct RunningAgent {
    pub status: Arc<AgentStatus>,
    /// Where `/metrics` and `/healthz` are served (`metrics_listen`, its port bound).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// SIGHUP: the config file applied as far as it can be on the open stream.
    pub reloader: Arc<reload::Reloader>,
    watch_counts: Arc<WatchCounts>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningAgent {
    pub fn shutdown(&self) {
        self.token.cancel();
    }
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }
    /// Once the watcher has armed its first watches: from then on a change is seen
    /// (and spooled, connected or not).
    pub async fn watching(&self) {
        let _ = self.watch_counts.armed.subscribe().wait_for(|armed| *armed).await;
    }

    /// Files tracked and inotify watches held, as the watcher last published them.
    pub fn watch_counts(&self) -> (u64, u64) {
        (self.watch_counts.files.load(Ordering::Relaxed), self.watch_counts.watches.load(Ordering::Relaxed))
    }

    /// The service manager's watchdog check: the watcher thread still runs (the stream
    /// and the producer run on the runtime that runs the check itself).
    pub fn liveness(&self) -> impl FnMut() -> std::result::Result<(), String> + Send + 'static {
        let (counts, token) = (self.watch_counts.clone(), self.token.clone());
        move || {
            if counts.stopped.load(Ordering::Relaxed) && !token.is_cancelled() {
                Err("the file watcher thread stopped".into())
            } else {
                Ok(())
            }
        }
    }

    pub async fn wait(self) -> Result<()> {
        // The reloader holds the watcher, whose drop stops its thread.
        drop(self.reloader);
        self.task.await.map_err(|e| AgentError::Watch(format!("agent task failed: {e}")))?
    }
    pub async fn stop(self) -> Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Load the fleet key from the configured file, or create a host-local one in
/// the state dir (fingerprints then do not compare across hosts: say so).
pub fn load_fleet_key(config: &AgentConfig) -> Result<Vec<u8>> {
    let path = match &config.fleet_key_file {
        Some(p) => p.clone(),
        None => {
            let p = config.state_dir.join("fleet.key");
            if !p.exists() {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(&config.state_dir).map_err(|e| AgentError::io(&config.state_dir, e))?;
                let key = hex::encode(rand::random::<[u8; 32]>());
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .map_err(|e| AgentError::io(&p, e))?;
                f.write_all(key.as_bytes()).map_err(|e| AgentError::io(&p, e))?;
                tracing::warn!(path = %p.display(), "no fleet_key_file configured: generated a host-local key; masked values will not compare equal across hosts");
            }
            p
        }
    };
    let meta = std::fs::metadata(&path).map_err(|e| AgentError::io(&path, e))?;
    check_key_file_mode(&path, &meta)?;
    let key = std::fs::read(&path).map_err(|e| AgentError::io(&path, e))?;
    let trimmed = key.trim_ascii();
    if trimmed.len() < 16 {
        return Err(AgentError::Config(format!("{}: the fleet key must be at least 16 bytes", path.display())));
    }
    if trimmed.len() < 32 {
        tracing::warn!(path = %path.display(), bytes = trimmed.len(), "the fleet key is shorter than 32 bytes; use 32 random bytes or more (e.g. openssl rand -hex 32)");
    }
    Ok(trimmed.to_vec())
}

/// Whoever reads the fleet key can guess masked values offline: refuse a key file
/// anyone may read, or one readable by a group other than the agent's own.
fn check_key_file_mode(path: &std::path::Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    // SAFETY: getegid has no preconditions.
    let own_group = unsafe { libc::getegid() };
    key_file_mode_problem(mode, meta.gid(), own_group)
        .map_or(Ok(()), |why| Err(AgentError::Config(format!("{}: {why}", path.display()))))
}

/// Why a key file with these permission bits and group may not be used (pure: tested below).
fn key_file_mode_problem(mode: u32, file_group: u32, own_group: u32) -> Option<String> {
    if mode & 0o004 != 0 {
        return Some(format!(
            "the fleet key file is readable by everyone (mode {mode:03o}); chmod 600 it (or 640 for the agent's own group)"
        ));
    }
    if mode & 0o040 != 0 && file_group != own_group {
        return Some(format!(
            "the fleet key file is readable by group {file_group}, not the agent's own ({own_group}); chmod 600 it"
        ));
    }
    None
}

/// Over TLS: the stored identity when it can be used; `None` when the agent has to
/// enroll first (the stream task does, before it connects); an error saying what to do
/// when it can do neither.
fn identity_at_start(config: &AgentConfig, files: &IdentityFiles) -> Result<Option<HostIdentity>> {
    if !config.tls {
        return Ok(None);
    }
    files.prepare()?;
    let (key, cert) = files.read()?;
    let (stored, held) = identity::examine(key.as_deref(), cert.as_deref());
    let token = config.enroll_token_file.as_deref();
    match identity::plan(identity::now_unix(), &stored, identity::have_token(token)) {
        Plan::UseStored => {
            let held = held.ok_or_else(|| AgentError::Identity("no certificate to use".into()))?;
            if held.host_id != config.host_id {
                tracing::info!(host = %held.host_id, configured = %config.host_id, "using the host id of the certificate");
            }
            tracing::info!(host = %held.host_id, not_after = %identity::time(held.info.not_after), "certificate loaded");
            Ok(Some(held))
        }
        Plan::Enroll(why) => {
            tracing::info!(reason = %why, "enrolling with the token file before connecting");
            Ok(None)
        }
        Plan::Fail(msg) => Err(AgentError::Identity(format!(
            "{} (identity in {})",
            identity::fail_text(&msg, token),
            files.dir().display()
        ))),
    }
}

/// Start the agent's tasks. Fails fast on a bad state dir or watch setup, and over TLS
/// on an agent that has no usable certificate and no token to enroll with.
pub async fn start(config: AgentConfig) -> Result<RunningAgent> {
    // Its TLS clients (enrollment, the stream) take the process default.
    driftwatch_pki::install_tls_provider();
    let token = CancellationToken::new();
    let cfg = config.clone();
    let identity_files = IdentityFiles::new(&config.state_dir);
    let files = identity_files.clone();
    let (spool, key, held) = tokio::task::spawn_blocking(move || {
        let held = identity_at_start(&cfg, &files)?;
        let key = load_fleet_key(&cfg)?;
        let mut spool = Spool::open(&cfg.state_dir.join("spool"), cfg.spool_max_bytes)?;
        // A full disk is the run loop's to handle (`append::on_failure`).
        spool.keep_on_full_disk();
        Ok::<_, AgentError>((spool, key, held))
    })
    .await
    .map_err(|e| AgentError::Watch(format!("start-up task failed: {e}")))??;
    let masker = Arc::new(Masker::new(&key));
    // Before the watcher starts: this also removes temp files a crash left behind.
    let (cfg, m) = (config.clone(), masker.clone());
    let applier = tokio::task::spawn_blocking(move || Applier::open(&cfg, m))
        .await
        .map_err(|e| AgentError::Watch(format!("start-up task failed: {e}")))??;
    let status = Arc::new(AgentStatus::default());
    status.acked_seq.store(spool.acked(), Ordering::Relaxed);
    status.last_seq.store(spool.last_seq(), Ordering::Relaxed);
    status.pending.store(spool.pending(), Ordering::Relaxed);
    status.dropped.store(spool.dropped(), Ordering::Relaxed);
    tracing::info!(
        host = %held.as_ref().map_or(config.host_id.as_str(), |h| h.host_id.as_str()),
        server = %config.server,
        spool_id = %spool.spool_id(),
        pending = spool.pending(),
        acked = spool.acked(),
        "agent starting"
    );
    let (watcher, changes) = FileWatcher::start(
        WatchConfig {
            patterns: config.watch.clone(),
            debounce: config.debounce,
            rescan_interval: config.rescan_interval,
            limits: config.limits.clone(),
            host_root: config.host_root.clone(),
        },
        masker.clone(),
    )?;
    let sampler = if config.resource_interval.is_zero() {
        None
    } else {
        Some(ResourceSampler::new(config.process_groups.clone())?.with_host_root(config.host_root.clone()))
    };
    // Bound before anything runs, so a taken port fails the start.
    let metrics_listener = match config.metrics_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::Config(format!("metrics_listen {addr}: {e}")))?,
        ),
    };
    let metrics = Arc::new(AgentMetrics::new(held.as_ref().map_or(config.host_id.as_str(), |h| h.host_id.as_str())));
    let results = Arc::new(ResultQueue::default());
    let (change_tx, change_rx) = std::sync::mpsc::channel();
    let reconfigure = reload::reconfigure_slot();
    let applier_thread = changes::spawn_applier(
        applier,
        change_rx,
        results.clone(),
        (status.clone(), metrics.clone()),
        token.clone(),
        reconfigure.clone(),
    )?;
    let running_config = config.clone();
    let shared = Arc::new(Shared {
        key_id: masker.key_id(),
        config,
        spool: Mutex::new(spool),
        spooled: Notify::new(),
        want_full: Notify::new(),
        unspooled: Mutex::new(Unspooled::default()),
        health: Mutex::new(SpoolHealth::default()),
        health_changed: Notify::new(),
        link: watch::Sender::new(false),
        acked: watch::Sender::new(0),
        status: status.clone(),
        changes: Mutex::new(Some(change_tx)),
        results,
        identity_files,
        identity: Mutex::new(held),
        ack_log: ack_log::AckLog::from_env(),
        metrics,
        watch_counts: watcher.counts(),
    });
    let metrics_addr = match metrics_listener {
        None => None,
        Some(l) => {
            let addr = l.local_addr().map_err(|e| AgentError::Config(format!("metrics_listen: {e}")))?;
            tracing::info!(%addr, token = shared.config.metrics_token.is_some(), "serving /metrics and /healthz");
            let (served, t, scrape_token) =
                (Arc::new(metrics::Served(shared.clone())), token.clone(), shared.config.metrics_token.clone());
            tokio::spawn(async move {
                let stop = async move { t.cancelled().await };
                if let Err(e) = driftwatch_telemetry::serve(l, served, scrape_token, stop).await {
                    tracing::error!(error = %e, "metrics endpoint failed");
                }
            });
            Some(addr)
        }
    };
    let watcher = Arc::new(watcher);
    let watch_counts = watcher.counts();
    let reloader = Arc::new(reload::Reloader {
        running: tokio::sync::Mutex::new(running_config),
        watcher: watcher.clone(),
        shared: shared.clone(),
        applier: reconfigure,
    });
    let t = token.clone();
    let task = tokio::spawn(async move {
        let producer = tokio::spawn(producer::produce(shared.clone(), watcher, changes, sampler, t.clone()));
        let streamer = tokio::spawn(stream::stream_loop(shared.clone(), t.clone()));
        let (p, s) = tokio::join!(producer, streamer);
        changes::drain_applier(&shared, &applier_thread).await;
        let p = p.map_err(|e| AgentError::Watch(format!("producer task failed: {e}")))?;
        // A fatal stream error (an enrollment the server refused) is why we stopped.
        s.map_err(|e| AgentError::Watch(format!("stream task failed: {e}")))??;
        tracing::info!("agent stopped");
        p
    });
    Ok(RunningAgent { status, metrics_addr, reloader, watch_counts, token, task })
}

/// What the agent tells the server about its spool (Hello, Heartbeat).
struct SpoolReport {
    /// Unacknowledged snapshots, spooled or held in memory.
    pending: u64,
    dropped: u64,
    degraded: String,
    unspooled: u64,
}

impl Shared {
    fn set_connected(&self, up: bool) {
        self.status.connected.store(up, Ordering::Relaxed);
        if self.link.send_replace(up) != up {
            self.metrics.link(up);
        }
    }

    /// The server stored everything up to `seq` (the spool has recorded it already).
    fn acked_up_to(&self, seq: u64) {
        self.metrics.acked();
        self.unspooled.lock().ack(seq);
        self.acked.send_if_modified(|a| {
            let newer = seq > *a;
            *a = (*a).max(seq);
            newer
        });
    }

    fn spool_report(&self) -> SpoolReport {
        let (pending, dropped) = {
            let s = self.spool.lock();
            (s.pending(), s.dropped())
        };
        SpoolReport {
            pending: pending + self.unspooled.lock().len() as u64,
            dropped,
            degraded: self.health.lock().degraded().unwrap_or_default().to_string(),
            unspooled: self.status.unspooled.load(Ordering::Relaxed),
        }
    }

    /// A heartbeat saying how the spool is.
    fn heartbeat(&self) -> v1::Heartbeat {
        let r = self.spool_report();
        v1::Heartbeat {
            sent_at: now(),
            spool_pending: r.pending,
            dropped_snapshots: r.dropped,
            spool_degraded: r.degraded,
            unspooled_snapshots: r.unspooled,
        }
    }
}

/// The current time as a protobuf timestamp (`taken_at`, `sent_at`).
fn now() -> Option<driftwatch_proto::Timestamp> {
    Some(driftwatch_proto::timestamp(std::time::SystemTime::now()))
}

/// Run `f` on the spool off the async workers and publish the spool's counters;
/// wake the producer when the spool asks for a full snapshot.
async fn spool_call<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Spool) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut spool = s.spool.lock();
        let r = f(&mut spool);
        s.status.acked_seq.store(spool.acked(), Ordering::Relaxed);
        s.status.pending.store(spool.pending(), Ordering::Relaxed);
        // Reading back or an ack can find (and count) lost records too.
        s.status.dropped.store(spool.dropped(), Ordering::Relaxed);
        if spool.take_need_full() {
            s.want_full.notify_one();
        }
        r
    })
    .await
    .map_err(|e| AgentError::Watch(format!("spool task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::key_file_mode_problem;

    #[test]
    fn a_fleet_key_anyone_or_another_group_can_read_is_refused() {
        assert!(key_file_mode_problem(0o600, 0, 0).is_none());
        assert!(key_file_mode_problem(0o400, 5, 0).is_none());
        assert!(key_file_mode_problem(0o640, 7, 7).is_none(), "the agent's own group");
        assert!(key_file_mode_problem(0o644, 0, 0).unwrap().contains("everyone"));
        assert!(key_file_mode_problem(0o604, 0, 0).unwrap().contains("everyone"));
        assert!(key_file_mode_problem(0o640, 8, 7).unwrap().contains("group 8"));
    }
}
