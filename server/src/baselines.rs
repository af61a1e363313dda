//! `Baselines` service: named, versioned sets of expected key values.
//!
//! Every version of every baseline is held in memory (they are few and small)
//! and written through the group-commit writer; a call returns only once its
//! version is durable. Versions of one name are assigned under one lock held
//! across the write, so two concurrent edits can never claim the same version.

use std::collections::BTreeMap;
use std::sync::Arc;

use driftwatch_proto::v1::{self, baselines_server::Baselines};
use driftwatch_store::{BaselineRecord, Op};
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::audit::{AuditEntry, AuditLog};
use crate::error::ServerError;
use crate::principal::Principal;
use crate::selector::Selector;
use crate::state::{FleetState, unknown_host};
use crate::writer::{WriteItem, WriteSender};

const MAX_NAME_LEN: usize = 128;

/// Every version of every baseline, by name, oldest first.
#[derive(Debug, Default)]
pub struct BaselineSet {
    versions: BTreeMap<String, Vec<v1::Baseline>>,
}

impl BaselineSet {
    /// Rebuild from the store; a version that does not decode is skipped (and counted).
    pub fn load(records: Vec<BaselineRecord>) -> (Self, usize) {
        let mut set = Self::default();
        let mut skipped = 0;
        for r in records {
            match v1::Baseline::decode(r.content.as_slice()) {
                Ok(b) => set.versions.entry(r.name).or_default().push(b),
                Err(e) => {
                    tracing::warn!(baseline = %r.name, version = r.version, error = %e, "stored baseline does not decode; skipped");
                    skipped += 1;
                }
            }
        }
        (set, skipped)
    }

    pub fn latest(&self, name: &str) -> Option<&v1::Baseline> {
        self.versions.get(name).and_then(|v| v.last())
    }

    pub fn version(&self, name: &str, version: u64) -> Option<&v1::Baseline> {
        self.versions.get(name).and_then(|v| v.iter().find(|b| b.version == version))
    }

    fn live(&self) -> impl Iterator<Item = &v1::Baseline> {
        self.versions.values().filter_map(|v| v.last()).filter(|b| !b.deleted)
    }

    /// The baseline that applies to a host: the newest pinned for the host itself,
    /// else the newest whose selector matches its labels.
    pub fn effective(&self, host_id: &str, labels: &BTreeMap<String, String>) -> Option<&v1::Baseline> {
        let newest = |a: &&v1::Baseline, b: &&v1::Baseline| {
            let t = |x: &v1::Baseline| x.created_at.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            t(a).cmp(&t(b)).then_with(|| a.name.cmp(&b.name))
        };
        self.live().filter(|b| b.host_id == host_id).max_by(newest).or_else(|| {
            self.live()
                .filter(|b| b.host_id.is_empty() && Selector::parse(&b.selector).is_ok_and(|s| s.matches(labels)))
                .max_by(newest)
        })
    }
}

/// Apply an edit to one file of a baseline's files: set (in place, or appended),
/// then remove. Fails when the edit changes nothing or removes a key that is not there.
pub fn edit_file(
    files: &mut Vec<v1::BaselineFile>,
    path: &str,
    set: Vec<v1::KeyValue>,
    remove: &[String],
) -> Result<(), ServerError> {
    if set.is_empty() && remove.is_empty() {
        return Err(ServerError::InvalidArgument("nothing to change: give set, remove or promote_keys".into()));
    }
    let idx = match files.iter().position(|f| f.path == path) {
        Some(i) => i,
        None => {
            files.push(v1::BaselineFile { path: path.to_string(), keys: Vec::new() });
            files.len() - 1
        }
    };
    let file = &mut files[idx];
    for kv in set {
        if kv.key.is_empty() || kv.value.is_none() {
            return Err(ServerError::InvalidArgument("every key to set needs a key and a value".into()));
        }
        match file.keys.iter_mut().find(|k| k.key == kv.key) {
            Some(existing) => existing.value = kv.value,
            None => file.keys.push(kv),
        }
    }
    for key in remove {
        let before = file.keys.len();
        file.keys.retain(|k| &k.key != key);
        if file.keys.len() == before {
            return Err(ServerError::NotFound(format!("baseline has no key '{key}' in {path}")));
        }
    }
    if file.keys.is_empty() {
        files.remove(idx);
    }
    Ok(())
}

/// Set (in place, or appended) then remove resource expectations.
pub fn edit_resources(
    resources: &mut Vec<v1::ResourceExpectation>,
    set: Vec<v1::ResourceExpectation>,
    remove: &[String],
) -> Result<(), ServerError> {
    for e in set {
        if e.metric.trim().is_empty() || !e.value.is_finite() {
            return Err(ServerError::InvalidArgument(format!(
                "resource expectation needs a metric name and a finite value (got {:?} = {})",
                e.metric, e.value
            )));
        }
        match resources.iter_mut().find(|r| r.metric == e.metric) {
            Some(r) => r.value = e.value,
            None => resources.push(e),
        }
    }
    for m in remove {
        let idx = resources
            .iter()
            .position(|r| &r.metric == m)
            .ok_or_else(|| ServerError::NotFound(format!("the baseline has no resource expectation '{m}'")))?;
        resources.remove(idx);
    }
    Ok(())
}

#[derive(Clone)]
pub struct BaselinesService {
    pub state: Arc<FleetState>,
    pub baselines: Arc<Mutex<BaselineSet>>,
    pub writer: WriteSender,
    pub engine: crate::engine::EngineHandle,
    pub audit: AuditLog,
}

impl BaselinesService {
    /// Persist `b` as the next version of its name and, once durable, hold it. The
    /// audit event (`action`, with `audit`'s host, path and detail) commits with it;
    /// actor, target and the version are filled in here.
    async fn commit(
        &self,
        set: &mut BaselineSet,
        mut b: v1::Baseline,
        action: &str,
        audit: AuditEntry,
    ) -> Result<v1::Baseline, ServerError> {
        b.version = set.latest(&b.name).map_or(1, |l| l.version + 1);
        let now = driftwatch_proto::now_millis();
        b.created_at = Some(driftwatch_proto::timestamp_from_millis(now));
        let record = BaselineRecord {
            name: b.name.clone(),
            version: b.version,
            host_id: b.host_id.clone(),
            selector: b.selector.clone(),
            content: b.encode_to_vec(),
            author: b.actor.clone(),
            reason: b.reason.clone(),
            created_ms: now,
            deleted: b.deleted,
        };
        let mut detail = format!("version {}", b.version);
        if !audit.detail.is_empty() {
            detail.push_str(&format!("; {}", audit.detail));
        }
        if !b.reason.trim().is_empty() {
            detail.push_str(&format!("; reason: {}", b.reason.trim()));
        }
        let audit =
            AuditEntry { actor: b.actor.clone(), action: action.to_string(), target: b.name.clone(), detail, ..audit };
        let (done, durable) = tokio::sync::oneshot::channel();
        let item =
            WriteItem { ops: vec![Op::Baseline(record), AuditLog::op(audit)], done: Some(done), ..Default::default() };
        let gone = || ServerError::Unavailable("server is shutting down".into());
        self.writer.send(item).await.map_err(|_| gone())?;
        durable.await.map_err(|_| gone())?;
        tracing::info!(baseline = %b.name, version = b.version, actor = %b.actor, deleted = b.deleted, "baseline version stored");
        set.versions.entry(b.name.clone()).or_default().push(b.clone());
        // Rules compare against baselines: what drifts from them just changed.
        let host = (!b.host_id.is_empty()).then(|| b.host_id.clone());
        self.engine.send(crate::engine::EvalMsg::Reevaluate { host });
        Ok(b)
    }

    /// The current keys of one host's file, for pinning and promotion.
    fn host_file(&self, host_id: &str, path: &str) -> Result<v1::FileState, ServerError> {
        self.state.file_state(host_id, path)
    }
}

/// A baseline as query APIs show it: masked fingerprints shortened like GetFile's.
fn for_query(mut b: v1::Baseline) -> v1::Baseline {
    for kv in b.files.iter_mut().flat_map(|f| f.keys.iter_mut()) {
        crate::fleet::shorten(kv.value.as_mut());
    }
    b
}

fn valid_name(name: &str) -> Result<&str, ServerError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ServerError::InvalidArgument(format!(
            "name must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(name)
}

fn live_or_not_found<'a>(set: &'a BaselineSet, name: &str) -> Result<&'a v1::Baseline, ServerError> {
    match set.latest(name) {
        None => Err(ServerError::NotFound(format!("no baseline '{name}' (ListBaselines shows them)"))),
        Some(b) if b.deleted => {
            Err(ServerError::NotFound(format!("baseline '{name}' was deleted in version {}", b.version)))
        }
        Some(b) => Ok(b),
    }
}

fn names<'a>(v: impl Iterator<Item = &'a str>) -> String {
    v.collect::<Vec<_>>().join(", ")
}

/// The audit event of a key edit: which keys were set, promoted from which host, removed
/// (names only: a value may be a secret's fingerprint).
fn keys_audit(path: &str, r: &v1::SetBaselineKeysRequest) -> AuditEntry {
    let mut parts = Vec::new();
    if !r.set.is_empty() {
        parts.push(format!("set [{}]", names(r.set.iter().map(|kv| kv.key.as_str()))));
    }
    let host = r.promote_from_host_id.trim();
    if !r.promote_keys.is_empty() {
        parts.push(format!("promoted from {host} [{}]", names(r.promote_keys.iter().map(String::as_str))));
    }
    if !r.remove.is_empty() {
        parts.push(format!("removed [{}]", names(r.remove.iter().map(String::as_str))));
    }
    if !r.set_resources.is_empty() {
        parts.push(format!("resources set [{}]", names(r.set_resources.iter().map(|e| e.metric.as_str()))));
    }
    if !r.remove_resources.is_empty() {
        parts.push(format!("resources removed [{}]", names(r.remove_resources.iter().map(String::as_str))));
    }
    let mut detail = parts.join(", ");
    if !path.is_empty() {
        detail = format!("{path}: {detail}");
    }
    AuditEntry {
        host_id: if r.promote_keys.is_empty() { String::new() } else { host.to_string() },
        path: path.to_string(),
        detail,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Baselines for BaselinesService {
    async fn pin_baseline(&self, request: Request<v1::PinBaselineRequest>) -> Result<Response<v1::Baseline>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let name = valid_name(&r.name)?.to_string();
        let host_id = r.host_id.trim();
        if host_id.is_empty() {
            return Err(
                ServerError::InvalidArgument("host_id is required: the host whose state is pinned".into()).into()
            );
        }
        let selector = r.selector.trim();
        if !selector.is_empty() {
            Selector::parse(selector).map_err(ServerError::InvalidArgument)?;
        }
        let files: Vec<v1::BaselineFile> = if r.path.trim().is_empty() {
            let h = self.state.hosts.get(host_id).ok_or_else(|| unknown_host(host_id))?;
            h.files.iter().map(|(p, f)| v1::BaselineFile { path: p.clone(), keys: f.state().keys }).collect()
        } else {
            let path = r.path.trim();
            vec![v1::BaselineFile { path: path.to_string(), keys: self.host_file(host_id, path)?.keys }]
        };
        let resources = if r.include_resources {
            let h = self.state.hosts.get(host_id).ok_or_else(|| unknown_host(host_id))?;
            let sample = h.resources.as_ref().ok_or_else(|| {
                ServerError::FailedPrecondition(format!("host '{host_id}' has sent no resource sample yet"))
            })?;
            let all = driftwatch_rules::resource_metrics(sample);
            for m in &r.resource_metrics {
                if !all.iter().any(|(n, _)| n == m) {
                    return Err(ServerError::NotFound(format!("host '{host_id}' has no resource metric '{m}'")).into());
                }
            }
            all.into_iter()
                .filter(|(m, _)| r.resource_metrics.is_empty() || r.resource_metrics.contains(m))
                .map(|(metric, value)| v1::ResourceExpectation { metric, value })
                .collect()
        } else {
            Vec::new()
        };
        let mut detail = if selector.is_empty() {
            format!("host {host_id}")
        } else {
            format!("selector {selector}, pinned from host {host_id}")
        };
        let keys: usize = files.iter().map(|f| f.keys.len()).sum();
        detail.push_str(&format!("; {} files, {keys} keys", files.len()));
        if !resources.is_empty() {
            detail.push_str(&format!(", {} resource expectations", resources.len()));
        }
        let audit =
            AuditEntry { host_id: host_id.to_string(), path: r.path.trim().to_string(), detail, ..Default::default() };
        let mut set = self.baselines.lock().await;
        let b = v1::Baseline {
            name,
            host_id: if selector.is_empty() { host_id.to_string() } else { String::new() },
            selector: selector.to_string(),
            files,
            resources,
            actor,
            reason: r.reason,
            ..Default::default()
        };
        Ok(Response::new(for_query(self.commit(&mut set, b, "baseline.pinned", audit).await?)))
    }

    async fn get_baseline(&self, request: Request<v1::GetBaselineRequest>) -> Result<Response<v1::Baseline>, Status> {
        let r = request.into_inner();
        let name = valid_name(&r.name)?;
        let set = self.baselines.lock().await;
        let b = if r.version == 0 {
            live_or_not_found(&set, name)?
        } else {
            set.version(name, r.version)
                .ok_or_else(|| ServerError::NotFound(format!("baseline '{name}' has no version {}", r.version)))?
        };
        Ok(Response::new(for_query(b.clone())))
    }

    async fn list_baselines(
        &self,
        request: Request<v1::ListBaselinesRequest>,
    ) -> Result<Response<v1::ListBaselinesResponse>, Status> {
        let all = request.get_ref().include_deleted;
        let set = self.baselines.lock().await;
        let baselines = set
            .versions
            .values()
            .filter_map(|v| v.last())
            .filter(|b| all || !b.deleted)
            .cloned()
            .map(for_query)
            .collect();
        Ok(Response::new(v1::ListBaselinesResponse { baselines }))
    }

    async fn set_baseline_keys(
        &self,
        request: Request<v1::SetBaselineKeysRequest>,
    ) -> Result<Response<v1::Baseline>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let name = valid_name(&r.name)?;
        let path = r.path.trim();
        let resources_only = path.is_empty() && (!r.set_resources.is_empty() || !r.remove_resources.is_empty());
        if path.is_empty() && !resources_only {
            return Err(ServerError::InvalidArgument("path is required: the file whose keys change".into()).into());
        }
        let audit = keys_audit(path, &r);
        let action = if r.promote_keys.is_empty() { "baseline.keys_set" } else { "baseline.promoted" };
        let mut set_keys = r.set;
        if !r.promote_keys.is_empty() {
            let host = r.promote_from_host_id.trim();
            if host.is_empty() {
                return Err(ServerError::InvalidArgument("promote_keys needs promote_from_host_id".into()).into());
            }
            let current = self.host_file(host, path)?;
            for key in &r.promote_keys {
                let kv = current
                    .keys
                    .iter()
                    .find(|k| &k.key == key)
                    .ok_or_else(|| ServerError::NotFound(format!("host '{host}' has no key '{key}' in {path}")))?;
                set_keys.push(kv.clone());
            }
        }
        let mut set = self.baselines.lock().await;
        let mut b = live_or_not_found(&set, name)?.clone();
        if !resources_only {
            edit_file(&mut b.files, path, set_keys, &r.remove)?;
        }
        edit_resources(&mut b.resources, r.set_resources, &r.remove_resources)?;
        b.actor = actor;
        b.reason = r.reason;
        Ok(Response::new(for_query(self.commit(&mut set, b, action, audit).await?)))
    }

    async fn delete_baseline(
        &self,
        request: Request<v1::DeleteBaselineRequest>,
    ) -> Result<Response<v1::Baseline>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let name = valid_name(&r.name)?;
        let mut set = self.baselines.lock().await;
        let last = live_or_not_found(&set, name)?;
        let audit = AuditEntry {
            host_id: last.host_id.clone(),
            detail: if last.host_id.is_empty() {
                format!("selector {}", last.selector)
            } else {
                format!("host {}", last.host_id)
            },
            ..Default::default()
        };
        let b = v1::Baseline {
            name: name.to_string(),
            host_id: last.host_id.clone(),
            selector: last.selector.clone(),
            deleted: true,
            actor,
            reason: r.reason,
            ..Default::default()
        };
        Ok(Response::new(for_query(self.commit(&mut set, b, "baseline.deleted", audit).await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::Value;

    fn kv(k: &str, v: i64) -> v1::KeyValue {
        v1::KeyValue { key: k.into(), value: Some(Value::int(v)) }
    }

    fn baseline(name: &str, version: u64, host: &str, selector: &str, at: i64, deleted: bool) -> v1::Baseline {
        v1::Baseline {
            name: name.into(),
            version,
            host_id: host.into(),
            selector: selector.into(),
            created_at: Some(driftwatch_proto::timestamp_from_millis(at)),
            deleted,
            ..Default::default()
        }
    }

    fn set_of(bs: Vec<v1::Baseline>) -> BaselineSet {
        let mut s = BaselineSet::default();
        for b in bs {
            s.versions.entry(b.name.clone()).or_default().push(b);
        }
        s
    }

    #[test]
    fn host_baseline_wins_over_selector_and_newest_wins_among_equals() {
        let labels: BTreeMap<String, String> = [("env".into(), "production".into())].into();
        let s = set_of(vec![
            baseline("fleet", 1, "", "env=production", 10, false),
            baseline("fleet-new", 1, "", "env=production", 20, false),
            baseline("other-env", 1, "", "env=staging", 30, false),
        ]);
        assert_eq!(s.effective("web-1", &labels).unwrap().name, "fleet-new");
        let s = set_of(vec![
            baseline("fleet", 1, "", "env=production", 50, false),
            baseline("web-1-tuned", 1, "web-1", "", 10, false),
        ]);
        assert_eq!(s.effective("web-1", &labels).unwrap().name, "web-1-tuned");
        assert_eq!(s.effective("web-2", &labels).unwrap().name, "fleet");
        assert!(s.effective("web-2", &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_deleted_baseline_applies_to_nobody() {
        let s = set_of(vec![baseline("t", 1, "web-1", "", 10, false), baseline("t", 2, "web-1", "", 20, true)]);
        assert!(s.effective("web-1", &BTreeMap::new()).is_none());
        assert_eq!(s.version("t", 1).unwrap().version, 1);
        assert!(live_or_not_found(&s, "t").unwrap_err().to_string().contains("deleted in version 2"));
    }

    #[test]
    fn edit_sets_in_place_appends_and_removes() {
        let mut files = vec![v1::BaselineFile { path: "/a".into(), keys: vec![kv("A", 1), kv("B", 2)] }];
        edit_file(&mut files, "/a", vec![kv("B", 3), kv("C", 4)], &["A".into()]).unwrap();
        assert_eq!(files[0].keys, vec![kv("B", 3), kv("C", 4)]);
        edit_file(&mut files, "/new", vec![kv("X", 1)], &[]).unwrap();
        assert_eq!(files.len(), 2);
        // Removing the last key drops the file from the baseline.
        edit_file(&mut files, "/new", vec![], &["X".into()]).unwrap();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn edit_errors_are_clear() {
        let mut files = vec![v1::BaselineFile { path: "/a".into(), keys: vec![kv("A", 1)] }];
        assert!(matches!(edit_file(&mut files, "/a", vec![], &[]), Err(ServerError::InvalidArgument(_))));
        assert!(matches!(edit_file(&mut files, "/a", vec![], &["Z".into()]), Err(ServerError::NotFound(_))));
        let no_value = v1::KeyValue { key: "A".into(), value: None };
        assert!(matches!(edit_file(&mut files, "/a", vec![no_value], &[]), Err(ServerError::InvalidArgument(_))));
    }

    #[test]
    fn resource_expectations_edit() {
        let e = |m: &str, v: f64| v1::ResourceExpectation { metric: m.into(), value: v };
        let mut r = vec![e("memory_used_bytes", 1.0)];
        edit_resources(&mut r, vec![e("memory_used_bytes", 2.0), e("cpu_cores_used", 10.4)], &[]).unwrap();
        assert_eq!(r, vec![e("memory_used_bytes", 2.0), e("cpu_cores_used", 10.4)]);
        edit_resources(&mut r, vec![], &["memory_used_bytes".into()]).unwrap();
        assert_eq!(r, vec![e("cpu_cores_used", 10.4)]);
        assert!(matches!(edit_resources(&mut r, vec![], &["nope".into()]), Err(ServerError::NotFound(_))));
        assert!(matches!(edit_resources(&mut r, vec![e("x", f64::NAN)], &[]), Err(ServerError::InvalidArgument(_))));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("tuned-2026.11_a").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("has space").is_err());
        assert!(valid_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
