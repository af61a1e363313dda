//! `AgentGateway.Connect`: one long-lived stream per agent.
//!
//! Per stream: read Hello (over TLS its host id must be the certificate's, and a
//! newer stream replaces an older one; under `--insecure` only a Hello with the
//! connected stream's spool id replaces it, another claiming a connected host id is
//! refused), answer
//! Welcome with the durably stored seq, then apply snapshots to the in-memory
//! state and hand them to the group-commit writer; Acks go out only when the
//! writer has committed. Duplicates (seq already applied for this spool) are not
//! applied again, only acknowledged once stored.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{
    self, AgentMessage, ServerMessage, Snapshot, agent_gateway_server::AgentGateway, agent_message, server_message,
};
use driftwatch_store::{FileRecord, ResourceRecord};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::engine::EvalMsg;
use crate::error::ServerError;
use crate::inbound::Position;
use crate::limits::{Breach, Limit};
use crate::metrics::Metrics;
use crate::spool_report::{AlertChange, Listing, alert_message};
use crate::state::{Connection, FileEntry, FleetState, HostEntry};
use crate::writer::{AckTarget, WriteItem, WriteSender};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of an agent's spool condition kept (it is shown, never parsed).
const MAX_SPOOL_REASON: usize = 256;

#[derive(Clone)]
pub struct Gateway {
    pub state: Arc<FleetState>,
    pub writer: WriteSender,
    pub metrics: Arc<Metrics>,
    pub heartbeat_interval: Duration,
    /// `max_agents`, `max_message_bytes` and the per-host limits.
    pub limits: crate::limits::Limits,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub engine: crate::engine::EngineHandle,
    /// Where agents' change results go.
    pub changes: crate::changes::Dispatcher,
    /// Enrollment, labels and revocation.
    pub identities: Arc<crate::enroll::Identities>,
    /// The TLS material (its trusted CAs go to enrolling agents); None under `--insecure`.
    pub tls: Option<Arc<crate::tls::TlsMaterial>>,
}

/// A claimed host id: its id, connection id, ack, command and cut channels, the
/// Welcome, and the host record (with a spool change) still to be stored.
struct Registered {
    host_id: String,
    conn_id: u64,
    acks: watch::Receiver<u64>,
    commands: mpsc::Receiver<ServerMessage>,
    cut: watch::Receiver<Option<Status>>,
    welcome: v1::Welcome,
    write: WriteItem,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type ConnectStream = OutStream;

    async fn enroll(&self, request: Request<v1::EnrollRequest>) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = peer_of(&request);
        let req = request.into_inner();
        let issued = self.identities.enroll(&req).await.map_err(|e| {
            tracing::warn!(%peer, proposed = %req.host_id, error = %e, "enrollment refused");
            Status::from(e)
        })?;
        tracing::info!(host = %issued.host_id, %peer, "agent enrolled");
        Ok(Response::new(v1::EnrollResponse {
            host_id: issued.host_id,
            certificate_pem: issued.cert_pem,
            ca_pem: self.tls.as_ref().map(|t| t.trusted_ca_pem()).unwrap_or_default(),
            not_after: Some(prost_types::Timestamp { seconds: issued.not_after, nanos: 0 }),
            labels: issued.labels,
        }))
    }

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = peer_of(&request);
        let caller = request.extensions().get::<crate::access::AgentCaller>().cloned();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(m))) => {
                if let Err(r) = crate::inbound::check_agent_message(&m, Position::First, &self.limits) {
                    return Err(self.refuse(&peer, r.into_error(&self.limits, &self.metrics)));
                }
                // The check accepts nothing else first.
                let Some(agent_message::Kind::Hello(h)) = m.kind else {
                    return Err(
                        self.refuse(&peer, ServerError::InvalidArgument("the first message must be hello".into()))
                    );
                };
                h
            }
            Ok(Some(Err(status))) => return Err(self.inbound_error(status)),
            Ok(None) => return Err(Status::cancelled("stream closed before hello")),
            Err(_) => return Err(self.refuse(&peer, ServerError::InvalidArgument("no hello within 10 s".into()))),
        };
        let Registered { host_id, conn_id, acks: acks_rx, commands: commands_rx, cut, welcome, write } =
            self.register(&hello, &peer, caller.as_ref()).map_err(|e| self.refuse(&peer, e))?;
        tracing::info!(host = %host_id, %peer, agent_version = %hello.agent_version, acked_seq = welcome.acked_seq, "agent connected");
        self.metrics.connected_agents.inc();

        // Small outbound buffer: Acks coalesce in the watch channel, so a stalled
        // agent holds at most a few messages here.
        let (tx, rx) = mpsc::channel(8);
        let _ = tx.try_send(Ok(ServerMessage { kind: Some(server_message::Kind::Welcome(welcome)) }));
        let conn = ConnTask {
            gw: self.clone(),
            host_id,
            spool_id: hello.spool_id.clone(),
            conn_id,
            inbound,
            tx,
            acks: acks_rx,
            commands: commands_rx,
            cut,
            caller,
        };
        tokio::spawn(conn.run(write));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Gateway {
    fn refuse(&self, peer: &str, e: ServerError) -> Status {
        self.metrics.connections_refused.inc();
        tracing::warn!(%peer, error = %e, "agent stream refused");
        e.into()
    }

    /// A request past a limit, counted.
    fn breach(&self, b: Breach) -> ServerError {
        b.refuse(&self.limits, &self.metrics)
    }

    /// An error reading the agent's stream; a message over `max_message_bytes` (tonic's
    /// decoder refuses it) becomes the limit's own status.
    fn inbound_error(&self, status: Status) -> Status {
        if status.code() == tonic::Code::OutOfRange && status.message().contains("message length too large") {
            let what = format!("an agent message was larger than allowed ({})", status.message());
            return self.breach(Breach::new(Limit::MaxMessageBytes, what)).into();
        }
        status
    }

    /// Claim the host id of a checked Hello (`inbound::check_hello`) for this connection.
    fn register(
        &self,
        hello: &v1::Hello,
        peer: &str,
        caller: Option<&crate::access::AgentCaller>,
    ) -> Result<Registered, ServerError> {
        let id = hello.host_id.trim();
        if let Some(c) = caller
            && c.host_id != id
        {
            return Err(ServerError::PermissionDenied(format!(
                "hello says host '{id}' but the client certificate is for host '{}'",
                c.host_id
            )));
        }
        let connected = self.metrics.connected_agents.get();
        if connected >= self.limits.max_agents as i64 {
            let what = format!("the server holds {connected} agent streams; host '{id}' must wait");
            return Err(self.breach(Breach::new(Limit::MaxAgents, what)));
        }
        let now = driftwatch_proto::now_millis();
        let conn_id = self.state.next_connection_id();
        let mut entry = self.state.hosts.entry(id.to_string()).or_insert_with(|| HostEntry::new(now));
        if let Some(c) = &entry.connection {
            if !replaces(caller.is_some(), &entry.spool_id, &hello.spool_id) {
                return Err(ServerError::AlreadyExists(format!(
                    "host '{id}' is already connected (from {}); a second agent may not claim its id",
                    c.peer
                )));
            }
            // The same agent again: it reconnected while its old stream looks alive (a
            // half-open connection not noticed yet). The newer stream wins.
            tracing::info!(host = %id, old = %c.peer, new = %peer, "a newer stream of the same host replaces the old one");
            let _ = c.cut.send(Some(Status::aborted("replaced by a newer stream of the same host")));
        }
        let mut reset_seqs = false;
        if entry.spool_id != hello.spool_id {
            // A new spool (fresh install or wiped state dir) numbers from 1 again.
            if !entry.spool_id.is_empty() {
                tracing::info!(host = %id, old = %entry.spool_id, new = %hello.spool_id, "agent has a new spool; sequence restarts");
            }
            entry.spool_id = hello.spool_id.clone();
            entry.applied_seq = 0;
            entry.stored_seq = 0;
            // Held files carry seqs of the old numbering; the new spool's first full
            // listing must see them as older than itself.
            for f in entry.files.values_mut() {
                f.seq = 0;
            }
            entry.listing = None;
            entry.drops.rebase();
            reset_seqs = true;
        }
        let labels = self.identities.labels_for(id, &hello.labels);
        let relabelled = entry.labels != labels && !entry.files.is_empty();
        entry.labels = labels;
        entry.agent_version = hello.agent_version.clone();
        entry.fleet_key_id = hello.fleet_key_id.clone();
        entry.dropped_snapshots = entry.dropped_snapshots.max(hello.dropped_snapshots);
        let (new_drops, alert) = entry.drops.report(hello.dropped_snapshots);
        note_spool(&mut entry, id, &hello.spool_degraded, hello.unspooled_snapshots);
        let (dropped, degraded) = (entry.dropped_snapshots, entry.spool_degraded.clone());
        entry.last_seen_ms = now;
        let (acks, acks_rx) = watch::channel(entry.stored_seq);
        // Changes are few and each waits for its result: a small queue is plenty.
        let (commands, commands_rx) = mpsc::channel(64);
        let (cut, cut_rx) = watch::channel(None);
        entry.connection = Some(Connection { id: conn_id, since_ms: now, peer: peer.to_string(), acks, commands, cut });
        let welcome = v1::Welcome {
            acked_seq: entry.stored_seq,
            applied_seq: entry.applied_seq,
            settings: Some(v1::AgentSettings {
                heartbeat_interval: Some(driftwatch_proto::duration::to_proto(self.heartbeat_interval)),
            }),
        };
        let record = entry.record(id);
        drop(entry);
        self.drops_seen(id, new_drops, alert, dropped, &degraded);
        // Labels/version (and a spool change) are stored by the stream's task, first.
        let write = WriteItem { host: Some(record), reset_file_seqs: reset_seqs, ..Default::default() };
        if relabelled {
            // Which rules select the host may have changed.
            self.engine.send(EvalMsg::Reevaluate { host: Some(id.to_string()) });
        }
        self.changes.host_connected(id);
        Ok(Registered {
            host_id: id.to_string(),
            conn_id,
            acks: acks_rx,
            commands: commands_rx,
            cut: cut_rx,
            welcome,
            write,
        })
    }
}

impl Gateway {
    /// Count drops an agent newly reported, and raise or resolve its drop alert.
    fn drops_seen(&self, host: &str, new: u64, alert: Option<AlertChange>, total: u64, degraded: &str) {
        if new > 0 {
            self.metrics.agent_spool_dropped.inc_by(new);
            tracing::warn!(host, new, total, "the agent reports snapshots dropped by its spool");
        }
        if let Some(change) = alert {
            self.engine.send(alert_message(host, change, total, degraded));
        }
    }
}

/// Record the spool condition an agent reports (Hello, Heartbeat); say when it changes.
fn note_spool(h: &mut HostEntry, host: &str, degraded: &str, unspooled: u64) {
    let degraded: String = degraded.chars().take(MAX_SPOOL_REASON).collect();
    if h.spool_degraded != degraded {
        if degraded.is_empty() {
            tracing::info!(host, "the agent can write its spool again");
        } else {
            tracing::warn!(host, reason = %degraded, "the agent cannot write its spool; it sends from memory (not durable on the host)");
        }
        h.spool_degraded = degraded;
    }
    h.unspooled_snapshots = unspooled;
}

/// Whether a Hello for a host that has a stream already replaces that stream (else it
/// is refused). Over TLS the caller proved the host's certificate: it is that host, so
/// the newer stream wins. Under `--insecure` nothing is proved; a Hello carrying the
/// connected stream's spool id is the same agent (the same state dir) coming back,
/// while another agent claiming the id by mistake has another spool and is refused.
fn replaces(authenticated: bool, connected_spool: &str, hello_spool: &str) -> bool {
    authenticated || (!connected_spool.is_empty() && connected_spool == hello_spool)
}

/// The peer's address, for logs.
fn peer_of<T>(request: &Request<T>) -> String {
    request.extensions().get::<crate::tls::PeerInfo>().map_or_else(|| "unknown".into(), |p| p.remote.to_string())
}

struct ConnTask {
    gw: Gateway,
    host_id: String,
    spool_id: String,
    conn_id: u64,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
    acks: watch::Receiver<u64>,
    commands: mpsc::Receiver<ServerMessage>,
    cut: watch::Receiver<Option<Status>>,
    caller: Option<crate::access::AgentCaller>,
}

impl ConnTask {
    /// Serve the stream, after storing `hello_write` (the host record of the Hello,
    /// with the reset of a new spool's seqs).
    ///
    /// That write waits for room in the writer's queue here, not in `register`: the
    /// `connect` future is dropped when the agent goes away before it is answered, so
    /// a record waited for there could be lost (and the host id left claimed); this
    /// task is not cancelled by the peer. Sent ahead of every snapshot of the stream
    /// (the queue keeps one sender's order), the reset is stored before the new
    /// spool's first listing.
    async fn run(mut self, hello_write: WriteItem) {
        if self.gw.writer.send(hello_write).await.is_err() {
            self.disconnect("server shutting down").await;
            return;
        }
        // An agent that says nothing for three heartbeat intervals is gone.
        let idle_limit = self.gw.heartbeat_interval * 3 + Duration::from_secs(5);
        let mut last_acked = *self.acks.borrow();
        let reason: String = loop {
            tokio::select! {
                biased;
                _ = self.gw.shutdown.cancelled() => break "server shutting down".into(),
                _ = self.cut.changed() => {
                    let status = self.cut.borrow().clone().unwrap_or_else(|| Status::aborted("stream cut"));
                    let _ = self.tx.send(Err(status.clone())).await;
                    break format!("cut: {}", status.message());
                }
                Some(cmd) = self.commands.recv() => {
                    if self.tx.send(Ok(cmd)).await.is_err() { break "agent went away".into(); }
                }
                changed = self.acks.changed() => {
                    if changed.is_err() { break "replaced".into(); }
                    let seq = *self.acks.borrow_and_update();
                    if seq > last_acked {
                        last_acked = seq;
                        let ack = ServerMessage { kind: Some(server_message::Kind::Ack(v1::Ack { seq })) };
                        if self.tx.send(Ok(ack)).await.is_err() { break "agent went away".into(); }
                    }
                }
                msg = tokio::time::timeout(idle_limit, self.inbound.next()) => match msg {
                    Err(_) => break format!("no message for {} s", idle_limit.as_secs()),
                    Ok(None) => break "agent closed the stream".into(),
                    Ok(Some(Err(status))) => {
                        // Oversized or malformed message: tell the agent why, then close.
                        let status = self.gw.inbound_error(status);
                        let _ = self.tx.send(Err(status.clone())).await;
                        break format!("stream error: {}", status.message());
                    }
                    Ok(Some(Ok(m))) => {
                        if let Err(e) = self.handle(m).await {
                            let status: Status = e.into();
                            let _ = self.tx.send(Err(status.clone())).await;
                            break format!("refused message: {}", status.message());
                        }
                    }
                },
            }
        };
        self.disconnect(&reason).await;
    }

    async fn handle(&mut self, m: AgentMessage) -> Result<(), ServerError> {
        if let Err(r) =
            crate::inbound::check_agent_message(&m, Position::Later { host: &self.host_id }, &self.gw.limits)
        {
            if matches!(m.kind, Some(agent_message::Kind::Snapshot(_))) {
                self.gw.metrics.snapshots_rejected.inc();
            }
            return Err(r.into_error(&self.gw.limits, &self.gw.metrics));
        }
        match m.kind {
            Some(agent_message::Kind::Snapshot(s)) => self.snapshot(s).await,
            Some(agent_message::Kind::Heartbeat(hb)) => {
                let (record, new, alert, total, degraded) = {
                    let Some(mut h) = self.gw.state.hosts.get_mut(&self.host_id) else { return Ok(()) };
                    h.last_seen_ms = driftwatch_proto::now_millis();
                    h.dropped_snapshots = h.dropped_snapshots.max(hb.dropped_snapshots);
                    let (new, alert) = h.drops.report(hb.dropped_snapshots);
                    note_spool(&mut h, &self.host_id, &hb.spool_degraded, hb.unspooled_snapshots);
                    (h.record(&self.host_id), new, alert, h.dropped_snapshots, h.spool_degraded.clone())
                };
                self.gw.drops_seen(&self.host_id, new, alert, total, &degraded);
                // Waits for room (back-pressure): the drop count must be stored.
                let _ = self.gw.writer.send(WriteItem { host: Some(record), ..Default::default() }).await;
                Ok(())
            }
            Some(agent_message::Kind::ChangeResult(r)) => {
                tracing::info!(host = %self.host_id, change = %r.change_id, outcome = r.outcome, "change result");
                self.gw.changes.complete(&self.host_id, r);
                Ok(())
            }
            Some(agent_message::Kind::RenewCertificate(r)) => {
                let Some(caller) = &self.caller else {
                    return Err(ServerError::FailedPrecondition("certificate renewal needs TLS".into()));
                };
                let issued = match self.gw.identities.renew(&caller.host_id, r.csr_pem).await {
                    Ok(c) => {
                        tracing::info!(host = %self.host_id, not_after = c.not_after, "certificate renewed");
                        v1::CertificateIssued {
                            certificate_pem: c.cert_pem,
                            not_after: Some(prost_types::Timestamp { seconds: c.not_after, nanos: 0 }),
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(host = %self.host_id, error = %e, "certificate renewal refused");
                        v1::CertificateIssued { error: e.to_string(), ..Default::default() }
                    }
                };
                let msg = ServerMessage { kind: Some(server_message::Kind::CertificateIssued(issued)) };
                self.tx.send(Ok(msg)).await.map_err(|_| ServerError::Unavailable("agent went away".into()))
            }
            // Refused by the check above already.
            Some(agent_message::Kind::Hello(_)) => Err(ServerError::InvalidArgument("hello sent twice".into())),
            None => Err(ServerError::InvalidArgument("empty agent message".into())),
        }
    }

    async fn snapshot(&mut self, s: Snapshot) -> Result<(), ServerError> {
        let received = Instant::now();
        let now = driftwatch_proto::now_millis();
        let mut evals = Vec::new();
        let mut changed = Vec::new();
        // Drops a whole listing healed: (new ones, alert change, total, condition).
        let mut healed = None;
        // The place in the writer's queue is taken first and used while the host entry
        // is still locked: a host record another task builds from this entry afterwards
        // (labels, a replaced stream's disconnect) carries this seq as applied, so it
        // must be queued behind this snapshot's write, never ahead of it.
        let permit =
            self.gw.writer.reserve().await.map_err(|_| ServerError::Unavailable("server is shutting down".into()))?;
        {
            let Some(mut h) = self.gw.state.hosts.get_mut(&self.host_id) else {
                return Err(ServerError::Unavailable("host entry vanished".into()));
            };
            h.last_seen_ms = now;
            if s.seq <= h.applied_seq {
                // A resend after reconnect: already applied. If it is stored, ack at
                // once; if its write is in flight, that commit acks it.
                self.gw.metrics.snapshots_duplicate.inc();
                let stored = h.stored_seq;
                drop(h);
                if stored >= s.seq && stored > *self.acks.borrow() {
                    let ack = ServerMessage { kind: Some(server_message::Kind::Ack(v1::Ack { seq: stored })) };
                    let _ = self.tx.send(Ok(ack)).await;
                }
                return Ok(());
            }
            let listing = s.full.then(|| Listing::step(h.listing, s.seq, s.full_first_seq));
            if let Err(b) = self.check_limits(&h, &s, listing.filter(|l| l.whole).map(|l| l.first)) {
                self.gw.metrics.snapshots_rejected.inc();
                return Err(self.gw.breach(b));
            }
            let mut item = WriteItem {
                ack: Some(AckTarget { host_id: self.host_id.clone(), spool_id: self.spool_id.clone(), seq: s.seq }),
                received: Some(received),
                ..Default::default()
            };
            for f in s.files {
                let entry = FileEntry::new(&f, s.seq, now);
                item.files.push(FileRecord {
                    host_id: self.host_id.clone(),
                    path: f.path.clone(),
                    seq: s.seq,
                    updated_ms: now,
                    state: entry.encoded().to_vec(),
                });
                let current = entry.shared();
                let previous = h.files.insert(f.path.clone(), entry).map(|old| old.shared());
                changed.push((f.path, previous, Some(current)));
            }
            if let Some(l) = listing {
                h.listing = (!s.full_last).then_some(l);
            }
            match listing {
                Some(l) if s.full_last && l.whole => {
                    // The listing that started at `first` is complete: what it did not
                    // list (last updated before it began) is gone.
                    let gone: Vec<String> =
                        h.files.iter().filter(|(_, f)| f.seq < l.first).map(|(p, _)| p.clone()).collect();
                    for p in gone {
                        h.files.remove(&p);
                        changed.push((p.clone(), None, None));
                        item.removed_files.push((self.host_id.clone(), p));
                    }
                    let (new, alert) = h.drops.healed(s.dropped_snapshots);
                    h.dropped_snapshots = h.dropped_snapshots.max(s.dropped_snapshots);
                    healed = Some((new, alert, h.dropped_snapshots, h.spool_degraded.clone()));
                }
                Some(l) if s.full_last => {
                    // A part never arrived (dropped by the agent's full spool, or before
                    // a restart of this server): the files it listed must not go.
                    self.gw.metrics.listings_incomplete.inc();
                    tracing::info!(host = %self.host_id, first = l.first, last = s.seq, "a full listing arrived with a part missing; nothing pruned");
                }
                _ => {}
            }
            if s.unspooled {
                self.gw.metrics.snapshots_unspooled.inc();
            }
            if let Some(r) = s.resources {
                let sampled_ms = r.sampled_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(now);
                item.resources = Some(ResourceRecord {
                    host_id: self.host_id.clone(),
                    seq: s.seq,
                    sampled_ms,
                    sample: r.encode_to_vec(),
                });
                evals.push(EvalMsg::Resource { host: self.host_id.clone(), sample: Box::new(r.clone()) });
                h.resources = Some(r);
            }
            h.applied_seq = s.seq;
            item.host = Some(h.record(&self.host_id));
            permit.send(item);
        }
        // Rules see the change now; the engine never makes ingest wait.
        for (path, previous, current) in changed {
            self.gw.engine.file_changed(&self.host_id, &path, previous, current);
        }
        for m in evals {
            self.gw.engine.send(m);
        }
        if let Some((new, alert, total, degraded)) = healed {
            self.gw.drops_seen(&self.host_id, new, alert, total, &degraded);
        }
        Ok(())
    }

    /// The per-host limits after this snapshot: files and bytes of file state held
    /// (keys per file: `inbound::check_snapshot`). Nothing of a refused snapshot is applied.
    /// `listing_from`: the first seq of the whole listing `s` is part of (files last
    /// updated before it go when it ends).
    fn check_limits(&self, h: &HostEntry, s: &Snapshot, listing_from: Option<u64>) -> Result<(), Breach> {
        if s.files.is_empty() {
            return Ok(());
        }
        let limits = &self.gw.limits;
        let incoming: Vec<(&str, u64)> = s.files.iter().map(|f| (f.path.as_str(), f.encoded_len() as u64)).collect();
        let held = h.files.iter().map(|(p, f)| (p.as_str(), f.seq, f.encoded().len() as u64));
        limits.check_host(&self.host_id, crate::limits::usage_after(held, &incoming, listing_from))
    }

    async fn disconnect(&self, reason: &str) {
        self.gw.metrics.connected_agents.dec();
        let record = {
            let Some(mut h) = self.gw.state.hosts.get_mut(&self.host_id) else { return };
            // Only clear our own claim: a newer connection may already own the id.
            if h.connection.as_ref().is_some_and(|c| c.id == self.conn_id) {
                h.connection = None;
            }
            h.last_seen_ms = driftwatch_proto::now_millis();
            h.record(&self.host_id)
        };
        tracing::info!(host = %self.host_id, reason, "agent disconnected");
        // Last seen and offline, stored even when the writer's queue is full (it waits).
        let _ = self.gw.writer.send(WriteItem { host: Some(record), ..Default::default() }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::replaces;

    #[test]
    fn a_newer_stream_replaces_only_the_same_agent() {
        assert!(replaces(true, "spool-a", "spool-b"), "a certificate proves the host");
        assert!(replaces(false, "spool-a", "spool-a"), "the same agent reconnecting");
        assert!(!replaces(false, "spool-a", "spool-b"), "another agent claiming the id");
        assert!(!replaces(false, "", ""), "nothing known to compare");
    }
}
