//! The stream task: one gRPC stream to the server at a time, reconnecting with
//! backoff. On each stream it sends every spooled snapshot the stream has not sent
//! yet (resending what the server has not acknowledged), then new ones as they are
//! spooled, heartbeats, change results, and answers the server's pings and changes.
//! Over TLS, a connect first makes sure the agent has a certificate (enrolling with the
//! token file when it has none, or when its certificate expired), and the stream asks
//! for a new certificate when the current one is two thirds through its lifetime.
//!
//! Snapshots go out in seq order, spooled ones and those held in memory merged. The
//! connection backoff starts over only once a connection made progress (the server
//! stored something new, or nothing was left to send): a Welcome alone does not
//! count, so a snapshot the server refuses after welcoming the agent (a limit it is
//! over) is retried on the growing schedule, not once a second. The refused snapshot
//! is kept and retried: the refusal is the operator's to lift (a raised limit), and
//! dropping it would lose the data and bring a full listing the server refuses too.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use driftwatch_proto::v1::{AgentMessage, ServerMessage, Snapshot, agent_message, server_message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AbortOnDrop, read_server};
use super::changes::{queue_change, send_results};
use super::hello::{Session, open};
use super::renew::Renewal;
use super::{Shared, spool_call};
use crate::backoff::Backoff;
use crate::error::{AgentError, Result};
use crate::identity::{self, HostIdentity, Plan, Stored};
use crate::memory;

/// Runs until the token is cancelled, or until a fatal error (an enrollment the server
/// refused, no way to get a certificate), which stops the whole agent.
pub(super) async fn stream_loop(shared: Arc<Shared>, token: CancellationToken) -> Result<()> {
    let mut backoff = Backoff::default();
    shared.status.backoff_ms.store(backoff.current().as_millis() as u64, Ordering::Relaxed);
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => {
                // Tasks waiting for the link (a listing waiting for room) must see it go.
                shared.set_connected(false);
                return Ok(());
            }
            r = one_stream(&shared, &token, &mut backoff) => r,
        };
        shared.set_connected(false);
        if token.is_cancelled() {
            return Ok(());
        }
        if matches!(&result, Err(AgentError::Rejected(status)) if refusal(status.code())) {
            backoff.end_hold();
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        shared.status.backoff_ms.store(backoff.current().as_millis() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => tracing::info!(retry_in_ms = delay.as_millis() as u64, "stream ended; reconnecting"),
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "stopping: the agent cannot connect without a certificate");
                token.cancel();
                return Err(e);
            }
            Err(AgentError::Rejected(status)) if refusal(status.code()) => tracing::warn!(
                code = ?status.code(),
                reason = status.message(),
                next_seq = shared.status.acked_seq.load(Ordering::Relaxed) + 1,
                retry_in_ms = delay.as_millis() as u64,
                "the server refused a snapshot; it stays in the spool and is sent again after the backoff"
            ),
            Err(e) => {
                tracing::warn!(error = %e, up_for_ms = started.elapsed().as_millis() as u64, retry_in_ms = delay.as_millis() as u64, "stream failed; reconnecting")
            }
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Over TLS, the identity to connect with: the current certificate while it is valid;
/// else a new one from enrolling with the token file; else (expired, no token file)
/// the expired one, after saying clearly what is wrong (the server will refuse it; a
/// token file put in place is used at the next attempt).
async fn identity_for_connect(shared: &Arc<Shared>) -> Result<Option<HostIdentity>> {
    let cfg = &shared.config;
    if !cfg.tls {
        return Ok(None);
    }
    let current = shared.identity.lock().clone();
    let stored = current.as_ref().map_or(Stored::Missing, |id| Stored::Cert { not_after: id.info.not_after });
    let token = cfg.enroll_token_file.as_deref();
    match identity::plan(identity::now_unix(), &stored, identity::have_token(token)) {
        Plan::UseStored => Ok(current),
        Plan::Enroll(why) => {
            tracing::info!(reason = %why, server = %cfg.server, "enrolling");
            let id = identity::enroll(cfg, &shared.identity_files).await?;
            *shared.identity.lock() = Some(id.clone());
            Ok(Some(id))
        }
        Plan::Fail(msg) => {
            let msg = identity::fail_text(&msg, token);
            match current {
                Some(id) => {
                    tracing::error!(host = %id.host_id, "{msg}");
                    Ok(Some(id))
                }
                None => Err(AgentError::Identity(msg)),
            }
        }
    }
}

/// A status that refuses what the agent sent (rather than a transport failure).
fn refusal(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition)
}

/// Whether a connection welcomed at `welcome_acked` made progress: the server stored
/// something past it, or nothing is left to send (the connection is healthy and idle).
fn made_progress(welcome_acked: u64, acked: u64, pending: u64) -> bool {
    acked > welcome_acked || pending == 0
}

/// One connection: Hello/Welcome, resend, then live traffic until it breaks.
async fn one_stream(shared: &Arc<Shared>, token: &CancellationToken, backoff: &mut Backoff) -> Result<()> {
    let identity = identity_for_connect(shared).await?;
    let Session { tx, inbound, server_acked, local_acked, heartbeat_every } = open(shared, identity.as_ref()).await?;
    let mut acked = shared.acked.subscribe();
    let mut progressed = false;
    // Over TLS: when to ask for the next certificate.
    let mut renewal = identity.as_ref().map(Renewal::new);
    // Results of changes finished while we were not connected.
    send_results(shared, &tx).await?;

    let (others_tx, mut others) = mpsc::unbounded_channel::<ServerMessage>();
    let reader = tokio::spawn(read_server(shared.clone(), inbound, others_tx));
    let _guard = AbortOnDrop(reader.abort_handle());
    tokio::pin!(reader);

    let mut sent_upto = server_acked.max(local_acked);
    let mut ahead = VecDeque::new();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    // When to hand back the memory of a full listing that went out.
    let mut trim_at: Option<Instant> = None;
    loop {
        if !progressed
            && made_progress(
                server_acked,
                shared.status.acked_seq.load(Ordering::Relaxed),
                shared.spool_report().pending,
            )
        {
            progressed = true;
            backoff.reset_for_reconnect();
            shared.status.backoff_ms.store(backoff.current().as_millis() as u64, Ordering::Relaxed);
        }
        let renew_due = renewal.as_ref().map(Renewal::due);
        // Send everything spooled or held beyond what this stream has sent, in seq order.
        while let Some(snap) = next_to_send(shared, sent_upto, &mut ahead).await? {
            sent_upto = snap.seq;
            if snap.full {
                trim_at = Some(Instant::now() + memory::TRIM_AFTER_LISTING);
            }
            tx.send(AgentMessage { kind: Some(agent_message::Kind::Snapshot(snap)) })
                .await
                .map_err(|_| AgentError::Watch("stream closed while sending".into()))?;
            shared.status.snapshots_sent.fetch_add(1, Ordering::Relaxed);
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
            // Only to look at progress again.
            _ = acked.changed(), if !progressed => {}
            _ = shared.health_changed.notified() => {
                let hb = shared.heartbeat();
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })
                    .await
                    .map_err(|_| AgentError::Watch("stream closed".into()))?;
            }
            _ = shared.results.ready.notified() => send_results(shared, &tx).await?,
            _ = sleep_until(renew_due) => {
                if let Some(r) = renewal.as_mut() {
                    r.request(shared, &tx).await?;
                }
            }
            _ = sleep_until(trim_at) => {
                trim_at = None;
                tokio::task::spawn_blocking(memory::release_free_pages);
            }
            _ = heartbeat.tick() => {
                // Bursts (a full snapshot is read back, encoded and buffered by the
                // transport) leave freed pages behind: hand them back while idle.
                tokio::task::spawn_blocking(memory::release_free_pages);
                let hb = shared.heartbeat();
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })
                    .await
                    .map_err(|_| AgentError::Watch("stream closed".into()))?;
            }
            Some(msg) = others.recv() => match msg.kind {
                Some(server_message::Kind::Ping(_)) => {
                    let hb = shared.heartbeat();
                    let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) }).await;
                }
                Some(server_message::Kind::ApplyChange(c)) => queue_change(shared, c),
                Some(server_message::Kind::Welcome(_)) => tracing::warn!("unexpected second welcome ignored"),
                Some(server_message::Kind::CertificateIssued(c)) => match renewal.as_mut() {
                    Some(r) => r.issued(shared, c).await,
                    None => tracing::warn!("certificate_issued on a plaintext stream ignored"),
                },
                Some(server_message::Kind::Ack(_)) | None => {}
            },
        }
    }
}

/// Spooled snapshots read ahead of sending (a burst per spool read).
const SEND_BURST: usize = 64;

/// The next snapshot to send after `sent`: the lowest seq above it, spooled (read ahead
/// into `ahead`) or held in memory, so a later spooled snapshot never overtakes an
/// earlier held one.
async fn next_to_send(shared: &Arc<Shared>, sent: u64, ahead: &mut VecDeque<Snapshot>) -> Result<Option<Snapshot>> {
    while ahead.front().is_some_and(|s| s.seq <= sent) {
        ahead.pop_front();
    }
    if ahead.is_empty() {
        ahead.extend(spool_call(shared, move |s| s.read_after(sent, SEND_BURST)).await?);
    }
    loop {
        let held = shared.unspooled.lock().first_after(sent).map(|s| s.seq);
        let Some(h) = held.filter(|h| ahead.front().is_none_or(|a| *h < a.seq)) else {
            return Ok(ahead.pop_front());
        };
        // Gone in between only when acknowledged: then look again.
        if let Some(snap) = shared.unspooled.lock().get(h).cloned() {
            return Ok(Some(snap));
        }
    }
}

/// Sleeps until `at`; never wakes when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_alone_is_not_progress() {
        assert!(!made_progress(7, 7, 3), "welcomed, then refused: nothing stored");
        assert!(made_progress(7, 8, 3), "the server stored something new");
        assert!(made_progress(7, 7, 0), "nothing left to send: a healthy idle connection");
    }

    #[test]
    fn refusals_are_told_apart_from_transport_failures() {
        assert!(refusal(tonic::Code::ResourceExhausted));
        assert!(refusal(tonic::Code::InvalidArgument));
        assert!(!refusal(tonic::Code::Unavailable));
        assert!(!refusal(tonic::Code::Aborted));
    }
}
