//! Changes down the agents' streams, results back to whoever waits for them.
//!
//! A change is sent on the host's live connection and registered under its id; the
//! connection task hands the agent's `ChangeResult` to [`Dispatcher::complete`]. Only
//! the host a change was sent to can complete it. A result that arrives after its
//! caller stopped waiting is logged and dropped: the caller re-reads the file's hash
//! before doing anything else with that host.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use driftwatch_proto::v1::{self, ServerMessage, server_message};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::ServerError;
use crate::state::FleetState;

struct Pending {
    host: String,
    reply: oneshot::Sender<v1::ChangeResult>,
}

struct Inner {
    state: Arc<FleetState>,
    pending: Mutex<HashMap<String, Pending>>,
    next: AtomicU64,
    /// Woken whenever an agent connects (hosts waiting to come back online).
    connected: Notify,
}

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    pub fn new(state: Arc<FleetState>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                connected: Notify::new(),
            }),
        }
    }

    /// A new change id: unique within this server run and, by the time prefix, across runs.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}-{n}", driftwatch_proto::now_millis())
    }

    pub fn is_connected(&self, host: &str) -> bool {
        self.inner.state.hosts.get(host).is_some_and(|h| h.connection.is_some())
    }

    /// Wait until the host's agent is connected, or the deadline passes (false).
    pub async fn wait_connected(&self, host: &str, deadline: Instant) -> bool {
        loop {
            let notified = self.inner.connected.notified();
            if self.is_connected(host) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // The re-check every second covers a connect between the check and the wait.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), notified).await;
        }
    }

    /// Called by the gateway when a host's agent connects.
    pub fn host_connected(&self, _host: &str) {
        self.inner.connected.notify_waiters();
    }

    /// Send a change to the host's agent and return where its result will arrive.
    pub fn send(
        &self,
        host: &str,
        change: v1::ApplyChange,
    ) -> Result<oneshot::Receiver<v1::ChangeResult>, ServerError> {
        let sender = {
            let h =
                self.inner.state.hosts.get(host).ok_or_else(|| ServerError::NotFound(format!("no host '{host}'")))?;
            let c = h.connection.as_ref().ok_or_else(|| {
                ServerError::Unavailable(format!("host '{host}' is offline; its agent must be connected"))
            })?;
            c.commands.clone()
        };
        let (tx, rx) = oneshot::channel();
        let id = change.change_id.clone();
        self.inner.pending.lock().insert(id.clone(), Pending { host: host.to_string(), reply: tx });
        let msg = ServerMessage { kind: Some(server_message::Kind::ApplyChange(change)) };
        if let Err(e) = sender.try_send(msg) {
            self.inner.pending.lock().remove(&id);
            return Err(match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    ServerError::ResourceExhausted(format!("host '{host}' has too many changes in flight"))
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    ServerError::Unavailable(format!("host '{host}' disconnected"))
                }
            });
        }
        Ok(rx)
    }

    /// Send a change and wait for its result.
    pub async fn apply(
        &self,
        host: &str,
        change: v1::ApplyChange,
        timeout: Duration,
    ) -> Result<v1::ChangeResult, ServerError> {
        let id = change.change_id.clone();
        let rx = self.send(host, change)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ServerError::Unavailable("change dispatcher dropped".into())),
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                Err(ServerError::DeadlineExceeded(format!(
                    "no result from host '{host}' within {} s for change {id}",
                    timeout.as_secs()
                )))
            }
        }
    }

    /// An agent's result. Ignored unless it answers a change sent to that very host.
    pub fn complete(&self, host: &str, result: v1::ChangeResult) {
        let mut pending = self.inner.pending.lock();
        match pending.get(&result.change_id) {
            Some(p) if p.host == host => {
                let p = pending.remove(&result.change_id).expect("present");
                let _ = p.reply.send(result);
            }
            Some(p) => {
                tracing::warn!(host, change = %result.change_id, sent_to = %p.host, "change result from another host ignored")
            }
            None => {
                tracing::info!(host, change = %result.change_id, "result for a change nobody waits for (late or unknown)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Connection, HostEntry};

    fn online(state: &FleetState, host: &str) -> tokio::sync::mpsc::Receiver<ServerMessage> {
        let (commands, rx) = tokio::sync::mpsc::channel(4);
        let (acks, _) = tokio::sync::watch::channel(0);
        let mut h = HostEntry::new(0);
        h.connection = Some(Connection {
            id: 1,
            since_ms: 0,
            peer: "test".into(),
            acks,
            commands,
            cut: tokio::sync::watch::channel(None).0,
        });
        state.hosts.insert(host.into(), h);
        rx
    }

    fn change(id: &str) -> v1::ApplyChange {
        v1::ApplyChange { change_id: id.into(), path: "/etc/a.env".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn result_reaches_the_waiter_only_from_the_right_host() {
        let state = FleetState::new();
        let mut agent = online(&state, "web-1");
        let d = Dispatcher::new(state);
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.apply("web-1", change("c1"), Duration::from_secs(5)).await });
        let sent = agent.recv().await.expect("change sent down the stream");
        assert!(matches!(sent.kind, Some(server_message::Kind::ApplyChange(ref c)) if c.change_id == "c1"));
        // Another host cannot answer for web-1.
        d.complete("web-2", v1::ChangeResult { change_id: "c1".into(), ..Default::default() });
        d.complete(
            "web-1",
            v1::ChangeResult {
                change_id: "c1".into(),
                outcome: v1::ChangeOutcome::Applied as i32,
                ..Default::default()
            },
        );
        let r = waiter.await.unwrap().unwrap();
        assert_eq!(r.outcome, v1::ChangeOutcome::Applied as i32);
    }

    #[tokio::test]
    async fn offline_and_unknown_hosts_are_errors_and_timeouts_forget_the_change() {
        let state = FleetState::new();
        state.hosts.insert("down".into(), HostEntry::new(0));
        let _agent = online(&state, "web-1");
        let d = Dispatcher::new(state);
        assert!(matches!(d.send("nope", change("a")), Err(ServerError::NotFound(_))));
        assert!(matches!(d.send("down", change("b")), Err(ServerError::Unavailable(_))));
        let e = d.apply("web-1", change("c"), Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(e, ServerError::DeadlineExceeded(_)), "{e}");
        assert!(d.inner.pending.lock().is_empty());
        assert!(!d.wait_connected("down", Instant::now() + Duration::from_millis(10)).await);
        assert!(d.wait_connected("web-1", Instant::now()).await);
    }
}
