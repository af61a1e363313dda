//! `Alerts` service: list and acknowledge alerts, manage silences, read the event log.
//!
//! Reads come from the engine's alert book; changes go through the engine (one
//! sequencer for event ids) and return once durable.

use std::sync::{Arc, Mutex};

use driftwatch_proto::v1::{self, alerts_server::Alerts};
use driftwatch_store::Store;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::engine::{Command, EngineHandle};
use crate::error::ServerError;
use crate::selector::Selector;
use crate::state::FleetState;

const MAX_EVENTS: u32 = 10_000;
const MAX_TEXT: usize = 1024;

pub struct AlertsService {
    pub engine: EngineHandle,
    pub state: Arc<FleetState>,
    pub reader: Arc<Mutex<Store>>,
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

async fn durable(d: crate::engine::Durable) -> Result<(), Status> {
    d.await.map_err(|_| Status::unavailable("store writer stopped before the change was durable"))
}

#[tonic::async_trait]
impl Alerts for AlertsService {
    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let r = request.into_inner();
        let filter = AlertFilter::new(&r)?;
        let mut alerts: Vec<v1::Alert> = {
            let book = self.engine.book.read().expect("alert book lock");
            book.alerts
                .values()
                .filter(|t| {
                    let labels = self.state.hosts.get(&t.alert.host_id).map(|h| h.labels.clone());
                    filter.matches(&t.alert, labels.as_ref())
                })
                .map(|t| t.alert.clone())
                .collect()
        };
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
        let book = self.engine.book.read().expect("alert book lock");
        book.alerts
            .get(&fp)
            .map(|t| Response::new(t.alert.clone()))
            .ok_or_else(|| ServerError::NotFound(format!("no alert with fingerprint {fp:?}")).into())
    }

    async fn acknowledge(&self, request: Request<v1::AcknowledgeRequest>) -> Result<Response<v1::Alert>, Status> {
        let r = request.into_inner();
        let fingerprint = text("fingerprint", &r.fingerprint, true)?;
        let by = text("by", &r.by, true)?;
        let comment = text("comment", &r.comment, false)?;
        let (alert, done) =
            self.engine.command(move |reply| Command::Acknowledge { fingerprint, by, comment, reply }).await??;
        durable(done).await?;
        Ok(Response::new(alert))
    }

    async fn create_silence(
        &self,
        request: Request<v1::CreateSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let r = request.into_inner();
        let silence = crate::silences::validate_create(&r, driftwatch_proto::now_millis())?;
        let (silence, done) = self.engine.command(move |reply| Command::CreateSilence { silence, reply }).await??;
        durable(done).await?;
        tracing::info!(silence = %silence.id, by = %silence.created_by, matchers = silence.matchers.len(), "silence created");
        Ok(Response::new(silence))
    }

    async fn list_silences(
        &self,
        request: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        let r = request.into_inner();
        let now = driftwatch_proto::now_millis();
        let book = self.engine.book.read().expect("alert book lock");
        let mut silences: Vec<v1::Silence> = book
            .silences
            .values()
            .map(|s| s.view(now))
            .filter(|s| r.include_expired || s.state != v1::SilenceState::Expired as i32)
            .collect();
        silences.sort_by_key(|s| (s.state, std::cmp::Reverse(s.starts_at.map(|t| t.seconds).unwrap_or(0))));
        Ok(Response::new(v1::ListSilencesResponse { silences }))
    }

    async fn expire_silence(
        &self,
        request: Request<v1::ExpireSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let id = text("id", &request.into_inner().id, true)?;
        let (silence, done) = self.engine.command(move |reply| Command::ExpireSilence { id, reply }).await??;
        durable(done).await?;
        tracing::info!(silence = %silence.id, "silence expired");
        Ok(Response::new(silence))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(MAX_EVENTS) } as usize;
        let reader = self.reader.clone();
        let records =
            tokio::task::spawn_blocking(move || reader.lock().expect("reader lock").events_after(r.after_id, limit))
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
