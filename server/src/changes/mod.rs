//! `Changes`: corrections (one host, one file, now) and rollouts (many hosts, in
//! waves, gated by the rules). Everything is sent down the owning agent's stream as
//! an `ApplyChange`; the agent decides whether it may write and reports the result.
//!
//! - `plan`: pure decisions (which keys a restore sets, candidate values for
//!   pre-flight, wave sizes, gate findings).
//! - `dispatch`: changes out, results back, matched by id and host.
//! - `rollout`: the per-rollout task (waves, bake, gate, rollback, persistence).
//! - `remediate`: rules with `remediate: restore_baseline` correct their own alerts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1::{self, correct_request::Action};
use driftwatch_rules::{FileInput, HostInfo, RuleSet, Target};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::baselines::BaselinesService;
use crate::engine::EngineHandle;
use crate::error::ServerError;
use crate::rules_service::RulesHandle;
use crate::state::FleetState;
use crate::writer::WriteSender;

mod dispatch;
pub mod plan;
pub mod remediate;
pub mod rollout;
mod service;

pub use dispatch::Dispatcher;
pub use service::ChangesService;

/// How long a correction waits for the agent by default.
const DEFAULT_CORRECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a caller may ask a correction to wait for its agent.
const MAX_CORRECT_TIMEOUT: Duration = Duration::from_secs(600);
pub use crate::audit::SERVER_ACTOR;

/// What corrections and rollouts need from the rest of the server.
pub struct ChangesCore {
    pub state: Arc<FleetState>,
    /// Baselines: read through its set, promoted through its API (audited there).
    pub baselines_service: BaselinesService,
    pub rules: RulesHandle,
    pub engine: EngineHandle,
    /// Rollout gates and remediation read the alerts here.
    pub book: Arc<crate::alert_book::AlertBook>,
    pub writer: WriteSender,
    pub dispatcher: Dispatcher,
    pub audit: AuditLog,
    pub reader: Arc<parking_lot::Mutex<driftwatch_store::Store>>,
    pub shutdown: CancellationToken,
    pub(crate) rollouts: rollout::Registry,
    /// `max_rollouts_per_principal`.
    pub limits: crate::limits::Limits,
}

use crate::rule_input::{file_meta, key_map};

/// The file rules a change would newly fire on one host: evaluated on the candidate
/// keys, minus what already matches on the current keys (the change did not cause it).
pub(crate) fn preflight_host(
    rules: &RuleSet,
    host: &HostInfo,
    current: &v1::FileState,
    candidate: &[v1::KeyValue],
    baseline: Option<&[v1::KeyValue]>,
) -> Vec<v1::GateFinding> {
    let path = current.path.as_str();
    if !rules.rules().iter().any(|r| matches!(&r.target, Target::File { file, .. } if file.is_match(path))) {
        return Vec::new();
    }
    let meta = file_meta(current);
    let now_keys = key_map(&current.keys);
    let new_keys = key_map(candidate);
    let base = baseline.map(key_map);
    let eval = |keys: &BTreeMap<String, v1::Value>| {
        let input = FileInput { path, keys, meta: &meta, baseline: base.as_ref(), previous: Some(&now_keys) };
        let mut matched = Vec::new();
        rules.evaluate_file_with(host, &input, |o| {
            if o.matched {
                matched.push((o.rule, o.key.map(str::to_string)));
            }
        });
        matched
    };
    let before = eval(&now_keys);
    let after = eval(&new_keys);
    let mut out: Vec<v1::GateFinding> = after
        .into_iter()
        .filter(|m| !before.contains(m))
        .map(|(idx, key)| {
            let r = &rules.rules()[idx];
            v1::GateFinding {
                host_id: host.id.clone(),
                rule: r.name.clone(),
                severity: crate::engine::severity_to_proto(r.severity) as i32,
                key: key.unwrap_or_default(),
                summary: r.annotations.get("summary").cloned().unwrap_or_default(),
            }
        })
        .collect();
    out.dedup();
    out
}

impl ChangesCore {
    pub(crate) fn host_info(&self, host: &str) -> Option<HostInfo> {
        let h = self.state.hosts.get(host)?;
        Some(HostInfo { id: host.to_string(), labels: h.labels.clone() })
    }

    /// Baseline keys of one file for one host (its effective baseline).
    pub(crate) async fn baseline_keys(&self, host: &str, path: &str) -> Option<(String, Vec<v1::KeyValue>)> {
        let labels = self.state.hosts.get(host)?.labels.clone();
        let set = self.baselines_service.baselines.current();
        let b = set.effective(host, &labels)?;
        let f = b.files.iter().find(|f| f.path == path)?;
        Some((b.name.clone(), f.keys.clone()))
    }

    /// One correction, start to finish: build the change, record the intent, send it,
    /// wait, record the outcome (also when the wait times out or the change could not be
    /// sent). A secret given or compared in clear is refused before anything is sent
    /// or recorded.
    pub async fn correct(&self, req: v1::CorrectRequest, actor: &str) -> Result<v1::CorrectResponse, ServerError> {
        let host = req.host_id.trim().to_string();
        let path = req.path.trim().to_string();
        if host.is_empty() || path.is_empty() {
            return Err(ServerError::InvalidArgument("host_id and path are required".into()));
        }
        let actor = actor.to_string();
        let current = self.state.file_state(&host, &path)?;
        let baseline = self.baseline_keys(&host, &path).await;
        let mut masked = plan::MaskedKeys::default();
        masked.add(&format!("on host '{host}'"), &current.keys);
        if let Some((name, keys)) = &baseline {
            masked.add(&format!("in baseline '{name}'"), keys);
        }
        let refused = |e: String| {
            tracing::warn!(actor = %actor, host = %host, path = %path, error = %e, "correction refused");
            e
        };
        let mut change = v1::ApplyChange {
            change_id: self.dispatcher.new_id("c"),
            path: path.clone(),
            expected_hash: current.content_hash.clone(),
            dry_run: req.dry_run,
            reason: format!("correction by {actor}: {}", req.reason),
            ..Default::default()
        };
        let (what, keys) = match req.action {
            None => {
                return Err(ServerError::InvalidArgument(
                    "an action is required: restore_baseline, set_keys or restore_version".into(),
                ));
            }
            Some(Action::RestoreBaseline(r)) => {
                let (name, base) = baseline.ok_or_else(|| {
                    ServerError::FailedPrecondition(format!(
                        "host '{host}' has no effective baseline for '{path}' (pin one first)"
                    ))
                })?;
                let restore = plan::baseline_restore(&current.keys, &base, &r.keys)
                    .map_err(|e| ServerError::FailedPrecondition(refused(e)))?;
                if restore.set.is_empty() {
                    let mut message = format!("the file already matches baseline '{name}'");
                    if !restore.secrets_skipped.is_empty() {
                        message.push_str(&format!(
                            " (secret keys are never compared: {}; restore a version by content hash for those)",
                            restore.secrets_skipped.join(", ")
                        ));
                    }
                    let result = v1::ChangeResult {
                        change_id: change.change_id.clone(),
                        outcome: v1::ChangeOutcome::Unchanged as i32,
                        message,
                        before_hash: current.content_hash.clone(),
                        after_hash: current.content_hash.clone(),
                        path: path.clone(),
                        ..Default::default()
                    };
                    return Ok(v1::CorrectResponse {
                        change_id: change.change_id,
                        host_id: host,
                        result: Some(result),
                    });
                }
                let keys: Vec<String> = restore.set.iter().map(|kv| kv.key.clone()).collect();
                change.set_keys = restore.set;
                (format!("restore baseline '{name}'"), keys)
            }
            Some(Action::SetKeys(s)) => {
                if s.values.is_empty() && s.remove.is_empty() {
                    return Err(ServerError::InvalidArgument("set_keys needs values or remove".into()));
                }
                let values: BTreeMap<String, String> = s.values.into_iter().collect();
                plan::check_no_secrets(&values, &masked).map_err(|e| ServerError::InvalidArgument(refused(e)))?;
                let keys = values.keys().cloned().chain(s.remove.iter().cloned()).collect();
                change.set_text = values.into_iter().collect();
                change.remove_keys = s.remove;
                ("set keys".to_string(), keys)
            }
            Some(Action::RestoreVersion(v)) => {
                let hash = v.content_hash.trim();
                if hash.is_empty() {
                    return Err(ServerError::InvalidArgument("restore_version needs a content_hash".into()));
                }
                change.restore_hash = hash.to_string();
                (format!("restore version {}", short(hash)), Vec::new())
            }
        };
        let timeout =
            driftwatch_proto::duration::from_proto_or("timeout", req.timeout.as_ref(), DEFAULT_CORRECT_TIMEOUT)
                .map_err(ServerError::InvalidArgument)?;
        if !(Duration::from_secs(1)..=MAX_CORRECT_TIMEOUT).contains(&timeout) {
            return Err(ServerError::InvalidArgument("timeout must be between 1s and 10m".into()));
        }
        let change_id = change.change_id.clone();
        let entry = |action: &str, before: &str, after: &str, message: &str| crate::audit::AuditEntry {
            actor: actor.clone(),
            action: action.to_string(),
            target: format!("{host}:{path}"),
            host_id: host.clone(),
            path: path.clone(),
            before_hash: before.to_string(),
            after_hash: after.to_string(),
            detail: audit_detail(&what, &keys, &req.reason, message),
            change_id: change_id.clone(),
        };
        // The intent is durable before the agent can act on it: a crash or a lost answer
        // still leaves a record that the change may have happened.
        let intent = if req.dry_run { "dry run requested" } else { "requested" };
        self.audit.record_durable(entry("correction.requested", &current.content_hash, "", intent)).await?;
        tracing::info!(host = %host, path = %path, change = %change_id, what = %what, dry_run = req.dry_run, "correction sent");
        let result = match self.dispatcher.apply(&host, change, timeout).await {
            Ok(r) => r,
            Err(e) => {
                let (action, message) = match &e {
                    ServerError::DeadlineExceeded(m) => {
                        ("correction.timeout", format!("{m}; the agent may still apply it"))
                    }
                    other => ("correction.lost", format!("not sent: {other}")),
                };
                tracing::warn!(host = %host, path = %path, change = %change_id, action, error = %e, "correction without a result");
                self.audit.record(entry(action, &current.content_hash, "", &message)).await;
                return Err(e);
            }
        };
        let outcome = driftwatch_proto::change_outcome_name(result.outcome);
        tracing::info!(host = %host, path = %path, change = %change_id, outcome, "correction result");
        let action = format!("correction.{outcome}");
        self.audit.record(entry(&action, &result.before_hash, &result.after_hash, &result.message)).await;
        Ok(v1::CorrectResponse { change_id, host_id: host, result: Some(result) })
    }
}

pub(crate) fn audit_detail(what: &str, keys: &[String], reason: &str, message: &str) -> String {
    let mut d = what.to_string();
    if !keys.is_empty() {
        d.push_str(&format!(" [{}]", keys.join(", ")));
    }
    if !reason.trim().is_empty() {
        d.push_str(&format!("; reason: {}", reason.trim()));
    }
    if !message.is_empty() {
        d.push_str(&format!("; {message}"));
    }
    d
}

pub(crate) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
