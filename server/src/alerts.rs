//! `Alerts` service: list and acknowledge alerts, manage silences, read the event log.
//!
//! Reads come from the alert book; changes go through the engine (one
//! sequencer for event ids) and return once durable.

use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use driftwatch_proto::v1::{self, alerts_server::Alerts, subscribe_response::Kind};
use driftwatch_store::Store;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::alert_book::AlertBook;
use crate::audit::{AuditEntry, AuditLog};
use crate::engine::{Command, EngineHandle};
use crate::error::ServerError;
use crate::hub::EventHub;
use crate::principal::Principal;
use crate::selector::Selector;
use crate::silences::CompiledMatcher;
use crate::state::FleetState;

const MAX_EVENTS: u32 = 10_000;
const MAX_TEXT: usize = 1024;
/// Messages queued per subscriber between its task and its gRPC stream.
const SUBSCRIBER_BUFFER: usize = 256;
/// Events read from the store per page while catching up.
const CATCH_UP_PAGE: usize = 1000;

pub struct AlertsService {
    pub engine: EngineHandle,
    pub book: Arc<AlertBook>,
    pub state: Arc<FleetState>,
    pub reader: Arc<Mutex<Store>>,
    pub hub: Arc<EventHub>,
    pub shutdown: CancellationToken,
    /// A subscriber that takes nothing for this long is cut off with its resume id.
    pub stall: Duration,
    /// Configured notifiers' status, if any.
    pub notifiers: Option<Arc<dyn Fn() -> Vec<v1::NotifierStatus> + Send + Sync>>,
    /// Acknowledgements and silence changes are audited.
    pub audit: AuditLog,
    /// `max_active_silences`.
    pub limits: crate::limits::Limits,
    /// Subscriber streams per principal (shared with `Changes.WatchRollout`).
    pub subscribers: Arc<crate::limits::Subscribers>,
}

/// What a subscriber asked for, checked.
pub struct SubscribeFilter {
    min_severity: i32,
    matchers: Vec<CompiledMatcher>,
    rules: Vec<String>,
    hosts: Vec<String>,
}

/// A subscription's heartbeat interval: 1s to 300s, default 15s.
fn heartbeat_interval(r: &v1::SubscribeRequest) -> Result<Duration, String> {
    let d = driftwatch_proto::duration::from_proto_or(
        "heartbeat_interval",
        r.heartbeat_interval.as_ref(),
        Duration::from_secs(15),
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) {
        return Err("heartbeat_interval must be between 1s and 300s".into());
    }
    Ok(d)
}

impl SubscribeFilter {
    pub fn new(r: &v1::SubscribeRequest) -> Result<Self, ServerError> {
        let mut problems = Vec::new();
        if v1::Severity::try_from(r.min_severity).is_err() {
            problems.push(format!("unknown severity {}", r.min_severity));
        }
        let mut matchers = Vec::new();
        for m in &r.matchers {
            match CompiledMatcher::new(m) {
                Ok(c) => matchers.push(c),
                Err(e) => problems.push(e),
            }
        }
        if let Err(e) = heartbeat_interval(r) {
            problems.push(e);
        }
        if !problems.is_empty() {
            return Err(ServerError::InvalidArgument(problems.join("; ")));
        }
        Ok(Self { min_severity: r.min_severity, matchers, rules: r.rules.clone(), hosts: r.hosts.clone() })
    }

    pub fn matches(&self, a: &v1::Alert) -> bool {
        a.severity >= self.min_severity
            && (self.hosts.is_empty() || self.hosts.contains(&a.host_id))
            && (self.rules.is_empty()
                || self.rules.iter().any(|r| *r == a.rule || *r == format!("{}/{}", a.group, a.rule)))
            && self.matchers.iter().all(|m| m.matches(&a.labels))
    }
}

/// The subscriber's gRPC stream: what its task queued, then the status it ended
/// with (so "too slow, resume from N" arrives after every queued event).
pub struct SubscriberStream {
    rx: mpsc::Receiver<v1::SubscribeResponse>,
    end: Arc<Mutex<Option<Status>>>,
    done: bool,
    /// The principal's place, given back when the stream is dropped (its client went).
    _slot: crate::limits::Slot,
}

impl Stream for SubscriberStream {
    type Item = Result<v1::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(m))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(self.end.lock().take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why a subscriber's task stopped.
enum Stop {
    /// The client went away.
    Gone,
    /// End the stream with this status.
    Status(Status),
}

struct Subscriber {
    filter: SubscribeFilter,
    tx: mpsc::Sender<v1::SubscribeResponse>,
    /// The last event id considered (delivered or filtered out): the resume point.
    last: u64,
    heartbeat: Duration,
    stall: Duration,
}

impl Subscriber {
    async fn send(&self, kind: Kind) -> Result<(), Stop> {
        match tokio::time::timeout(self.stall, self.tx.send(v1::SubscribeResponse { kind: Some(kind) })).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::Status(Status::resource_exhausted(format!(
                "subscriber took nothing for {} ms; resume with since_event_id={}",
                self.stall.as_millis(),
                self.last
            )))),
        }
    }

    /// Deliver one event if it matches; it counts as considered either way.
    async fn offer(&mut self, e: &v1::AlertEvent) -> Result<(), Stop> {
        if e.id <= self.last {
            return Ok(());
        }
        let deliver = e.alert.as_ref().is_some_and(|a| self.filter.matches(a));
        if deliver {
            self.send(Kind::Event(e.clone())).await?;
        }
        self.last = e.id;
        Ok(())
    }
}

/// The filters of `ListAlerts`, checked.
pub struct AlertFilter {
    states: Vec<i32>,
    min_severity: i32,
    host: String,
    selector: Option<Selector>,
    rule: String,
    hide_silenced: bool,
}

impl AlertFilter {
    pub fn new(r: &v1::ListAlertsRequest) -> Result<Self, ServerError> {
        let mut problems = Vec::new();
        for s in &r.states {
            if v1::AlertState::try_from(*s).is_err() {
                problems.push(format!("unknown alert state {s}"));
            }
        }
        if v1::Severity::try_from(r.min_severity).is_err() {
            problems.push(format!("unknown severity {}", r.min_severity));
        }
        let selector = if r.selector.trim().is_empty() {
            None
        } else {
            match Selector::parse(&r.selector) {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(format!("selector: {e}"));
                    None
                }
            }
        };
        if !problems.is_empty() {
            return Err(ServerError::InvalidArgument(problems.join("; ")));
        }
        let states = if r.states.is_empty() {
            vec![v1::AlertState::Pending as i32, v1::AlertState::Firing as i32]
        } else {
            r.states.clone()
        };
        Ok(Self {
            states,
            min_severity: r.min_severity,
            host: r.host_id.clone(),
            selector,
            rule: r.rule.clone(),
            hide_silenced: r.hide_silenced,
        })
    }

    /// `host_labels` are the host's labels now (the selector is about hosts).
    pub fn matches(&self, a: &v1::Alert, host_labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
        self.states.contains(&a.state)
            && a.severity >= self.min_severity
            && (self.host.is_empty() || a.host_id == self.host)
            && (self.rule.is_empty() || a.rule == self.rule || format!("{}/{}", a.group, a.rule) == self.rule)
            && (!self.hide_silenced || a.silenced_by.is_empty())
            && self.selector.as_ref().is_none_or(|s| host_labels.is_some_and(|l| s.matches(l)))
    }
}

fn text(field: &str, v: &str, required: bool) -> Result<String, ServerError> {
    let v = v.trim();
    if required && v.is_empty() {
        return Err(ServerError::InvalidArgument(format!("{field} is required")));
    }
    if v.len() > MAX_TEXT {
        return Err(ServerError::InvalidArgument(format!("{field} is longer than {MAX_TEXT} bytes")));
    }
    Ok(v.to_string())
}

/// `host=~web-.*, severity!=low; until 2026-01-01T10:00:00Z; comment: ...` (audit detail).
fn silence_detail(s: &v1::Silence) -> String {
    let matchers: Vec<String> = s.matchers.iter().map(crate::silences::matcher_text).collect();
    let mut d = matchers.join(", ");
    if let Some(end) = &s.ends_at {
        d.push_str(&format!("; until {end}"));
    }
    if !s.comment.is_empty() {
        d.push_str(&format!("; comment: {}", s.comment));
    }
    d
}

async fn durable(d: crate::engine::Durable) -> Result<(), Status> {
    d.await.map_err(|_| Status::unavailable("store writer stopped before the change was durable"))
}

impl AlertsService {
    /// Catch up from the store after `since`, then follow the hub.
    async fn run_subscriber(
        &self,
        sub: &mut Subscriber,
        mut live: broadcast::Receiver<Arc<v1::AlertEvent>>,
        catch_up: bool,
    ) -> Stop {
        if catch_up {
            loop {
                let reader = self.reader.clone();
                let after = sub.last;
                let page = tokio::task::spawn_blocking(move || reader.lock().events_after(after, CATCH_UP_PAGE)).await;
                let page = match page {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "subscriber catch-up read failed");
                        return Stop::Status(Status::unavailable(format!(
                            "cannot read the event log; resume with since_event_id={}",
                            sub.last
                        )));
                    }
                    Err(e) => return Stop::Status(Status::unavailable(format!("catch-up task: {e}"))),
                };
                let n = page.len();
                for rec in page {
                    match v1::AlertEvent::decode(rec.payload.as_slice()) {
                        Ok(e) => {
                            if let Err(stop) = sub.offer(&e).await {
                                return stop;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(event = rec.id, error = %e, "stored event does not decode; skipped");
                            sub.last = sub.last.max(rec.id);
                        }
                    }
                }
                if n < CATCH_UP_PAGE {
                    break;
                }
            }
        }
        let mut beat = tokio::time::interval(sub.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Stop::Status(Status::unavailable(format!(
                        "server shutting down; resume with since_event_id={}", sub.last
                    )));
                }
                _ = sub.tx.closed() => return Stop::Gone,
                _ = beat.tick() => {
                    let hb = v1::StreamHeartbeat {
                        at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                        last_event_id: sub.last,
                    };
                    if let Err(stop) = sub.send(Kind::Heartbeat(hb)).await {
                        return stop;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if let Err(stop) = sub.offer(&e).await {
                            return stop;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Stop::Status(Status::resource_exhausted(format!(
                            "subscriber fell {n} events behind; resume with since_event_id={}", sub.last
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Stop::Status(Status::unavailable(format!(
                            "server shutting down; resume with since_event_id={}", sub.last
                        )));
                    }
                },
            }
        }
    }
}

#[tonic::async_trait]
impl Alerts for AlertsService {
    type SubscribeStream = SubscriberStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let slot = self.subscribers.admit(&Principal::of(&request))?;
        let r = request.into_inner();
        let filter = SubscribeFilter::new(&r)?;
        // Follow the hub before reading anything: an event committed from here on is
        // in `live`, one committed before is in the store (or the firing snapshot).
        let live = self.hub.subscribe();
        let newest = self.hub.last_id();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let end = Arc::new(Mutex::new(None));
        let heartbeat = heartbeat_interval(&r).map_err(ServerError::InvalidArgument)?;
        let catch_up = r.since_event_id > 0;
        let last = if catch_up { r.since_event_id } else { newest };
        let mut sub = Subscriber { filter, tx, last, heartbeat, stall: self.stall };
        if r.include_firing {
            let firing = self.book.alerts_where(|a| a.state == v1::AlertState::Firing as i32 && sub.filter.matches(a));
            for a in firing {
                // The buffer is fresh; a snapshot larger than it waits for the client.
                if sub.send(Kind::Firing(a)).await.is_err() {
                    return Err(Status::cancelled("subscriber went away"));
                }
            }
        }
        let this = AlertsService {
            engine: self.engine.clone(),
            book: self.book.clone(),
            state: self.state.clone(),
            reader: self.reader.clone(),
            hub: self.hub.clone(),
            shutdown: self.shutdown.clone(),
            stall: self.stall,
            notifiers: None,
            audit: self.audit.clone(),
            limits: self.limits,
            subscribers: self.subscribers.clone(),
        };
        let end_slot = end.clone();
        self.engine.metrics().subscribers.inc();
        let metrics = self.engine.metrics();
        tokio::spawn(async move {
            let stop = this.run_subscriber(&mut sub, live, catch_up).await;
            metrics.subscribers.dec();
            if let Stop::Status(s) = stop {
                tracing::info!(reason = %s.message(), "subscriber stream ended");
                *end_slot.lock() = Some(s);
            }
            // Only now close the channel: the stream yields the status after the queue.
            drop(sub);
        });
        Ok(Response::new(SubscriberStream { rx, end, done: false, _slot: slot }))
    }

    async fn list_notifiers(
        &self,
        _: Request<v1::ListNotifiersRequest>,
    ) -> Result<Response<v1::ListNotifiersResponse>, Status> {
        let notifiers = self.notifiers.as_ref().map(|f| f()).unwrap_or_default();
        Ok(Response::new(v1::ListNotifiersResponse { notifiers }))
    }

    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let r = request.into_inner();
        let filter = AlertFilter::new(&r)?;
        let mut alerts = self.book.alerts_where(|a| {
            let labels = self.state.hosts.get(&a.host_id).map(|h| h.labels.clone());
            filter.matches(a, labels.as_ref())
        });
        let changed = |a: &v1::Alert| {
            [&a.resolved_at, &a.fired_at, &a.active_since]
                .into_iter()
                .flatten()
                .map(driftwatch_proto::timestamp_millis)
                .max()
                .unwrap_or(0)
        };
        alerts.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| changed(b).cmp(&changed(a)))
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        if r.limit > 0 {
            alerts.truncate(r.limit as usize);
        }
        Ok(Response::new(v1::ListAlertsResponse { alerts }))
    }

    async fn get_alert(&self, request: Request<v1::GetAlertRequest>) -> Result<Response<v1::Alert>, Status> {
        let fp = request.into_inner().fingerprint;
        self.book
            .get(&fp)
            .map(Response::new)
            .ok_or_else(|| ServerError::NotFound(format!("no alert with fingerprint {fp:?}")).into())
    }

    async fn acknowledge(&self, request: Request<v1::AcknowledgeRequest>) -> Result<Response<v1::Alert>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let fingerprint = text("fingerprint", &r.fingerprint, true)?;
        let comment = text("comment", &r.comment, false)?;
        let (by, note) = (actor.clone(), comment.clone());
        let (alert, done) =
            self.engine.command(move |reply| Command::Acknowledge { fingerprint, by, comment, reply }).await??;
        durable(done).await?;
        let mut detail = format!("{}/{}", alert.group, alert.rule);
        for (what, v) in [("key", &alert.key), ("metric", &alert.metric)] {
            if !v.is_empty() {
                detail.push_str(&format!(" {what} {v}"));
            }
        }
        if !note.is_empty() {
            detail.push_str(&format!("; comment: {note}"));
        }
        self.audit
            .record(AuditEntry {
                actor,
                action: "alert.acknowledged".into(),
                target: alert.fingerprint.clone(),
                host_id: alert.host_id.clone(),
                path: alert.path.clone(),
                detail,
                ..Default::default()
            })
            .await;
        Ok(Response::new(alert))
    }

    async fn create_silence(
        &self,
        request: Request<v1::CreateSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let silence = crate::silences::validate_create(&r, &actor, driftwatch_proto::now_millis())?;
        let max_active = self.limits.max_active_silences;
        let (silence, done) =
            self.engine.command(move |reply| Command::CreateSilence { silence, max_active, reply }).await??;
        durable(done).await?;
        tracing::info!(silence = %silence.id, actor = %silence.actor, matchers = silence.matchers.len(), "silence created");
        self.audit
            .record(AuditEntry {
                actor,
                action: "silence.created".into(),
                target: silence.id.clone(),
                detail: silence_detail(&silence),
                ..Default::default()
            })
            .await;
        Ok(Response::new(silence))
    }

    async fn list_silences(
        &self,
        request: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        let r = request.into_inner();
        let now = driftwatch_proto::now_millis();
        let mut silences = self.book.silence_views(now, r.include_expired);
        silences.sort_by_key(|s| (s.state, std::cmp::Reverse(s.starts_at.map(|t| t.seconds).unwrap_or(0))));
        Ok(Response::new(v1::ListSilencesResponse { silences }))
    }

    async fn expire_silence(
        &self,
        request: Request<v1::ExpireSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let actor = Principal::of(&request).to_string();
        let id = text("id", &request.into_inner().id, true)?;
        let (silence, done) = self.engine.command(move |reply| Command::ExpireSilence { id, reply }).await??;
        durable(done).await?;
        tracing::info!(silence = %silence.id, "silence expired");
        self.audit
            .record(AuditEntry {
                actor,
                action: "silence.expired".into(),
                target: silence.id.clone(),
                detail: format!("created by {}; {}", silence.actor, silence_detail(&silence)),
                ..Default::default()
            })
            .await;
        Ok(Response::new(silence))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(MAX_EVENTS) } as usize;
        let reader = self.reader.clone();
        let records = tokio::task::spawn_blocking(move || reader.lock().events_after(r.after_id, limit))
            .await
            .map_err(|e| ServerError::Unavailable(format!("event read task: {e}")))?
            .map_err(ServerError::from)?;
        let events = records
            .into_iter()
            .filter_map(|rec| match v1::AlertEvent::decode(rec.payload.as_slice()) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(event = rec.id, error = %e, "stored event does not decode; skipped");
                    None
                }
            })
            .collect();
        Ok(Response::new(v1::ListEventsResponse { events }))
    }
}
