//! The agent side of `AgentGateway.Connect` for protocol-level agents (the sample agent,
//! the model agent, the simulator's virtual agents): Hello, then the server's Welcome.

use driftwatch_proto::v1::{self, agent_gateway_client::AgentGatewayClient, agent_message, server_message};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// What an agent sends on its stream.
pub type AgentTx = mpsc::UnboundedSender<v1::AgentMessage>;

/// Open a stream on `channel` and send `hello`; the Welcome is read here. Every later
/// message goes through the returned sender, in order.
pub async fn open_agent_stream(
    channel: Channel,
    hello: v1::Hello,
) -> Result<(AgentTx, tonic::Streaming<v1::ServerMessage>), tonic::Status> {
    let mut gw = AgentGatewayClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(v1::AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) });
    let mut inbound = gw.connect(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await?.into_inner();
    match tokio_stream::StreamExt::next(&mut inbound).await {
        Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Welcome(_)) })) => Ok((tx, inbound)),
        Some(Err(s)) => Err(s),
        other => Err(tonic::Status::unavailable(format!("expected a welcome, got {other:?}"))),
    }
}

/// A Hello from `host` with `labels`, the given agent version and a fresh spool id
/// prefixed `spool` (a new spool: the server resets its dedup state for the host).
pub fn hello(host: &str, labels: impl IntoIterator<Item = (String, String)>, version: &str, spool: &str) -> v1::Hello {
    v1::Hello {
        host_id: host.into(),
        labels: labels.into_iter().collect(),
        agent_version: version.into(),
        spool_id: format!("{spool}-{:016x}", rand::random::<u64>()),
        ..Default::default()
    }
}

/// A snapshot message.
pub fn snapshot(snap: v1::Snapshot) -> v1::AgentMessage {
    v1::AgentMessage { kind: Some(agent_message::Kind::Snapshot(snap)) }
}
