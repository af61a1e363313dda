//! A webhook receiver on `127.0.0.1:0` (`POST /hook`) that records every request and
//! can fail on demand: for the notifier tests and the simulator's `notify` benchmark.
//! Plain HTTP ([`Receiver::start`]) or HTTPS with a given rustls config
//! ([`Receiver::start_tls`], see [`crate::test_ca::TestCa`]). A receiver can also go
//! away for real ([`Receiver::close`]: the listener is closed, so connections are
//! refused) and come back on the same port ([`Receiver::open`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value as Json;

use crate::wait::wait_for;

/// How long [`Receiver::wait_delivered`] waits.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// How long closing (or re-binding the port) may take.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, in milliseconds since the epoch (the clock of event times).
    pub at_ms: i64,
    pub status: u16,
    pub event_id: String,
    pub idempotency_key: String,
    pub signature: String,
    /// The `Authorization` header ("" when absent).
    pub authorization: String,
    pub body: Vec<u8>,
    pub json: Json,
}

#[derive(Clone, Default)]
pub struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Calls still to fail (503).
    pub fail_next: Arc<AtomicUsize>,
    /// Fail every call while set.
    pub down: Arc<AtomicBool>,
    /// TLS handshakes that failed (a client that did not trust us, or that we did not trust).
    pub handshake_failures: Arc<AtomicUsize>,
}

/// See the module documentation. Stops serving when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`
    pub url: String,
    pub state: ReceiverState,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// None while closed.
    serving: Mutex<Option<Serving>>,
}

/// The serve task of an open receiver, and how to stop it gracefully.
struct Serving {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.serving.lock().take() {
            s.stop.cancel();
            s.task.abort();
        }
    }
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (at, at_ms) = (Instant::now(), driftwatch_proto::now_millis());
    let failing = s.down.load(Ordering::SeqCst)
        || s.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if failing { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    s.hits.lock().push(Hit {
        at,
        at_ms,
        status: status.as_u16(),
        event_id: header("x-driftwatch-event-id"),
        idempotency_key: header("idempotency-key"),
        signature: header("x-driftwatch-signature"),
        authorization: header("authorization"),
        json: serde_json::from_slice(&body).unwrap_or(Json::Null),
        body: body.to_vec(),
    });
    status
}

impl Receiver {
    /// Listening; the first `fail_first` calls are answered 503.
    pub async fn start(fail_first: usize) -> Self {
        Self::start_with(fail_first, None).await
    }

    /// Listening over TLS with `tls` (`https://127.0.0.1:PORT/hook`: give the
    /// certificate the IP address `127.0.0.1`); the first `fail_first` calls are answered 503.
    pub async fn start_tls(fail_first: usize, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(fail_first, Some(tls)).await
    }

    async fn start_with(fail_first: usize, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let state = ReceiverState::default();
        state.fail_next.store(fail_first, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let rx = Self { url: format!("{scheme}://{addr}/hook"), state, addr, tls, serving: Mutex::new(None) };
        rx.serve(listener);
        rx
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = tokio_util::sync::CancellationToken::new();
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(self.state.clone());
        let shutdown = stop.clone().cancelled_owned();
        let task = match &self.tls {
            None => tokio::spawn(async move {
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await.expect("the receiver serves");
            }),
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let tls = TlsListener::new(listener, acceptor, self.state.handshake_failures.clone());
                tokio::spawn(async move {
                    axum::serve(tls, app).with_graceful_shutdown(shutdown).await.expect("the receiver serves");
                })
            }
        };
        *self.serving.lock() = Some(Serving { stop, task });
    }

    /// Go away: stop accepting, close the listener and every idle connection (a
    /// request in flight is answered first). Until [`Receiver::open`], connecting
    /// is refused.
    pub async fn close(&self) {
        let Some(s) = self.serving.lock().take() else { return };
        s.stop.cancel();
        tokio::time::timeout(CLOSE_WAIT, s.task)
            .await
            .expect("the receiver's connections close")
            .expect("the receiver's serve task");
    }

    /// Come back on the same port (a no-op when open).
    pub async fn open(&self) {
        if self.serving.lock().is_some() {
            return;
        }
        // The port was free while closed; something else may hold it for a moment.
        let addr = self.addr;
        let listener = wait_for("the receiver's port to be free again", CLOSE_WAIT, || async move {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await;
        self.serve(listener);
    }

    /// Failed TLS handshakes so far.
    pub fn handshake_failures(&self) -> usize {
        self.state.handshake_failures.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().clone()
    }

    /// Successful deliveries of `kind` notifications.
    pub fn delivered(&self, kind: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.status == 200 && h.json["kind"] == kind).collect()
    }

    /// The first successful delivery of a `kind` notification, waiting for it.
    pub async fn wait_delivered(&self, kind: &str) -> Hit {
        wait_for(&format!("a delivered {kind} notification"), DELIVERY_WAIT, || async {
            self.delivered(kind).into_iter().next()
        })
        .await
    }
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// TCP connections after their TLS handshake, for `axum::serve`. Handshakes run in
/// their own tasks, so a client that stalls (or fails) holds up no one.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, failures: Arc<AtomicUsize>) -> Self {
        let addr = listener.local_addr().expect("receiver address");
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Self { ready, addr, accept_task }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task is gone (only when dropping): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
