//! A webhook receiver on `127.0.0.1:0` (`POST /hook`) that records every request and
//! can fail on demand: for the notifier tests and the simulator's `notify` benchmark.

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
