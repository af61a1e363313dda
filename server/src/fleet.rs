//! `Fleet` query service: reads the in-memory state; only resource summaries
//! (history) read the store, through the read connection, off the async workers.

use std::collections::BTreeMap;
use std::sync::Arc;

use driftwatch_proto::v1::{self, fleet_server::Fleet, value::Kind};
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::selector::Selector;
use crate::state::{FleetState, unknown_file, unknown_host};

#[derive(Clone)]
pub struct FleetService {
    pub state: Arc<FleetState>,
    pub baselines: Arc<crate::baselines::SharedBaselines>,
    pub reader: Arc<parking_lot::Mutex<driftwatch_store::Store>>,
    /// Host identities (enrollment, revocation, server-side labels).
    pub identities: Arc<crate::enroll::Identities>,
    pub writer: crate::writer::WriteSender,
    pub engine: crate::engine::EngineHandle,
    /// Label limits (`SetHostLabels`).
    pub limits: crate::limits::Limits,
}

/// Longest window a resource summary may cover.
const MAX_SUMMARY_WINDOW_MS: i64 = 400 * 24 * 3600 * 1000;

#[derive(Default)]
struct Agg {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: (i64, f64),
}

impl Agg {
    fn add(&mut self, count: u64, sum: f64, min: f64, max: f64, last: (i64, f64)) {
        if count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = min;
            self.max = max;
        } else {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        self.count += count;
        self.sum += sum;
        if last.0 >= self.last.0 {
            self.last = last;
        }
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn revoke_host(&self, request: Request<v1::RevokeHostRequest>) -> Result<Response<v1::Host>, Status> {
        let actor = crate::principal::Principal::of(&request);
        let r = request.into_inner();
        let id = r.host_id.trim();
        self.identities.revoke_host(id, &r.reason, actor.name()).await?;
        // Durable first; then the open stream goes at once, with the reason.
        if let Some(h) = self.state.hosts.get(id)
            && let Some(c) = &h.connection
        {
            let why = if r.reason.trim().is_empty() { String::new() } else { format!(": {}", r.reason.trim()) };
            let _ = c.cut.send(Some(Status::permission_denied(format!("host '{id}' was revoked{why}"))));
        }
        tracing::info!(host = %id, %actor, reason = %r.reason, "host revoked");
        Ok(Response::new(self.host(id).unwrap_or_else(|_| v1::Host {
            summary: Some(v1::HostSummary {
                host_id: id.to_string(),
                identity: self.identities.identity_of(id),
                ..Default::default()
            }),
            files: Vec::new(),
        })))
    }

    async fn set_host_labels(&self, request: Request<v1::SetHostLabelsRequest>) -> Result<Response<v1::Host>, Status> {
        let actor = crate::principal::Principal::of(&request);
        let r = request.into_inner();
        let id = r.host_id.trim().to_string();
        self.check_labels(&id, &r)?;
        self.identities.set_labels(&id, &r.set, &r.remove, &r.reason, actor.name()).await?;
        let record = {
            let mut h =
                self.state.hosts.get_mut(&id).ok_or_else(|| ServerError::NotFound(format!("no host '{id}'")))?;
            for k in &r.remove {
                h.labels.remove(k);
            }
            h.labels.extend(r.set.clone());
            h.record(&id)
        };
        let _ = self.writer.send(crate::writer::WriteItem { host: Some(record), ..Default::default() }).await;
        // Which rules select the host may have changed.
        self.engine.send(crate::engine::EvalMsg::Reevaluate { host: Some(id.clone()) });
        Ok(Response::new(self.host(&id)?))
    }

    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let selector = Selector::parse(&request.get_ref().selector).map_err(ServerError::InvalidArgument)?;
        let mut hosts: Vec<v1::HostSummary> = self
            .state
            .hosts
            .iter()
            .filter(|h| selector.matches(&h.labels))
            .map(|h| self.summary(&h, h.key()))
            .collect();
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(Response::new(v1::ListHostsResponse { hosts }))
    }

    async fn get_host(&self, request: Request<v1::GetHostRequest>) -> Result<Response<v1::Host>, Status> {
        let id = required(&request.get_ref().host_id, "host_id")?;
        Ok(Response::new(self.host(id)?))
    }

    async fn get_file(&self, request: Request<v1::GetFileRequest>) -> Result<Response<v1::File>, Status> {
        let r = request.get_ref();
        let id = required(&r.host_id, "host_id")?;
        let path = required(&r.path, "path")?;
        let h = self.state.hosts.get(id).ok_or_else(|| unknown_host(id))?;
        let f = h.files.get(path).ok_or_else(|| unknown_file(id, path))?;
        let mut state = f.state();
        for kv in &mut state.keys {
            shorten(kv.value.as_mut());
        }
        Ok(Response::new(v1::File {
            host_id: id.to_string(),
            state: Some(state),
            updated_at: Some(driftwatch_proto::timestamp_from_millis(f.updated_ms)),
            seq: f.seq,
        }))
    }

    async fn get_resource_summary(
        &self,
        request: Request<v1::GetResourceSummaryRequest>,
    ) -> Result<Response<v1::GetResourceSummaryResponse>, Status> {
        Ok(Response::new(self.resource_summary(request.into_inner()).await?))
    }

    async fn diff(&self, request: Request<v1::DiffRequest>) -> Result<Response<v1::DiffResponse>, Status> {
        let r = request.get_ref();
        let left_host = required(&r.host_id, "host_id")?;
        let path = required(&r.path, "path")?;
        if r.against_baseline {
            return Ok(Response::new(self.diff_baseline(left_host, path).await?));
        }
        let right_host = required(&r.other_host_id, "other_host_id")?;
        let right_path = if r.other_path.is_empty() { path } else { r.other_path.as_str() };
        let (left, left_hash) = self.file_keys(left_host, path)?;
        let (right, right_hash) = self.file_keys(right_host, right_path)?;
        let mut out = diff_keys(&left, &right);
        out.left_content_hash = left_hash;
        out.right_content_hash = right_hash;
        Ok(Response::new(out))
    }
}

impl FleetService {
    /// A label change against the label limits: what it sets, and how many labels the
    /// host would have.
    fn check_labels(&self, id: &str, r: &v1::SetHostLabelsRequest) -> Result<(), ServerError> {
        let whose = format!("SetHostLabels for host '{id}'");
        let after = {
            let h = self.state.hosts.get(id).ok_or_else(|| ServerError::NotFound(format!("no host '{id}'")))?;
            let mut labels = h.labels.clone();
            for k in &r.remove {
                labels.remove(k);
            }
            labels.extend(r.set.clone());
            labels.len()
        };
        let checked = r.set.iter().try_for_each(|(k, v)| self.limits.check_label(k, v, &whose));
        checked
            .and_then(|()| self.limits.check_label_count(after, &whose))
            .map_err(|b| b.refuse(&self.limits, &self.engine.metrics()))
    }

    /// One host with its files and identity.
    fn host(&self, id: &str) -> Result<v1::Host, Status> {
        let h = self.state.hosts.get(id).ok_or_else(|| unknown_host(id))?;
        let files = h
            .files
            .iter()
            .map(|(path, f)| {
                let s = f.state();
                v1::FileSummary {
                    path: path.clone(),
                    format: s.format,
                    status: s.status,
                    size: s.size,
                    key_count: s.keys.len() as u32,
                    content_hash: s.content_hash,
                    modified_at: s.modified_at,
                    error: s.error,
                    updated_at: Some(driftwatch_proto::timestamp_from_millis(f.updated_ms)),
                }
            })
            .collect();
        Ok(v1::Host { summary: Some(self.summary(&h, id)), files })
    }

    fn summary(&self, h: &crate::state::HostEntry, id: &str) -> v1::HostSummary {
        v1::HostSummary { identity: self.identities.identity_of(id), ..h.summary(id) }
    }
}

impl FleetService {
    async fn resource_summary(
        &self,
        r: v1::GetResourceSummaryRequest,
    ) -> Result<v1::GetResourceSummaryResponse, ServerError> {
        let host = required(&r.host_id, "host_id")?.to_string();
        if !self.state.hosts.contains_key(&host) {
            return Err(unknown_host(&host));
        }
        let window = driftwatch_proto::duration::from_proto_or(
            "window",
            r.window.as_ref(),
            std::time::Duration::from_secs(3600),
        )
        .map_err(ServerError::InvalidArgument)?;
        let window_ms = window.as_millis() as i64;
        if !(1..=MAX_SUMMARY_WINDOW_MS).contains(&window_ms) {
            return Err(ServerError::InvalidArgument("window must be between 1ms and 400d".into()));
        }
        let to = driftwatch_proto::now_millis();
        let from = to - window_ms;
        let reader = self.reader.clone();
        let h = host.clone();
        let (raw, rollups) = tokio::task::spawn_blocking(move || {
            let store = reader.lock();
            Ok::<_, driftwatch_store::StoreError>((
                store.resource_history(&h, from, to + 1)?,
                store.resource_rollups(&h, from, to + 1)?,
            ))
        })
        .await
        .map_err(|e| ServerError::Unavailable(format!("summary task: {e}")))??;
        let wanted = |m: &str| r.metrics.is_empty() || r.metrics.iter().any(|w| w == m);
        let mut aggs: BTreeMap<String, Agg> = BTreeMap::new();
        for roll in rollups.iter().filter(|x| wanted(&x.metric)) {
            let mid = roll.bucket_ms;
            aggs.entry(roll.metric.clone()).or_default().add(
                roll.count,
                roll.sum,
                roll.min,
                roll.max,
                (mid, roll.mean()),
            );
        }
        for rec in &raw {
            use prost::Message;
            let Ok(sample) = v1::ResourceSample::decode(rec.sample.as_slice()) else { continue };
            for (m, v) in driftwatch_rules::resource_metrics(&sample) {
                if v.is_finite() && wanted(&m) {
                    aggs.entry(m).or_default().add(1, v, v, v, (rec.sampled_ms, v));
                }
            }
        }
        let metrics = aggs
            .into_iter()
            .map(|(metric, a)| v1::MetricSummary {
                metric,
                count: a.count,
                avg: a.sum / a.count as f64,
                min: a.min,
                max: a.max,
                last: a.last.1,
            })
            .collect();
        Ok(v1::GetResourceSummaryResponse {
            host_id: host,
            from: Some(driftwatch_proto::timestamp_from_millis(from)),
            to: Some(driftwatch_proto::timestamp_from_millis(to)),
            metrics,
        })
    }

    /// The host's effective baseline (left) against its current file (right).
    async fn diff_baseline(&self, host: &str, path: &str) -> Result<v1::DiffResponse, ServerError> {
        let labels = self.state.hosts.get(host).ok_or_else(|| unknown_host(host))?.labels.clone();
        let (right, right_hash) = self.file_keys(host, path)?;
        let set = self.baselines.current();
        let b = set.effective(host, &labels).ok_or_else(|| {
            ServerError::NotFound(format!("no baseline applies to host '{host}' (PinBaseline makes one)"))
        })?;
        let expected = b.files.iter().find(|f| f.path == path).ok_or_else(|| {
            ServerError::NotFound(format!("baseline '{}' (version {}) has no file '{path}'", b.name, b.version))
        })?;
        let mut out = diff_keys(&expected.keys, &right);
        out.right_content_hash = right_hash;
        out.baseline_name = b.name.clone();
        out.baseline_version = b.version;
        Ok(out)
    }

    fn file_keys(&self, host: &str, path: &str) -> Result<(Vec<v1::KeyValue>, String), ServerError> {
        let s = self.state.file_state(host, path)?;
        Ok((s.keys, s.content_hash))
    }
}

fn required<'a>(v: &'a str, field: &str) -> Result<&'a str, ServerError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ServerError::InvalidArgument(format!("{field} is required")));
    }
    Ok(v)
}

/// Query APIs show a masked value's fingerprint prefix only.
pub(crate) fn shorten(v: Option<&mut v1::Value>) {
    if let Some(v1::Value { kind: Some(Kind::Masked(m)) }) = v {
        m.fingerprint.truncate(driftwatch_proto::SHORT_FINGERPRINT);
    }
}

/// Values equal for diff purposes: masked values compare by full fingerprint,
/// floats by bits (so NaN equals itself and a change 1.0 → 1.0 is none).
fn same(a: &Option<v1::Value>, b: &Option<v1::Value>) -> bool {
    match (a.as_ref().and_then(|v| v.kind.as_ref()), b.as_ref().and_then(|v| v.kind.as_ref())) {
        (Some(Kind::FloatValue(x)), Some(Kind::FloatValue(y))) => x.to_bits() == y.to_bits(),
        (Some(Kind::Masked(x)), Some(Kind::Masked(y))) => x.same_secret(y),
        (x, y) => x == y,
    }
}

/// Key-by-key difference, in the left file's order then keys only on the right.
pub fn diff_keys(left: &[v1::KeyValue], right: &[v1::KeyValue]) -> v1::DiffResponse {
    let r: BTreeMap<&str, &v1::KeyValue> = right.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    let l: BTreeMap<&str, &v1::KeyValue> = left.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    let mut out = v1::DiffResponse::default();
    for kv in left {
        match r.get(kv.key.as_str()) {
            None => {
                out.removed += 1;
                out.differences.push(entry(&kv.key, v1::DiffKind::Removed, kv.value.clone(), None));
            }
            Some(o) if !same(&kv.value, &o.value) => {
                out.changed += 1;
                out.differences.push(entry(&kv.key, v1::DiffKind::Changed, kv.value.clone(), o.value.clone()));
            }
            Some(_) => out.unchanged += 1,
        }
    }
    for kv in right {
        if !l.contains_key(kv.key.as_str()) {
            out.added += 1;
            out.differences.push(entry(&kv.key, v1::DiffKind::Added, None, kv.value.clone()));
        }
    }
    out
}

fn entry(key: &str, kind: v1::DiffKind, mut left: Option<v1::Value>, mut right: Option<v1::Value>) -> v1::KeyDiff {
    shorten(left.as_mut());
    shorten(right.as_mut());
    v1::KeyDiff { key: key.to_string(), kind: kind as i32, left, right }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::Value;

    fn kv(k: &str, v: Value) -> v1::KeyValue {
        v1::KeyValue { key: k.into(), value: Some(v) }
    }

    #[test]
    fn diff_added_removed_changed() {
        let left = vec![
            kv("A", Value::int(1)),
            kv("B", Value::string("x")),
            kv("S", Value::masked("aa".repeat(32), "key name")),
            kv("F", Value::float(0.5)),
        ];
        let right = vec![
            kv("A", Value::int(2)),
            kv("C", Value::bool(true)),
            kv("S", Value::masked("aa".repeat(32), "key name")),
            kv("F", Value::float(0.5)),
        ];
        let d = diff_keys(&left, &right);
        assert_eq!((d.added, d.removed, d.changed, d.unchanged), (1, 1, 1, 2));
        let kinds: Vec<(&str, i32)> = d.differences.iter().map(|x| (x.key.as_str(), x.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("A", v1::DiffKind::Changed as i32),
                ("B", v1::DiffKind::Removed as i32),
                ("C", v1::DiffKind::Added as i32)
            ]
        );
    }

    #[test]
    fn masked_values_differ_by_fingerprint_and_show_short() {
        let left = vec![kv("S", Value::masked("ab".repeat(32), "key name"))];
        let right = vec![kv("S", Value::masked("cd".repeat(32), "key name"))];
        let d = diff_keys(&left, &right);
        assert_eq!(d.changed, 1);
        let Some(Kind::Masked(m)) = d.differences[0].left.as_ref().and_then(|v| v.kind.clone()) else { panic!() };
        assert_eq!(m.fingerprint.len(), driftwatch_proto::SHORT_FINGERPRINT);
        // Equal digits under two fleet keys are not the same value.
        let a = vec![kv("S", Value::masked_by("key-a", "ab".repeat(32), "key name"))];
        let b = vec![kv("S", Value::masked_by("key-b", "ab".repeat(32), "key name"))];
        assert_eq!(diff_keys(&a, &b).changed, 1);
        assert_eq!(diff_keys(&a, &a.clone()).changed, 0);
    }

    #[test]
    fn type_change_is_a_change() {
        let d = diff_keys(&[kv("A", Value::int(1))], &[kv("A", Value::string("1"))]);
        assert_eq!(d.changed, 1);
    }
}
