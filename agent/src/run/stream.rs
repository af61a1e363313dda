//! The stream task: one gRPC stream to the server at a time, reconnecting with
//! backoff. On each stream it sends every spooled snapshot the stream has not sent
//! yet (resending what the server has not acknowledged), then new ones as they are
//! spooled, heartbeats, change results, and answers the server's pings and changes.
//! Over TLS, a connect first makes sure the agent has a certificate (enrolling with the
//! token file when it has none, or when its certificate expired), and the stream asks
//! for a new certificate when the current one is two thirds through its lifetime.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use driftwatch_proto::v1::{self, AgentMessage, ServerMessage, agent_message, server_message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AbortOnDrop, read_server};
use super::changes::{queue_change, send_results};
use super::hello::{Session, open};
use super::renew::Renewal;
use super::{Shared, now, spool_call};
use crate::backoff::Backoff;
use crate::error::{AgentError, Result};
use crate::identity::{self, HostIdentity, Plan, Stored};
use crate::memory;

/// Unacknowledged snapshots sent per burst before looking at the spool again.
const SEND_BURST: usize = 64;

/// Runs until the token is cancelled, or until a fatal error (an enrollment the server
/// refused, no way to get a certificate), which stops the whole agent.
pub(super) async fn stream_loop(shared: Arc<Shared>, token: CancellationToken) -> Result<()> {
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = one_stream(&shared, &token, &mut backoff) => r,
        };
        shared.status.connected.store(false, Ordering::Relaxed);
        if token.is_cancelled() {
            return Ok(());
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        match result {
            Ok(()) => tracing::info!(retry_in_ms = delay.as_millis() as u64, "stream ended; reconnecting"),
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "stopping: the agent cannot connect without a certificate");
                token.cancel();
                return Err(e);
            }
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

/// One connection: Hello/Welcome, resend, then live traffic until it breaks.
async fn one_stream(shared: &Arc<Shared>, token: &CancellationToken, backoff: &mut Backoff) -> Result<()> {
    let identity = identity_for_connect(shared).await?;
    let Session { tx, inbound, server_acked, local_acked, heartbeat_every } =
        open(shared, backoff, identity.as_ref()).await?;
    // Over TLS: when to ask for the next certificate.
    let mut renewal = identity.as_ref().map(Renewal::new);
    // Results of changes finished while we were not connected.
    send_results(shared, &tx).await?;

    let (others_tx, mut others) = mpsc::unbounded_channel::<ServerMessage>();
    let reader = tokio::spawn(read_server(shared.clone(), inbound, others_tx));
    let _guard = AbortOnDrop(reader.abort_handle());
    tokio::pin!(reader);

    let mut sent_upto = server_acked.max(local_acked);
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    // When to hand back the memory of a full listing that went out.
    let mut trim_at: Option<Instant> = None;
    loop {
        let renew_due = renewal.as_ref().map(Renewal::due);
        // Send everything spooled beyond what this stream has sent.
        loop {
            let after = sent_upto;
            let batch = spool_call(shared, move |s| s.read_after(after, SEND_BURST)).await?;
            if batch.is_empty() {
                break;
            }
            for snap in batch {
                sent_upto = snap.seq;
                if snap.full {
                    trim_at = Some(Instant::now() + memory::TRIM_AFTER_LISTING);
                }
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
                let (pending, dropped) = {
                    let s = shared.spool.lock();
                    (s.pending(), s.dropped())
                };
                let hb = v1::Heartbeat { sent_at: now(), spool_pending: pending, dropped_snapshots: dropped };
                tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })
                    .await
                    .map_err(|_| AgentError::Watch("stream closed".into()))?;
            }
            Some(msg) = others.recv() => match msg.kind {
                Some(server_message::Kind::Ping(_)) => {
                    let hb = v1::Heartbeat { sent_at: now(), ..Default::default() };
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

/// Sleeps until `at`; never wakes when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
