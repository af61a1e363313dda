//! Opening a stream: connect, introduce the agent (Hello: host, labels, spool id,
//! what it holds as acknowledged, how its spool is), and take the server's Welcome
//! (what the server has durably stored and applied, and its settings).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use driftwatch_proto::v1::{
    self, AgentMessage, ServerMessage, agent_gateway_client::AgentGatewayClient, agent_message, server_message,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::ack_log::{Via, spool_ack};
use super::{AGENT_VERSION, Shared, spool_call};
use crate::error::{AgentError, Result};
use crate::identity::{self, HostIdentity};

/// Heartbeat period when the server's Welcome does not set one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// A stream past its Welcome.
pub(super) struct Session {
    /// Messages to the server.
    pub tx: mpsc::Sender<AgentMessage>,
    /// The server's side; the Welcome is already taken.
    pub inbound: tonic::Streaming<ServerMessage>,
    /// Everything up to here is durable on the server (and dropped from the spool).
    pub server_acked: u64,
    /// What the spool held as acknowledged when the Hello went out.
    pub local_acked: u64,
    pub heartbeat_every: Duration,
}

/// Connect (over TLS with `identity`'s certificate when given), send Hello, wait for
/// Welcome, and drop from the spool what the server already stored. A Welcome is not
/// progress by itself: the caller resets its backoff only once the server stores
/// something (a refused snapshot would otherwise be resent every second).
pub(super) async fn open(shared: &Arc<Shared>, identity: Option<&HostIdentity>) -> Result<Session> {
    let cfg = &shared.config;
    // Pings also while no stream is open (the Hello waits on the connection), so a
    // silent server is given up within interval + timeout at every stage.
    let endpoint = identity::enroll::endpoint(cfg, identity)
        .await?
        .http2_keep_alive_interval(cfg.keepalive.interval)
        .keep_alive_timeout(cfg.keepalive.timeout)
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| AgentError::Connect { url: cfg.server.clone(), message: driftwatch_proto::error_chain(&e) })?;
    let mut client = AgentGatewayClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);

    let (spool_id, acked) = {
        let s = shared.spool.lock();
        (s.spool_id().to_string(), s.acked())
    };
    let report = shared.spool_report();
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let host_id = identity.map_or_else(|| cfg.host_id.clone(), |id| id.host_id.clone());
    let hello = v1::Hello {
        host_id: host_id.clone(),
        labels: cfg.labels.clone(),
        agent_version: AGENT_VERSION.to_string(),
        spool_id,
        last_acked_seq: acked,
        dropped_snapshots: report.dropped,
        fleet_key_id: shared.key_id.clone(),
        spool_degraded: report.degraded,
        unspooled_snapshots: report.unspooled,
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
    let server_acked = welcome.acked_seq;
    let applied = welcome.applied_seq;
    let sh = shared.clone();
    spool_call(shared, move |s| {
        // Snapshots sent from memory and lost in a restart may be applied on the server
        // without being in the spool: new ones are numbered above them.
        s.number_above(applied);
        spool_ack(&sh, s, server_acked, Via::Welcome)
    })
    .await?;
    shared.acked_up_to(server_acked);
    shared.set_connected(true);
    shared.status.connections.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections.inc();
    // The server's setting, within sane bounds (a zero or absurd value must not spin or starve).
    let heartbeat_every = welcome
        .settings
        .as_ref()
        .and_then(|s| s.heartbeat_interval.as_ref())
        .and_then(|d| driftwatch_proto::duration::from_proto("heartbeat_interval", d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_HEARTBEAT)
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tracing::info!(server = %cfg.server, host = %host_id, tls = cfg.tls, acked_seq = server_acked, "connected");
    Ok(Session { tx, inbound, server_acked, local_acked: acked, heartbeat_every })
}
