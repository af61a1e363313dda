//! A webhook receiver on `127.0.0.1:0` (`POST /hook`) that records every request and
//! can fail on demand: for the notifier tests and the simulator's `notify` benchmark.
//! Plain HTTP ([`Receiver::start`]) or HTTPS with a given rustls config
//! ([`Receiver::start_tls`], see [`crate::test_ca::TestCa`]).

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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
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
        let state = ReceiverState::default();
        state.fail_next.store(fail_first, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("receiver address"));
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the receiver serves");
        });
        Self { url, state, task }
    }

    /// Listening over TLS with `tls` (`https://127.0.0.1:PORT/hook`: give the
    /// certificate the IP address `127.0.0.1`); the first `fail_first` calls are answered 503.
    pub async fn start_tls(fail_first: usize, tls: Arc<rustls::ServerConfig>) -> Self {
        let state = ReceiverState::default();
        state.fail_next.store(fail_first, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let url = format!("https://{addr}/hook");
        let tls = TlsListener::new(listener, tokio_rustls::TlsAcceptor::from(tls), state.handshake_failures.clone());
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(tls, app).await.expect("the receiver serves");
        });
        Self { url, state, task }
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
