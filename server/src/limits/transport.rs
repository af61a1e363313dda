//! The transport's limits, one tower layer inside the access layer:
//!
//! - Operator requests in flight (`max_operator_requests`): every service but the
//!   agents' (`AgentGateway`) shares one budget; a request over it is refused at once
//!   with `RESOURCE_EXHAUSTED` (shed, not queued), so agent streams are never starved
//!   by operator calls and operators get an answer instead of a hang. A request holds
//!   its place until its handler answers (a stream's place ends when it starts).
//! - Request deadlines (`request_timeout`): an operator request whose handler has not
//!   answered by then is cut with `DEADLINE_EXCEEDED`. A shorter `grpc-timeout` from
//!   the client wins: tonic's server cuts the call at the client's deadline itself
//!   (outside this layer), so this layer adds its timer only when the server's is the
//!   shorter. `Changes.Correct` is bounded by its own `timeout` field instead (up to
//!   10 minutes: waiting for an agent is its job).
//! - HTTP/2 streams per connection (`max_concurrent_streams`): HTTP/2 itself enforces
//!   it (the server advertises it; a client's further streams wait for a free one),
//!   so no request is refused; this layer counts a connection reaching it.
//!
//! Health checks bypass the operator budget and the deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::codegen::http;

use super::{Breach, Limit, Limits};
use crate::metrics::Metrics;
use crate::tls::PeerInfo;
use crate::tls::peer::StreamCount;

/// A header name made once: looking one up by `&str` parses it on every request.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// How a request is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `AgentGateway`: its own limits (`max_agents`, per-host ones).
    Agent,
    /// Health: always answered.
    Health,
    /// Every other service; `deadline`: the server's default deadline applies.
    Operator { deadline: bool },
}

pub fn classify(path: &str) -> Class {
    if path.starts_with("/driftwatch.v1.AgentGateway/") {
        Class::Agent
    } else if path.starts_with("/grpc.health.") {
        Class::Health
    } else {
        Class::Operator { deadline: path != "/driftwatch.v1.Changes/Correct" }
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The server's deadline for a request, unless the client's (which tonic enforces) is shorter.
pub fn server_deadline(server: Duration, client: Option<Duration>) -> Option<Duration> {
    match client {
        Some(c) if c < server => None,
        _ => Some(server),
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct TransportLimitsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    metrics: Arc<Metrics>,
    operator_in_flight: AtomicUsize,
}

impl TransportLimitsLayer {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        let shared = Shared { limits, metrics, operator_in_flight: AtomicUsize::new(0) };
        Self { shared: Arc::new(shared) }
    }

    /// Operator requests being handled now.
    pub fn operator_in_flight(&self) -> usize {
        self.shared.operator_in_flight.load(Ordering::Relaxed)
    }
}

impl<S> tower::Layer<S> for TransportLimitsLayer {
    type Service = TransportLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TransportLimits { inner, shared: self.shared.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct TransportLimits<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A place in the operator budget, given back when dropped.
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.operator_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open stream of a connection, given back when its response body is dropped.
pub struct OpenStream(StreamCount);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn open_stream(&self, peer: &PeerInfo) -> OpenStream {
        let n = peer.streams.0.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.limits.max_concurrent_streams {
            self.metrics.limit_hit(Limit::MaxConcurrentStreams.key(), 1);
            tracing::debug!(peer = %peer.remote, limit = n, "connection reached its stream limit");
        }
        OpenStream(peer.streams.clone())
    }

    fn admit_operator(self: &Arc<Self>, path: &str) -> Result<InFlight, Status> {
        let max = self.limits.max_operator_requests;
        let before = self.operator_in_flight.fetch_add(1, Ordering::Relaxed);
        let place = InFlight(self.clone());
        if before >= max {
            drop(place);
            let what = format!("{path}: the server is handling {max} operator requests already; retry shortly");
            return Err(Breach::new(Limit::MaxOperatorRequests, what).refuse(&self.limits, &self.metrics).into());
        }
        Ok(place)
    }

    fn timed_out(&self, path: &str, after: Duration) -> Status {
        let what = format!("{path} did not finish within {}", driftwatch_proto::duration::format(after));
        Breach::new(Limit::RequestTimeout, what).refuse(&self.limits, &self.metrics).into()
    }
}

impl<S, B> tower::Service<http::Request<B>> for TransportLimits<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = LimitsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        let stream = req.extensions().get::<PeerInfo>().map(|p| shared.open_stream(p));
        let path = req.uri().path();
        let class = classify(path);
        let in_flight = match class {
            Class::Operator { .. } => match shared.admit_operator(path) {
                Ok(p) => Some(p),
                Err(status) => return LimitsFuture::Refused { answer: Some(status.into_http()) },
            },
            Class::Agent | Class::Health => None,
        };
        let limit = match class {
            Class::Operator { deadline: true } => {
                let client =
                    req.headers().get(&GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
                server_deadline(shared.limits.request_timeout, client)
            }
            _ => None,
        };
        // A cheap clone (shared bytes), kept only for a refusal's message.
        let deadline = limit.map(|after| Deadline { shared: shared.clone(), uri: req.uri().clone(), after });
        let sleep = limit.map(tokio::time::sleep);
        LimitsFuture::Admitted { call: self.inner.call(req), sleep, deadline, in_flight, stream }
    }
}

/// What a deadline's refusal says.
pub struct Deadline {
    shared: Arc<Shared>,
    uri: http::Uri,
    after: Duration,
}

pin_project_lite::pin_project! {
    /// The inner call under the server's deadline, holding its places in the budgets; or
    /// a refusal. A concrete type: the layer adds no allocation to a call.
    #[project = LimitsProj]
    pub enum LimitsFuture<F> {
        Admitted {
            #[pin] call: F,
            #[pin] sleep: Option<tokio::time::Sleep>,
            deadline: Option<Deadline>,
            in_flight: Option<InFlight>,
            stream: Option<OpenStream>,
        },
        Refused { answer: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> std::future::Future for LimitsFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (call, sleep, deadline, in_flight, stream) = match self.project() {
            LimitsProj::Refused { answer } => return Poll::Ready(Ok(answer.take().expect("polled after completion"))),
            LimitsProj::Admitted { call, sleep, deadline, in_flight, stream } => {
                (call, sleep, deadline, in_flight, stream)
            }
        };
        let response = match call.poll(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => {
                if let (Some(s), Some(d)) = (sleep.as_pin_mut(), deadline.as_ref())
                    && s.poll(cx).is_ready()
                {
                    in_flight.take();
                    return Poll::Ready(Ok(d.shared.timed_out(d.uri.path(), d.after).into_http()));
                }
                return Poll::Pending;
            }
        };
        // The handler answered: its place in the operator budget is free; the stream's
        // place is held by the body until it is sent.
        in_flight.take();
        Poll::Ready(Ok(match stream.take() {
            Some(s) => response.map(|body| tonic::body::Body::new(Guarded { inner: body, _stream: s })),
            None => response,
        }))
    }
}

/// A response body that holds its stream's place until it is dropped.
struct Guarded {
    inner: tonic::body::Body,
    _stream: OpenStream,
}

impl http_body::Body for Guarded {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_every_unit_and_nothing_else() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10s", "1.5S", "-1S", "10"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_servers_deadline_applies_unless_the_callers_is_shorter() {
        let server = Duration::from_secs(60);
        assert_eq!(server_deadline(server, None), Some(server));
        assert_eq!(server_deadline(server, Some(Duration::from_secs(5))), None, "tonic cuts it at 5s");
        assert_eq!(server_deadline(server, Some(Duration::from_secs(600))), Some(server));
    }

    #[test]
    fn agents_and_health_are_outside_the_operator_budget() {
        assert_eq!(classify("/driftwatch.v1.AgentGateway/Connect"), Class::Agent);
        assert_eq!(classify("/driftwatch.v1.AgentGateway/Enroll"), Class::Agent);
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Class::Health);
        assert_eq!(classify("/driftwatch.v1.Fleet/ListHosts"), Class::Operator { deadline: true });
        assert_eq!(classify("/driftwatch.v1.Changes/Correct"), Class::Operator { deadline: false });
    }

    #[test]
    fn the_operator_budget_sheds_and_refills() {
        let limits = Limits { max_operator_requests: 2, ..Default::default() };
        let metrics = Metrics::new();
        let layer = TransportLimitsLayer::new(limits, metrics.clone());
        let s = &layer.shared;
        let a = s.admit_operator("/x").unwrap();
        let _b = s.admit_operator("/x").unwrap();
        let refused = s.admit_operator("/driftwatch.v1.Fleet/ListHosts").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("[limits] max_operator_requests"), "{}", refused.message());
        assert_eq!(metrics.limit_hits("max_operator_requests"), 1);
        assert_eq!(layer.operator_in_flight(), 2, "a refused request holds no place");
        drop(a);
        assert!(s.admit_operator("/x").is_ok());
    }

    #[test]
    fn a_connection_reaching_its_stream_limit_is_counted_once_per_time() {
        let limits = Limits { max_concurrent_streams: 2, ..Default::default() };
        let metrics = Metrics::new();
        let layer = TransportLimitsLayer::new(limits, metrics.clone());
        let one = PeerInfo::plaintext("127.0.0.1:1000".parse().unwrap());
        let other = PeerInfo::plaintext("127.0.0.1:1001".parse().unwrap());
        let s = &layer.shared;
        let a = s.open_stream(&one);
        let _o = s.open_stream(&other);
        assert_eq!(metrics.limit_hits("max_concurrent_streams"), 0);
        let _b = s.open_stream(&one.clone());
        assert_eq!(metrics.limit_hits("max_concurrent_streams"), 1);
        drop(a);
        let _c = s.open_stream(&one);
        assert_eq!(metrics.limit_hits("max_concurrent_streams"), 2);
        assert_eq!(other.streams.0.load(Ordering::Relaxed), 1, "each connection counts its own");
    }
}
