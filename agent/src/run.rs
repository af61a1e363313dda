//! The agent's tasks, wired with channels:
//! - producer: turns watcher batches and resource samples into snapshots and
//!   appends them to the spool (blocking I/O on the blocking pool);
//! - stream: keeps one gRPC stream to the server (with connection backoff),
//!   resends the spool's unacknowledged snapshots, sends new ones as they land,
//!   heartbeats, and drops what the server acknowledges.
//!
//! - applier: a dedicated thread that applies the changes the server sends, one at a
//!   time in arrival order (`apply`); its results wait in a small queue until a
//!   stream can send them (also after a reconnect).
//!
//! One `CancellationToken` stops them all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftwatch_formats::Masker;
use driftwatch_proto::v1::{
    self, AgentMessage, ServerMessage, Snapshot, agent_gateway_client::AgentGatewayClient, agent_message,
    server_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::backoff::{Backoff, MIN_CONNECT_TIMEOUT};
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::resources::ResourceSampler;
use crate::spool::Spool;
use crate::watch::{ChangeBatch, FileWatcher, WatchConfig};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Unacknowledged snapshots sent per burst before looking at the spool again.
const SEND_BURST: usize = 64;
/// Change results waiting for a stream; past this the oldest is dropped.
const MAX_QUEUED_RESULTS: usize = 1024;
/// On shutdown, how long to wait for a change being applied (commands included).
const APPLY_DRAIN: Duration = Duration::from_secs(60);

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
}

/// Change results not sent yet. The applier thread pushes; only the stream task pops,
/// after the result went out, so a result produced while disconnected (or while a
/// stream breaks) goes out on the next connection.
#[derive(Debug, Default)]
struct ResultQueue {
    queue: Mutex<VecDeque<v1::ChangeResult>>,
    ready: Notify,
}

impl ResultQueue {
    fn push(&self, r: v1::ChangeResult) {
        let mut q = self.queue.lock().expect("result queue lock");
        if q.len() >= MAX_QUEUED_RESULTS
            && let Some(old) = q.pop_front()
        {
            tracing::warn!(change_id = %old.change_id, "too many unsent change results; dropped the oldest");
        }
        q.push_back(r);
        drop(q);
        self.ready.notify_one();
    }

    fn front(&self) -> Option<v1::ChangeResult> {
        self.queue.lock().expect("result queue lock").front().cloned()
    }

    fn pop_sent(&self, change_id: &str) {
        let mut q = self.queue.lock().expect("result queue lock");
        if q.front().is_some_and(|r| r.change_id == change_id) {
            q.pop_front();
        }
    }
}

struct Shared {
    config: AgentConfig,
    spool: Mutex<Spool>,
    /// Something new is in the spool.
    spooled: Notify,
    /// The producer should send a full snapshot next.
    want_full: Notify,
    status: Arc<AgentStatus>,
    key_id: String,
    /// To the applier thread; taken (closed) at shutdown.
    changes: Mutex<Option<std::sync::mpsc::Sender<v1::ApplyChange>>>,
    results: Arc<ResultQueue>,
}

/// A started agent.
pub struct RunningAgent {
    pub status: Arc<AgentStatus>,
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
    pub async fn wait(self) -> Result<()> {
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
    let key = std::fs::read(&path).map_err(|e| AgentError::io(&path, e))?;
    let trimmed = key.trim_ascii();
    if trimmed.len() < 16 {
        return Err(AgentError::Config(format!("{}: the fleet key must be at least 16 bytes", path.display())));
    }
    Ok(trimmed.to_vec())
}

/// Start the agent's tasks. Fails fast on a bad state dir or watch setup.
pub async fn start(config: AgentConfig) -> Result<RunningAgent> {
    let token = CancellationToken::new();
    let cfg = config.clone();
    let (spool, key) = tokio::task::spawn_blocking(move || {
        let key = load_fleet_key(&cfg)?;
        let spool = Spool::open(&cfg.state_dir.join("spool"), cfg.spool_max_bytes)?;
        Ok::<_, AgentError>((spool, key))
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
        host = %config.host_id,
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
        },
        masker.clone(),
    )?;
    let sampler = if config.resource_interval.is_zero() {
        None
    } else {
        Some(ResourceSampler::new(config.process_groups.clone())?)
    };
    let results = Arc::new(ResultQueue::default());
    let (change_tx, change_rx) = std::sync::mpsc::channel();
    let applier_thread = spawn_applier(applier, change_rx, results.clone(), status.clone(), token.clone())?;
    let shared = Arc::new(Shared {
        key_id: masker.key_id(),
        config,
        spool: Mutex::new(spool),
        spooled: Notify::new(),
        want_full: Notify::new(),
        status: status.clone(),
        changes: Mutex::new(Some(change_tx)),
        results,
    });
    let t = token.clone();
    let task = tokio::spawn(async move {
        let producer = tokio::spawn(produce(shared.clone(), Arc::new(watcher), changes, sampler, t.clone()));
        let streamer = tokio::spawn(stream_loop(shared.clone(), t.clone()));
        let (p, s) = tokio::join!(producer, streamer);
        // Let a change being applied finish (a write half done with its commands not
        // run would skip the rollback); changes still queued are not started.
        drop(shared.changes.lock().expect("changes lock").take());
        // Polled, not joined on the blocking pool: a runtime being dropped waits for its
        // blocking tasks, and a stuck command must not hold the process past the deadline.
        let drain_until = tokio::time::Instant::now() + APPLY_DRAIN;
        while !applier_thread.is_finished() {
            if tokio::time::Instant::now() >= drain_until {
                tracing::warn!("a change is still being applied; stopping without waiting for it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let p = p.map_err(|e| AgentError::Watch(format!("producer task failed: {e}")))?;
        s.map_err(|e| AgentError::Watch(format!("stream task failed: {e}")))?;
        tracing::info!("agent stopped");
        p
    });
    Ok(RunningAgent { status, token, task })
}

/// The applier's thread: changes one at a time, in arrival order, off the async workers.
fn spawn_applier(
    mut applier: Applier,
    changes: std::sync::mpsc::Receiver<v1::ApplyChange>,
    results: Arc<ResultQueue>,
    status: Arc<AgentStatus>,
    token: CancellationToken,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("driftwatch-apply".into())
        .spawn(move || {
            while let Ok(change) = changes.recv() {
                if token.is_cancelled() {
                    tracing::warn!(
                        change_id = %change.change_id,
                        path = %change.path,
                        "agent stopping: change not applied"
                    );
                    continue;
                }
                let result = applier.apply(&change);
                status.changes_handled.fetch_add(1, Ordering::Relaxed);
                results.push(result);
            }
        })
        .map_err(|e| AgentError::Apply(format!("cannot start the applier thread: {e}")))
}

/// Send every queued change result; each leaves the queue once handed to the stream.
async fn send_results(shared: &Arc<Shared>, tx: &mpsc::Sender<AgentMessage>) -> Result<()> {
    while let Some(r) = shared.results.front() {
        let id = r.change_id.clone();
        tx.send(AgentMessage { kind: Some(agent_message::Kind::ChangeResult(r)) })
            .await
            .map_err(|_| AgentError::Watch("stream closed while sending a change result".into()))?;
        shared.results.pop_sent(&id);
    }
    Ok(())
}

/// Append a snapshot to the spool off the async workers; wake the sender.
async fn spool_append(shared: &Arc<Shared>, mut snapshot: Snapshot) -> Result<u64> {
    let s = shared.clone();
    let seq = tokio::task::spawn_blocking(move || {
        let mut spool = s.spool.lock().expect("spool lock");
        let seq = spool.append(&mut snapshot)?;
        s.status.last_seq.store(seq, Ordering::Relaxed);
        s.status.pending.store(spool.pending(), Ordering::Relaxed);
        s.status.dropped.store(spool.dropped(), Ordering::Relaxed);
        if spool.take_need_full() {
            s.want_full.notify_one();
        }
        Ok::<_, AgentError>(seq)
    })
    .await
    .map_err(|e| AgentError::Watch(format!("spool task failed: {e}")))??;
    shared.spooled.notify_one();
    Ok(seq)
}

async fn produce(
    shared: Arc<Shared>,
    watcher: Arc<FileWatcher>,
    mut changes: mpsc::Receiver<ChangeBatch>,
    sampler: Option<ResourceSampler>,
    token: CancellationToken,
) -> Result<()> {
    let sampler = sampler.map(|s| Arc::new(Mutex::new(s)));
    let sample = |sampler: &Option<Arc<Mutex<ResourceSampler>>>| {
        let sampler = sampler.clone();
        async move {
            let s = sampler?;
            tokio::task::spawn_blocking(move || s.lock().expect("sampler lock").sample()).await.ok()
        }
    };
    let interval = shared.config.resource_interval;
    let mut ticker = tokio::time::interval(if interval.is_zero() { Duration::from_secs(3600) } else { interval });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the full snapshot carries a sample

    // Every start begins with a full snapshot, so the server's view is whole.
    let mut full_pending = true;
    // Batches computed before the latest full scan are older than it: dropped.
    let mut scan_generation = 0;
    loop {
        if full_pending {
            full_pending = false;
            let w = watcher.clone();
            let (generation, files) = tokio::task::spawn_blocking(move || w.full_scan())
                .await
                .map_err(|e| AgentError::Watch(format!("scan task failed: {e}")))?;
            scan_generation = generation;
            let mut resources = sample(&sampler).await;
            let n = files.len();
            // One listing, in parts of bounded size; the last part tells the server
            // that anything not listed since the first part is gone.
            let parts = crate::parts::split(files, crate::parts::PART_BYTES);
            let last = parts.len() - 1;
            let mut first_seq = 0;
            for (i, files) in parts.into_iter().enumerate() {
                let snap = Snapshot {
                    full: true,
                    full_first_seq: first_seq,
                    full_last: i == last,
                    taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                    files,
                    resources: resources.take(),
                    ..Default::default()
                };
                match spool_append(&shared, snap).await {
                    Ok(seq) => {
                        if i == 0 {
                            first_seq = seq;
                        }
                        if i == last {
                            tracing::info!(first_seq, last_seq = seq, files = n, "full snapshot spooled");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot spool the full snapshot; retrying");
                        full_pending = true;
                        break;
                    }
                }
            }
            if full_pending {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = shared.want_full.notified() => full_pending = true,
            batch = changes.recv() => {
                let Some(ChangeBatch { generation, files }) = batch else {
                    tracing::error!("file watcher stopped");
                    return Err(AgentError::Watch("file watcher stopped".into()));
                };
                if files.is_empty() || generation < scan_generation { continue; }
                for files in crate::parts::split(files, crate::parts::PART_BYTES) {
                    let n = files.len();
                    let snap = Snapshot {
                        taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                        files,
                        ..Default::default()
                    };
                    match spool_append(&shared, snap).await {
                        Ok(seq) => tracing::debug!(seq, files = n, "change spooled"),
                        Err(e) => {
                            // Disk trouble: the next full snapshot will carry these changes.
                            tracing::error!(error = %e, "cannot spool a change; a full snapshot follows");
                            full_pending = true;
                            break;
                        }
                    }
                }
            }
            _ = ticker.tick(), if sampler.is_some() => {
                if let Some(r) = sample(&sampler).await {
                    let snap = Snapshot {
                        taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                        resources: Some(r),
                        ..Default::default()
                    };
                    if let Err(e) = spool_append(&shared, snap).await {
                        tracing::warn!(error = %e, "cannot spool a resource sample; skipped");
                    }
                }
            }
        }
    }
}

async fn stream_loop(shared: Arc<Shared>, token: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => return,
            r = one_stream(&shared, &token, &mut backoff) => r,
        };
        shared.status.connected.store(false, Ordering::Relaxed);
        if token.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        match result {
            Ok(()) => tracing::info!(retry_in_ms = delay.as_millis() as u64, "stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, up_for_ms = started.elapsed().as_millis() as u64, retry_in_ms = delay.as_millis() as u64, "stream failed; reconnecting")
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn spool_call<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Spool) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut spool = s.spool.lock().expect("spool lock");
        let r = f(&mut spool);
        s.status.acked_seq.store(spool.acked(), Ordering::Relaxed);
        s.status.pending.store(spool.pending(), Ordering::Relaxed);
        if spool.take_need_full() {
            s.want_full.notify_one();
        }
        r
    })
    .await
    .map_err(|e| AgentError::Watch(format!("spool task failed: {e}")))?
}

/// One connection: Hello/Welcome, resend, then live traffic until it breaks.
async fn one_stream(shared: &Arc<Shared>, token: &CancellationToken, backoff: &mut Backoff) -> Result<()> {
    let cfg = &shared.config;
    let endpoint = tonic::transport::Endpoint::from_shared(cfg.server.clone())
        .map_err(|e| AgentError::Connect { url: cfg.server.clone(), message: e.to_string() })?
        .connect_timeout(MIN_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| AgentError::Connect { url: cfg.server.clone(), message: error_chain(&e) })?;
    let mut client = AgentGatewayClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);

    let (spool_id, acked, dropped) = {
        let s = shared.spool.lock().expect("spool lock");
        (s.spool_id().to_string(), s.acked(), s.dropped())
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let hello = v1::Hello {
        host_id: cfg.host_id.clone(),
        labels: cfg.labels.clone(),
        agent_version: AGENT_VERSION.to_string(),
        spool_id,
        last_acked_seq: acked,
        dropped_snapshots: dropped,
        fleet_key_id: shared.key_id.clone(),
    };
    tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) })
        .await
        .map_err(|_| AgentError::Watch("outbound channel closed".into()))?;
    let response =
        client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(AgentError::Rejected)?;
    let mut inbound = response.into_inner();
    let welcome = match inbound.next().await {
        Some(Ok(ServerMessage { kind: Some(server_message::Kind::Welcome(w)) })) => w,
        Some(Ok(_)) => return Err(AgentError::Watch("server did not start with welcome".into())),
        Some(Err(s)) => return Err(AgentError::Rejected(s)),
        None => return Err(AgentError::Watch("server closed the stream before welcome".into())),
    };
    backoff.reset();
    shared.status.connected.store(true, Ordering::Relaxed);
    shared.status.connections.fetch_add(1, Ordering::Relaxed);
    let server_acked = welcome.acked_seq;
    spool_call(shared, move |s| s.ack(server_acked)).await?;
    // The server's setting, within sane bounds (a zero or absurd value must not spin or starve).
    let heartbeat_every = welcome
        .settings
        .as_ref()
        .and_then(|s| s.heartbeat_interval.as_ref())
        .and_then(|d| driftwatch_proto::duration::from_proto("heartbeat_interval", d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(15))
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tracing::info!(server = %cfg.server, acked_seq = server_acked, "connected");
    // Results of changes finished while we were not connected.
    send_results(shared, &tx).await?;

    // Read the server side on its own task so acks are processed even while we
    // wait for room to send (otherwise both sides could wait on each other).
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        while let Some(msg) = inbound.next().await {
            match msg {
                Ok(ServerMessage { kind: Some(server_message::Kind::Ack(a)) }) => {
                    let seq = a.seq;
                    if let Err(e) = spool_call(&reader_shared, move |s| s.ack(seq)).await {
                        tracing::error!(error = %e, "cannot record ack in spool");
                    }
                }
                Ok(other) => {
                    if ctl_tx.send(other).is_err() {
                        break;
                    }
                }
                Err(status) => return Err(AgentError::Rejected(status)),
            }
        }
        Ok(())
    });
    let reader_abort = reader.abort_handle();
    let _guard = AbortOnDrop(reader_abort);
    tokio::pin!(reader);

    let mut sent_upto = server_acked.max(acked);
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    loop {
        // Send everything spooled beyond what this stream has sent.
        loop {
            let after = sent_upto;
            let batch = spool_call(shared, move |s| s.read_after(after, SEND_BURST)).await?;
            if batch.is_empty() {
                break;
            }
            for snap in batch {
                sent_upto = snap.seq;
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Snapshot(snap)) })
                    .await
                    .map_err(|_| AgentError::Watch("stream closed while sending".into()))?;
                shared.status.snapshots_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = &mut reader => {
                return match r {
                    Ok(Ok(())) => Err(AgentError::Watch("server closed the stream".into())),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(AgentError::Watch(format!("reader task failed: {e}"))),
                };
            }
            _ = shared.spooled.notified() => {}
            _ = shared.results.ready.notified() => send_results(shared, &tx).await?,
            _ = heartbeat.tick() => {
                // Bursts (a full snapshot is read back, encoded and buffered by the
                // transport) leave freed pages behind: hand them back while idle.
                tokio::task::spawn_blocking(crate::memory::release_free_pages);
                let (pending, dropped) = {
                    let s = shared.spool.lock().expect("spool lock");
                    (s.pending(), s.dropped())
                };
                let hb = v1::Heartbeat {
                    sent_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                    spool_pending: pending,
                    dropped_snapshots: dropped,
                };
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })
                    .await
                    .map_err(|_| AgentError::Watch("stream closed".into()))?;
            }
            Some(msg) = ctl_rx.recv() => match msg.kind {
                Some(server_message::Kind::Ping(_)) => {
                    let hb = v1::Heartbeat {
                        sent_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                        ..Default::default()
                    };
                    let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) }).await;
                }
                Some(server_message::Kind::ApplyChange(c)) => {
                    tracing::info!(
                        change_id = %c.change_id,
                        path = %c.path,
                        dry_run = c.dry_run,
                        reason = %c.reason,
                        "change received"
                    );
                    // The applier thread decides (allowlist first); here it is only queued.
                    let not_queued = match shared.changes.lock().expect("changes lock").as_ref() {
                        Some(changes) => changes.send(c).err().map(|e| e.0),
                        None => Some(c),
                    };
                    if let Some(c) = not_queued {
                        shared.results.push(v1::ChangeResult {
                            change_id: c.change_id,
                            path: c.path,
                            outcome: v1::ChangeOutcome::Failed as i32,
                            message: "the agent is stopping; nothing written".into(),
                            ..Default::default()
                        });
                    }
                }
                Some(server_message::Kind::Welcome(_)) => tracing::warn!("unexpected second welcome ignored"),
                Some(server_message::Kind::Ack(_)) | None => {}
            },
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
