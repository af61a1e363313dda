//! Notifiers: webhooks and Alertmanagers told about alert events, durably.
//!
//! Routing happens on the rule-engine thread: for each event, [`Notifiers`] (the
//! engine's [`EventRouter`]) returns the outbox rows of every notifier target whose
//! filters take it, and the engine writes them in the same transaction as the
//! event. A delivery is therefore never lost (no row without a durable event) and
//! never invented. One event is one row per target (`(notifier, event_id, repeat)`
//! is unique in the store). Once that transaction has committed, the writer thread
//! calls [`EventRouter::committed`], which wakes the targets that got rows: a
//! target reads its outbox when there is something to read, never before.
//!
//! A target is one endpoint: a webhook, or one Alertmanager instance (each
//! instance gets every notification). Each target has one delivery task that reads
//! its due rows through the read connection, POSTs them, and records the outcome
//! through the writer before the next: delivered, or retried later with
//! exponential backoff (`backoff` doubling to `max_backoff`, jittered). A target's
//! notifications about one alert go out in event order; different alerts do not
//! wait for each other. A circuit breaker per target stops trying after
//! `breaker_failures` consecutive failures and lets one probe through every
//! `breaker_cooldown`; when the endpoint answers again, every waiting row becomes
//! due at once.
//!
//! Nothing is dropped for an outage: a row stays until delivered, with retries at
//! most `max_backoff` (1 minute) apart, so a 10-minute outage delays delivery by
//! at most about a minute after the endpoint is back. The only exception is the
//! explicit age limit `max_age` (default 24 hours): older undelivered rows are
//! dropped, counted (`driftwatch_notifications_expired_total`) and logged. A
//! restart resumes the outbox where it was.
//!
//! Delivery is at least once: a crash after the endpoint answered 2xx but before
//! the outcome was committed sends that notification again after the restart,
//! with the same `Idempotency-Key`.
//!
//! Webhooks re-notify an alert still firing every `repeat_interval` (a `repeat`
//! row keyed by the firing event and the repeat number, so a restart neither
//! repeats twice nor forgets: the newest row per alert is read back at start).
//! Alertmanager targets instead re-send the current firing alerts every
//! `resend_interval` (see [`alertmanager`]).
//!
//! Silenced alerts are not notified while silenced (their resolution neither);
//! when a silence ends over a firing alert, the `unsilenced` event is notified to
//! notifiers that take `fired`, since its firing was held back.
//!
//! Notifications link to the dashboard under `external_url` ([`links`]).

pub mod alertmanager;
pub mod breaker;
pub mod config;
pub mod links;
pub mod transport;
pub mod webhook;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use driftwatch_proto::v1;
use driftwatch_store::{Op, OutboxRecord, Store};
use prost::Message;
use tokio_util::sync::CancellationToken;

pub use config::{Filter, NotifierConfig, NotifierFile, NotifierKind};

use crate::alert_book::AlertBook;
use crate::engine::EventRouter;
use crate::error::ServerError;
use crate::metrics::{Metrics, NotifierLabels};
use crate::writer::WriteSender;
use breaker::Breaker;

/// Outbox `kind` of a re-notification.
pub const REPEAT_KIND: &str = "repeat";

/// The last notification of an alert's current firing episode (webhook repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LastSent {
    event_id: u64,
    repeat: u32,
    at_ms: i64,
}

/// Counters and state shown by `ListNotifiers`.
#[derive(Debug)]
struct TargetState {
    breaker: Breaker,
    delivered: u64,
    failed: u64,
    expired: u64,
    pending: u64,
    last_success_ms: Option<i64>,
    last_failure_ms: Option<i64>,
    last_error: String,
}

/// One endpoint: a webhook, or one Alertmanager instance.
struct Target {
    /// Index into `Notifiers::configs`.
    notifier: usize,
    /// The outbox's `notifier` column: the name, plus `@url` for Alertmanager instances.
    key: String,
    /// As shown in status and logs (a URL from `url_file` redacted); never in metrics.
    url: String,
    /// Where to POST; never shown.
    endpoint: String,
    /// The notifier's client (its own when it has `ca_file` or a client certificate).
    client: reqwest::Client,
    /// The `Authorization` header, if any (marked sensitive).
    authorization: Option<reqwest::header::HeaderValue>,
    /// What error texts must not show (see [`transport::secrets`]).
    secrets: Vec<String>,
    labels: NotifierLabels,
    /// Woken when rows for this target are durable (or a repeat was queued).
    wake: tokio::sync::Notify,
    /// Highest event id routed to this target, and the highest it was woken for.
    routed: AtomicU64,
    woken: AtomicU64,
    state: Mutex<TargetState>,
    /// Webhooks with repeats: fingerprint → last notification of the firing episode.
    repeats: Mutex<HashMap<String, LastSent>>,
}

/// The configured notifiers. Built once at start; shared by the engine (routing),
/// the delivery tasks and the Alerts API (status).
pub struct Notifiers {
    configs: Vec<NotifierConfig>,
    targets: Vec<Arc<Target>>,
    metrics: Arc<Metrics>,
    /// Where notifications link to (`external_url`).
    links: links::Links,
    /// Completed webhook repeat scans (tests wait on it instead of sleeping).
    repeat_passes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifiers").field("targets", &self.targets.iter().map(|t| &t.key).collect::<Vec<_>>()).finish()
    }
}

/// The delivery tasks; they stop when the shutdown token given to [`Notifiers::start`] is cancelled.
pub struct NotifierTasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl NotifierTasks {
    /// Wait for the tasks to finish (an attempt in flight is abandoned: the row stays
    /// queued and is sent after the restart).
    pub async fn join(self, deadline: Duration) {
        let all = futures_join(self.handles);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("notifier tasks did not stop within the deadline");
        }
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

impl Notifiers {
    pub fn new(
        configs: Vec<NotifierConfig>,
        links: links::Links,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ServerError> {
        let client_error =
            |name: &str, e: reqwest::Error| ServerError::Unavailable(format!("notifier {name}: HTTP client: {e}"));
        // One client for the notifiers with the system roots and no client certificate
        // (which loads the roots only when one of them speaks https://).
        let plain = configs.iter().filter(|c| c.transport.is_plain());
        let system_roots = plain.clone().any(NotifierConfig::any_https);
        let shared = match plain.clone().next() {
            Some(_) => {
                Some(transport::Transport::default().client(system_roots).map_err(|e| client_error("(shared)", e))?)
            }
            None => None,
        };
        let mut targets = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let client = match &shared {
                Some(shared) if c.transport.is_plain() => shared.clone(),
                _ => c.transport.client(true).map_err(|e| client_error(&c.name, e))?,
            };
            let authorization = c.transport.authorization.clone();
            let endpoints: Vec<(String, String, String)> = match &c.kind {
                NotifierKind::Webhook { url, .. } => vec![(c.name.clone(), url.shown(), url.as_str().to_string())],
                NotifierKind::Alertmanager { urls, .. } => urls
                    .iter()
                    .map(|u| (format!("{}@{u}", c.name), u.clone(), format!("{u}{}", alertmanager::ALERTS_PATH)))
                    .collect(),
            };
            let url_secret = match &c.kind {
                NotifierKind::Webhook { url, .. } => url.secret(),
                NotifierKind::Alertmanager { .. } => None,
            };
            let secrets = transport::secrets(url_secret, authorization.as_ref());
            for (n, (key, url, endpoint)) in endpoints.into_iter().enumerate() {
                // Metrics name a target by position: a URL (even redacted) names an
                // internal host, and /metrics is scraped by more people than read status.
                let labels = vec![("notifier".to_string(), c.name.clone()), ("target".to_string(), n.to_string())];
                // Every target's series exist from the start (the circuit 0: closed).
                metrics.notifier_circuit_open.get_or_create(&labels).set(0);
                let _ = metrics.notifications_delivered.get_or_create(&labels);
                let _ = metrics.notification_failures.get_or_create(&labels);
                let _ = metrics.notifications_expired.get_or_create(&labels);
                let _ = metrics.notifications_pending.get_or_create(&labels);
                if authorization.is_some() && endpoint.starts_with("http://") {
                    tracing::warn!(notifier = %c.name, %url, "authorization_file over http://: the header is sent in clear");
                }
                targets.push(Arc::new(Target {
                    notifier: i,
                    key,
                    url,
                    endpoint,
                    client: client.clone(),
                    authorization: authorization.clone(),
                    secrets: secrets.clone(),
                    labels,
                    wake: tokio::sync::Notify::new(),
                    routed: AtomicU64::new(0),
                    woken: AtomicU64::new(0),
                    state: Mutex::new(TargetState {
                        breaker: Breaker::new(c.delivery.breaker_failures, c.delivery.breaker_cooldown),
                        delivered: 0,
                        failed: 0,
                        expired: 0,
                        pending: 0,
                        last_success_ms: None,
                        last_failure_ms: None,
                        last_error: String::new(),
                    }),
                    repeats: Mutex::new(HashMap::new()),
                }));
            }
            if let NotifierKind::Webhook { secret: None, url, .. } = &c.kind {
                tracing::warn!(notifier = %c.name, url = %url.shown(), "webhook without secret_file: requests are not signed");
            }
        }
        Ok(Arc::new(Self { configs, targets, metrics, links, repeat_passes: Default::default() }))
    }

    /// How many webhook repeat scans have completed.
    pub fn repeat_passes(&self) -> u64 {
        self.repeat_passes.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn route(&self, ev: &v1::AlertEvent, now_ms: i64) -> Vec<Op> {
        let Some(alert) = &ev.alert else { return Vec::new() };
        let kind = v1::AlertEventKind::try_from(ev.kind).unwrap_or(v1::AlertEventKind::Unspecified);
        let mut ops = Vec::new();
        let mut payload: Option<Vec<u8>> = None;
        for t in &self.targets {
            let cfg = &self.configs[t.notifier];
            let notify = routes(&cfg.filter, kind, alert);
            if matches!(cfg.kind, NotifierKind::Webhook { repeat_interval: Some(_), .. }) {
                let mut reps = t.repeats.lock();
                match kind {
                    v1::AlertEventKind::Resolved | v1::AlertEventKind::Cleared => {
                        reps.remove(&alert.fingerprint);
                    }
                    v1::AlertEventKind::Fired | v1::AlertEventKind::Unsilenced if notify => {
                        reps.insert(alert.fingerprint.clone(), LastSent { event_id: ev.id, repeat: 0, at_ms: now_ms });
                    }
                    _ => {}
                }
            }
            if !notify {
                continue;
            }
            ops.push(Op::OutboxAdd(OutboxRecord {
                notifier: t.key.clone(),
                event_id: ev.id,
                repeat: 0,
                fingerprint: alert.fingerprint.clone(),
                kind: driftwatch_proto::alert_event_kind_name(kind).to_string(),
                payload: payload.get_or_insert_with(|| ev.encode_to_vec()).clone(),
                next_attempt_ms: now_ms,
                created_ms: now_ms,
                ..Default::default()
            }));
            // Not woken yet: the row is not committed (see `committed`).
            t.routed.fetch_max(ev.id, Ordering::AcqRel);
        }
        ops
    }

    /// Every target's deliveries, failures, outbox and circuit (`Alerts.ListNotifiers`).
    /// Counts are since the server started; `pending` is as of the target's last look
    /// at its outbox (at most a few seconds old).
    pub fn status(&self) -> Vec<v1::NotifierStatus> {
        let now = Instant::now();
        let ts = |ms: Option<i64>| ms.map(driftwatch_proto::timestamp_from_millis);
        self.targets
            .iter()
            .map(|t| {
                let cfg = &self.configs[t.notifier];
                let s = t.state.lock();
                v1::NotifierStatus {
                    name: cfg.name.clone(),
                    kind: cfg.kind_name().to_string(),
                    url: t.url.clone(),
                    delivered: s.delivered,
                    failed_attempts: s.failed,
                    pending: s.pending,
                    last_success: ts(s.last_success_ms),
                    last_failure: ts(s.last_failure_ms),
                    last_error: s.last_error.clone(),
                    circuit: s.breaker.state_name(now).to_string(),
                }
            })
            .collect()
    }

    /// Start one delivery task per target, plus the webhook repeat scan and the
    /// Alertmanager resend loops. They read through `reader`, write through `writer`,
    /// look at the alert book, and stop when `shutdown` is cancelled.
    pub fn start(
        self: &Arc<Self>,
        writer: WriteSender,
        reader: Arc<Mutex<Store>>,
        book: Arc<AlertBook>,
        shutdown: CancellationToken,
    ) -> NotifierTasks {
        let ctx = Arc::new(worker::Ctx { notifiers: self.clone(), writer, reader, book, shutdown });
        let mut handles = Vec::new();
        if self.targets.is_empty() {
            return NotifierTasks { handles };
        }
        handles.push(tokio::spawn(worker::startup_and_repeats(ctx.clone())));
        for t in &self.targets {
            handles.push(tokio::spawn(worker::deliver_loop(ctx.clone(), t.clone())));
            if let NotifierKind::Alertmanager { resend_interval, .. } = self.configs[t.notifier].kind {
                handles.push(tokio::spawn(worker::resend_loop(ctx.clone(), t.clone(), resend_interval)));
            }
        }
        tracing::info!(notifiers = self.configs.len(), targets = self.targets.len(), "notifiers started");
        NotifierTasks { handles }
    }
}

impl EventRouter for Notifiers {
    fn route(&self, event: &v1::AlertEvent) -> Vec<Op> {
        Notifiers::route(self, event, driftwatch_proto::now_millis())
    }

    /// Called on the writer thread after the commit holding events up to
    /// `last_event_id`: wake every target that got rows since it was last woken.
    fn committed(&self, last_event_id: u64) {
        for t in &self.targets {
            let routed = t.routed.load(Ordering::Acquire);
            if routed > t.woken.load(Ordering::Acquire) {
                // A target routed a later event (not yet committed) is woken again then.
                t.woken.fetch_max(routed.min(last_event_id), Ordering::AcqRel);
                t.wake.notify_one();
            }
        }
    }
}

/// Does this notifier take this event?
pub fn routes(filter: &Filter, kind: v1::AlertEventKind, alert: &v1::Alert) -> bool {
    if !filter.selects(alert) {
        return false;
    }
    let silenced = !alert.silenced_by.is_empty();
    match kind {
        v1::AlertEventKind::Silenced | v1::AlertEventKind::Unsilenced if filter.wants(kind) => true,
        // Muted: nothing about a silenced alert goes out, its resolution neither.
        _ if silenced => false,
        // A silence ended over a firing alert whose firing was held back.
        v1::AlertEventKind::Unsilenced => {
            alert.state == v1::AlertState::Firing as i32 && filter.wants(v1::AlertEventKind::Fired)
        }
        k => filter.wants(k),
    }
}

#[cfg(test)]
mod tests;
