//! Per-RPC metrics, one tower layer outside every other (refusals by access and
//! limits are counted too):
//!
//! - `driftwatch_grpc_requests_total{service,method,code}`: calls by their gRPC
//!   status (`OK`, `NOT_FOUND`, …);
//! - `driftwatch_grpc_request_duration_seconds{service,method}`: from the request
//!   to the call's end.
//!
//! A call ends at its status: in the response headers for a trailers-only answer
//! (an error, a refusal), else in the trailers, so a streaming RPC (`Connect`,
//! `Subscribe`, `WatchRollout`) is counted and timed when its stream ends. A call
//! whose client goes away first (the future or the body dropped unfinished) counts
//! as `CANCELLED`.
//!
//! The series of every RPC in the access table are made at start and looked up by
//! path with a borrowed `&str`: a call costs a map lookup, a clock read and atomic
//! increments, no allocation. A path not in the table (refused by access) is counted
//! as `service="unknown", method="unknown"`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::codegen::http;

/// Latency buckets, 0.1 ms to 10 s (longer calls fall into `+Inf`: streams).
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// gRPC status names by code (0–16), as the gRPC specification spells them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

type CallLabels = [(&'static str, &'static str); 3];
type RpcLabels = [(&'static str, &'static str); 2];
type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The code of a `grpc-status` value; anything but 0–16 is `UNKNOWN`.
pub fn code_index(value: &[u8]) -> usize {
    match value {
        [d] if d.is_ascii_digit() => usize::from(d - b'0'),
        [b'1', d] if (b'0'..=b'6').contains(d) => 10 + usize::from(d - b'0'),
        _ => UNKNOWN,
    }
}

/// One RPC's series: the latency histogram, and its counters by code, made on first use.
#[derive(Debug)]
struct Series {
    service: &'static str,
    method: &'static str,
    duration: Histogram,
    codes: [OnceLock<Counter>; 17],
}

/// See the module documentation.
#[derive(Debug)]
pub struct RpcMetrics {
    requests: Family<CallLabels, Counter>,
    series: Vec<Series>,
    /// `/service/method` → index in `series`; the last series is `unknown`.
    by_path: HashMap<String, usize>,
}

impl RpcMetrics {
    /// The series of every RPC in `rpcs` (`(service, [method])`), registered in `registry`.
    pub fn register(
        registry: &mut Registry,
        rpcs: impl IntoIterator<Item = (&'static str, impl IntoIterator<Item = &'static str>)>,
    ) -> Arc<Self> {
        let requests = Family::<CallLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let mut series = Vec::new();
        let mut by_path = HashMap::new();
        let mut add = |service: &'static str, method: &'static str| {
            let duration = durations.get_or_create(&[("service", service), ("method", method)]).clone();
            let s = Series { service, method, duration, codes: Default::default() };
            // OK exists from the start, so a rate over it is defined before the first call.
            s.codes[0].get_or_init(|| {
                requests.get_or_create(&[("service", service), ("method", method), ("code", "OK")]).clone()
            });
            series.push(s);
            series.len() - 1
        };
        for (service, methods) in rpcs {
            for method in methods {
                let i = add(service, method);
                by_path.insert(format!("/{service}/{method}"), i);
            }
        }
        add("unknown", "unknown");
        registry.register("grpc_requests", "gRPC calls by service, method and status code", requests.clone());
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency, from the request to its status (a stream's whole life)",
            durations,
        );
        Arc::new(Self { requests, series, by_path })
    }

    fn index(&self, path: &str) -> usize {
        self.by_path.get(path).copied().unwrap_or(self.series.len() - 1)
    }

    fn record(&self, i: usize, code: usize, started: Instant) {
        let Some(s) = self.series.get(i) else { return };
        let code = code.min(CODE_NAMES.len() - 1);
        s.duration.observe(started.elapsed().as_secs_f64());
        s.codes[code]
            .get_or_init(|| {
                let labels = [("service", s.service), ("method", s.method), ("code", CODE_NAMES[code])];
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
    }

    /// Calls of `path` (`/service/method`) that ended with `code` (a name) so far.
    pub fn calls(&self, path: &str, code: &str) -> u64 {
        let s = &self.series[self.index(path)];
        CODE_NAMES.iter().position(|c| *c == code).and_then(|i| s.codes[i].get()).map_or(0, Counter::get)
    }
}

/// One call being timed; recorded once, when it ends or is dropped unfinished (`CANCELLED`).
struct Recorder {
    metrics: Arc<RpcMetrics>,
    series: usize,
    started: Instant,
    code: usize,
}

impl Recorder {
    fn finish(self, code: usize) {
        let mut me = self;
        me.code = code;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.metrics.record(self.series, self.code, self.started);
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<Recorded<RB>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let series = self.metrics.index(req.uri().path());
        let recorder = Recorder { metrics: self.metrics.clone(), series, started: Instant::now(), code: CANCELLED };
        RpcFuture { call: self.inner.call(req), recorder: Some(recorder) }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, timed: a concrete type, so the layer adds no allocation.
    pub struct RpcFuture<F> {
        #[pin]
        call: F,
        recorder: Option<Recorder>,
    }
}

impl<F, RB, E> std::future::Future for RpcFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<Recorded<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        let recorder = this.recorder.take();
        Poll::Ready(match result {
            Ok(response) => {
                // Trailers-only (an error or a refusal): the status is in the headers.
                let recorder = match (recorder, response.headers().get(&GRPC_STATUS)) {
                    (Some(r), Some(v)) => {
                        r.finish(code_index(v.as_bytes()));
                        None
                    }
                    (r, _) => r,
                };
                Ok(response.map(|inner| Recorded { inner, recorder }))
            }
            Err(e) => {
                if let Some(r) = recorder {
                    r.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers carry the status.
    pub struct Recorded<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }
}

impl<B: http_body::Body> http_body::Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().and_then(|t| t.get(&GRPC_STATUS)).map(|s| code_index(s.as_bytes())),
            // The body failed (the connection, not the handler): no status was sent.
            Some(Err(_)) => Some(UNKNOWN),
            // Ended without trailers: nothing said otherwise, so it is not an error.
            None => Some(0),
        };
        if let Some(code) = code
            && let Some(r) = this.recorder.take()
        {
            r.finish(code);
        }
        Poll::Ready(frame)
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
    use http_body::Body as _;

    fn metrics() -> (Registry, Arc<RpcMetrics>) {
        let mut r = Registry::with_prefix("driftwatch");
        let m = RpcMetrics::register(&mut r, [("driftwatch.v1.Fleet", ["ListHosts", "GetHost"])]);
        (r, m)
    }

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn status_codes_parse_from_the_header_value() {
        assert_eq!(code_index(b"0"), 0);
        assert_eq!(code_index(b"5"), 5);
        assert_eq!(code_index(b"16"), 16);
        for bad in [&b""[..], b"17", b"20", b"-1", b"x", b"007"] {
            assert_eq!(code_index(bad), UNKNOWN, "{bad:?}");
        }
    }

    #[test]
    fn calls_are_counted_by_rpc_and_code_with_their_latency() {
        let (r, m) = metrics();
        let text = render(&r);
        assert!(
            text.contains(
                "driftwatch_grpc_requests_total{service=\"driftwatch.v1.Fleet\",method=\"ListHosts\",code=\"OK\"} 0"
            ),
            "{text}"
        );
        let i = m.index("/driftwatch.v1.Fleet/ListHosts");
        m.record(i, 0, Instant::now());
        m.record(i, 5, Instant::now());
        m.record(m.index("/nope.Service/X"), 12, Instant::now());
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "OK"), 1);
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "NOT_FOUND"), 1);
        assert_eq!(m.calls("/driftwatch.v1.Fleet/GetHost", "OK"), 0);
        assert_eq!(m.calls("/other", "UNIMPLEMENTED"), 1, "unmapped paths share one series");
        let text = render(&r);
        assert!(text.contains("method=\"ListHosts\",code=\"NOT_FOUND\"} 1"), "{text}");
        assert!(
            text.contains(
                "driftwatch_grpc_request_duration_seconds_count{service=\"driftwatch.v1.Fleet\",method=\"ListHosts\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"} 1"), "{text}");
    }

    fn recorder(m: &Arc<RpcMetrics>) -> Recorder {
        Recorder { metrics: m.clone(), series: 0, started: Instant::now(), code: CANCELLED }
    }

    #[test]
    fn a_stream_counts_at_its_trailers_and_a_dropped_one_as_cancelled() {
        let (_r, m) = metrics();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(GRPC_STATUS.clone(), http::HeaderValue::from_static("14"));
        let frames: Vec<Result<http_body::Frame<tonic::codegen::Bytes>, std::convert::Infallible>> =
            vec![Ok(http_body::Frame::data("x".into())), Ok(http_body::Frame::trailers(trailers))];
        let body = http_body_util_stream(frames);
        let mut rec = Box::pin(Recorded { inner: body, recorder: Some(recorder(&m)) });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(rec.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "UNAVAILABLE"), 0, "not ended yet");
        assert!(matches!(rec.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "UNAVAILABLE"), 1);
        drop(rec);
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "CANCELLED"), 0, "recorded once");
        drop(Recorded { inner: http_body_util_stream(vec![]), recorder: Some(recorder(&m)) });
        assert_eq!(m.calls("/driftwatch.v1.Fleet/ListHosts", "CANCELLED"), 1);
    }

    /// A body yielding `frames`, then its end.
    fn http_body_util_stream(
        frames: Vec<Result<http_body::Frame<tonic::codegen::Bytes>, std::convert::Infallible>>,
    ) -> Frames {
        Frames(frames.into_iter().collect())
    }

    struct Frames(
        std::collections::VecDeque<Result<http_body::Frame<tonic::codegen::Bytes>, std::convert::Infallible>>,
    );

    impl http_body::Body for Frames {
        type Data = tonic::codegen::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }
}
