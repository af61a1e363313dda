//! The server's side of a stream, read on its own task so that acks are processed
//! even while the stream task waits for room to send (otherwise both sides could
//! wait on each other). An ack drops everything up to its seq from the spool and from
//! memory: the server has stored it durably.

use std::sync::Arc;

use driftwatch_proto::v1::{ServerMessage, server_message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::ack_log::{Via, spool_ack};
use super::{Shared, spool_call};
use crate::error::{AgentError, Result};

/// Read until the stream ends: record acks in the spool and pass every other message
/// to the stream task on `others`. An error status from the server ends the stream.
pub(super) async fn read_server(
    shared: Arc<Shared>,
    mut inbound: tonic::Streaming<ServerMessage>,
    others: mpsc::UnboundedSender<ServerMessage>,
) -> Result<()> {
    // A full disk fails every meta write: say so once, not on every ack.
    let mut failing = false;
    while let Some(msg) = inbound.next().await {
        match msg {
            Ok(ServerMessage { kind: Some(server_message::Kind::Ack(a)) }) => {
                let seq = a.seq;
                let sh = shared.clone();
                match spool_call(&shared, move |s| spool_ack(&sh, s, seq, Via::Ack)).await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "cannot record ack in spool");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot record ack in spool"),
                }
                // Held in memory or spooled alike: stored on the server.
                shared.acked_up_to(seq);
            }
            Ok(other) => {
                if others.send(other).is_err() {
                    break;
                }
            }
            Err(status) => return Err(AgentError::Rejected(status)),
        }
    }
    Ok(())
}

/// Aborts the reader task when the stream task leaves the connection.
pub(super) struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
