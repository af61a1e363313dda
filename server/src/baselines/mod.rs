//! `Baselines` service: named, versioned sets of expected key values.
//!
//! Every version of every baseline is held in memory (they are few and small;
//! [`set`] is the data and its pure edits) and written through the group-commit
//! writer; a call returns only once its version is durable. Versions are
//! assigned under one edit lock held across the write, so two concurrent edits
//! can never claim the same version. Once durable, the new snapshot replaces the
//! current one for every reader and is pushed to the rule engine.

mod set;

use std::sync::Arc;

use driftwatch_proto::v1::{self, baselines_server::Baselines};
use driftwatch_store::{BaselineRecord, Op};
use prost::Message;
use tonic::{Request, Response, Status};

pub use set::{BaselineSet, SharedBaselines, edit_file, edit_resources};

use crate::audit::{AuditEntry, AuditLog};
use crate::changes::plan;
use crate::error::ServerError;
use crate::principal::Principal;
use crate::selector::Selector;
use crate::state::{FleetState, unknown_host};
use crate::writer::{WriteItem, WriteSender};

const MAX_NAME_LEN: usize = 128;

#[derive(Clone)]
pub struct BaselinesService {
    pub state: Arc<FleetState>,
    pub baselines: Arc<SharedBaselines>,
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
        set: &BaselineSet,
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
        let next = Arc::new(set.with_version(b.clone()));
        self.baselines.publish(next.clone());
        // Rules compare against baselines: what drifts from them just changed.
        let host = (!b.host_id.is_empty()).then(|| b.host_id.clone());
        self.engine.push(crate::engine::EvalMsg::Baselines { set: next, host }).await?;
        Ok(b)
    }

    /// The keys of `path` masked in the baseline itself or on a host it applies to (its
    /// own host, or every host its selector matches that watches the file).
    fn masked_keys(&self, b: &v1::Baseline, path: &str) -> plan::MaskedKeys {
        let mut masked = plan::MaskedKeys::default();
        let selector = if b.host_id.is_empty() { Selector::parse(&b.selector).ok() } else { None };
        for h in self.state.hosts.iter() {
            let applies = if b.host_id.is_empty() {
                selector.as_ref().is_some_and(|s| s.matches(&h.labels))
            } else {
                *h.key() == b.host_id
            };
            if let Some(f) = h.files.get(path).filter(|_| applies) {
                masked.add(&format!("on host '{}'", h.key()), &f.state().keys);
            }
        }
        for f in b.files.iter().filter(|f| f.path == path) {
            masked.add(&format!("in baseline '{}'", b.name), &f.keys);
        }
        masked
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
        let _edit = self.baselines.edit().await;
        let set = self.baselines.current();
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
        Ok(Response::new(for_query(self.commit(&set, b, "baseline.pinned", audit).await?)))
    }

    async fn get_baseline(&self, request: Request<v1::GetBaselineRequest>) -> Result<Response<v1::Baseline>, Status> {
        let r = request.into_inner();
        let name = valid_name(&r.name)?;
        let set = self.baselines.current();
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
        let baselines = self.baselines.current().newest(all).cloned().map(for_query).collect();
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
        // Promoted values are the host's own (a secret stays a fingerprint); only the
        // values given in the request are checked for secrets in clear.
        let mut promoted = Vec::new();
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
                promoted.push(kv.clone());
            }
        }
        let _edit = self.baselines.edit().await;
        let set = self.baselines.current();
        let mut b = live_or_not_found(&set, name)?.clone();
        if !resources_only {
            let masked = self.masked_keys(&b, path);
            for kv in &r.set {
                let text = kv.value.as_ref().and_then(plan::value_text);
                plan::check_clear_value(&kv.key, text.as_deref(), &masked).map_err(|e| {
                    tracing::warn!(actor = %actor, baseline = %name, path, error = %e, "baseline edit refused");
                    ServerError::InvalidArgument(e)
                })?;
            }
            let set_keys = r.set.into_iter().chain(promoted).collect();
            edit_file(&mut b.files, path, set_keys, &r.remove)?;
        }
        edit_resources(&mut b.resources, r.set_resources, &r.remove_resources)?;
        b.actor = actor;
        b.reason = r.reason;
        Ok(Response::new(for_query(self.commit(&set, b, action, audit).await?)))
    }

    async fn delete_baseline(
        &self,
        request: Request<v1::DeleteBaselineRequest>,
    ) -> Result<Response<v1::Baseline>, Status> {
        let actor = Principal::of(&request).to_string();
        let r = request.into_inner();
        let name = valid_name(&r.name)?;
        let _edit = self.baselines.edit().await;
        let set = self.baselines.current();
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
        Ok(Response::new(for_query(self.commit(&set, b, "baseline.deleted", audit).await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("tuned-2026.11_a").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("has space").is_err());
        assert!(valid_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn a_deleted_baseline_is_not_found_with_its_version() {
        let b = |version, deleted| v1::Baseline {
            name: "t".into(),
            version,
            host_id: "web-1".into(),
            deleted,
            ..Default::default()
        };
        let s = BaselineSet::default().with_version(b(1, false)).with_version(b(2, true));
        assert!(live_or_not_found(&s, "t").unwrap_err().to_string().contains("deleted in version 2"));
        assert!(live_or_not_found(&s, "nope").unwrap_err().to_string().contains("no baseline"));
    }
}
