//! One host of a rollout: send it the change (waiting for it to come online, up
//! to the host timeout) and record the result, or put its file back by content
//! hash; and, on success, promote the new values into the hosts' baselines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1::{self, RolloutHostState as HS};
use tokio::time::Instant;

use super::APPLY_TIMEOUT;
use crate::changes::{ChangesCore, SERVER_ACTOR, short};
use crate::error::ServerError;

pub(super) type HostEvent = Option<(&'static str, String)>;

/// A host's new state with its audit event (action, and the host's message as detail).
fn event(h: v1::RolloutHost, action: &'static str) -> (v1::RolloutHost, HostEvent) {
    let detail = h.message.clone();
    (h, Some((action, detail)))
}

/// Send the change to one host and record what came of it.
pub(super) async fn apply_host(
    core: Arc<ChangesCore>,
    r: v1::Rollout,
    mut h: v1::RolloutHost,
    timeout: Duration,
) -> (v1::RolloutHost, HostEvent) {
    let deadline = Instant::now() + timeout;
    let current = match core.state.file_state(&h.host_id, &h.path) {
        Ok(f) => f.content_hash,
        Err(e) => {
            h.state = HS::Failed as i32;
            h.message = e.to_string();
            return event(h, "rollout.host_failed");
        }
    };
    if h.state == HS::Applying as i32 && current != h.before_hash {
        // Sent before a restart and the new file has arrived since: it went through.
        h.state = HS::Applied as i32;
        h.after_hash = current;
        h.message = "applied (result confirmed from the host's file after a restart)".into();
        return event(h, "rollout.host_applied");
    }
    if !core.dispatcher.wait_connected(&h.host_id, deadline).await {
        h.state = HS::Skipped as i32;
        h.message = format!("offline for {} s: skipped", timeout.as_secs());
        return event(h, "rollout.host_skipped");
    }
    let change = core.change_for(&r, &h, &current, false, "apply");
    // The intent is durable before the agent can act on it. Not recorded (the server is
    // stopping): not sent either, and the host stays as it was for the resumed rollout.
    let intent = format!("change {} sent", change.change_id);
    let entry = ChangesCore::audit_entry(&r, SERVER_ACTOR, "rollout.host_requested", &h.host_id, &current, "", &intent);
    if core.audit.record_durable(entry).await.is_err() {
        return (h, None);
    }
    // The content the plan saw: what a rollback restores.
    let planned = std::mem::replace(&mut h.before_hash, current.clone());
    h.state = HS::Applying as i32;
    match core.dispatcher.apply(&h.host_id, change, APPLY_TIMEOUT).await {
        Ok(res) => {
            h.diff = res.diff;
            h.message = res.message;
            match v1::ChangeOutcome::try_from(res.outcome) {
                Ok(v1::ChangeOutcome::Applied) => {
                    h.state = HS::Applied as i32;
                    h.after_hash = res.after_hash;
                    (h, Some(("rollout.host_applied", "applied".into())))
                }
                Ok(v1::ChangeOutcome::Unchanged) if !planned.is_empty() && planned != current => {
                    // The file changed since the plan to exactly this content: this rollout
                    // wrote it before a restart cut its record short. It is ours to undo.
                    h.state = HS::Applied as i32;
                    h.before_hash = planned;
                    h.after_hash = current;
                    h.message = "applied (before a server restart)".into();
                    event(h, "rollout.host_applied")
                }
                Ok(v1::ChangeOutcome::Unchanged) => {
                    h.state = HS::Skipped as i32;
                    h.after_hash = h.before_hash.clone();
                    h.message = "already had the change: nothing written".into();
                    event(h, "rollout.host_skipped")
                }
                _ => {
                    h.state = HS::Failed as i32;
                    // The agent's own account: what the file held before and after its
                    // handling (a conflict means the server's copy was behind).
                    if !res.before_hash.is_empty() {
                        h.before_hash = res.before_hash;
                    }
                    h.after_hash = res.after_hash;
                    h.message = format!("{}: {}", driftwatch_proto::change_outcome_name(res.outcome), h.message);
                    event(h, "rollout.host_failed")
                }
            }
        }
        Err(e) => {
            // Unknown whether it was written: rollback compares hashes before acting.
            h.state = HS::Failed as i32;
            let action = match e {
                ServerError::DeadlineExceeded(_) => {
                    h.message = format!("{e}; the agent may still apply it");
                    "rollout.host_timeout"
                }
                _ => {
                    h.message = format!("not sent: {e}");
                    "rollout.host_lost"
                }
            };
            event(h, action)
        }
    }
}

/// Whether a host needs a rollback, and the hash its file must have for it (the
/// restore is refused by the agent otherwise). `None`: nothing of this rollout is on
/// the host.
///
/// - Applied: always, even when the server's copy of the file reads as the old
///   content (that copy may lag what the agent wrote; the agent answers CONFLICT with
///   the old hash when the file is already back).
/// - Answered but not applied (refused, conflict, failed, rolled back by the agent):
///   only if the agent's answer says the file changed; a conflict wrote nothing, even
///   when the server's copy was behind.
/// - No answer (timed out): unknown whether it was written; compare the server's copy
///   with the content before.
fn rollback_expects(h: &v1::RolloutHost, current: &str) -> Option<String> {
    if h.state == HS::Applied as i32 {
        return Some(if h.after_hash.is_empty() { current.to_string() } else { h.after_hash.clone() });
    }
    if !h.after_hash.is_empty() {
        return (h.after_hash != h.before_hash).then(|| h.after_hash.clone());
    }
    (!current.is_empty() && current != h.before_hash).then(|| current.to_string())
}

/// Put one host's file back to its bytes from before the rollout.
pub(super) async fn rollback_host(
    core: Arc<ChangesCore>,
    r: v1::Rollout,
    mut h: v1::RolloutHost,
    timeout: Duration,
) -> (v1::RolloutHost, HostEvent) {
    let current = core.state.file_state(&h.host_id, &h.path).map(|f| f.content_hash).unwrap_or_default();
    let Some(expected) = rollback_expects(&h, &current) else {
        return (h, None);
    };
    let deadline = Instant::now() + timeout;
    if !core.dispatcher.wait_connected(&h.host_id, deadline).await {
        h.state = HS::RollbackFailed as i32;
        h.message = format!("offline for {} s: not rolled back", timeout.as_secs());
        return event(h, "rollout.host_rollback_failed");
    }
    let change = v1::ApplyChange {
        change_id: format!("{}/rollback/{}", r.id, h.host_id),
        path: h.path.clone(),
        expected_hash: expected.clone(),
        restore_hash: h.before_hash.clone(),
        reason: format!("rollback of rollout {}", r.id),
        ..Default::default()
    };
    let intent = format!("change {} sent", change.change_id);
    let action = "rollout.host_rollback_requested";
    let entry = ChangesCore::audit_entry(&r, SERVER_ACTOR, action, &h.host_id, &expected, &h.before_hash, &intent);
    if core.audit.record_durable(entry).await.is_err() {
        // Stopping: the resumed rollout finishes the rollback.
        return (h, None);
    }
    match core.dispatcher.apply(&h.host_id, change, APPLY_TIMEOUT).await {
        Ok(res)
            if matches!(
                v1::ChangeOutcome::try_from(res.outcome),
                Ok(v1::ChangeOutcome::Applied | v1::ChangeOutcome::Unchanged)
            ) =>
        {
            h.state = HS::RolledBack as i32;
            h.message = format!("rolled back to {}", short(&h.before_hash));
            event(h, "rollout.host_rolled_back")
        }
        Ok(res)
            if res.outcome == v1::ChangeOutcome::Conflict as i32
                && !res.before_hash.is_empty()
                && res.before_hash == h.before_hash =>
        {
            // Already back (a rollback interrupted by a restart finished on the host).
            h.state = HS::RolledBack as i32;
            h.message = "already back to its previous content".into();
            event(h, "rollout.host_rolled_back")
        }
        Ok(res) => {
            h.state = HS::RollbackFailed as i32;
            h.message = format!("rollback {}: {}", driftwatch_proto::change_outcome_name(res.outcome), res.message);
            event(h, "rollout.host_rollback_failed")
        }
        Err(e) => {
            h.state = HS::RollbackFailed as i32;
            let action = match e {
                ServerError::DeadlineExceeded(_) => {
                    h.message = format!("rollback: {e}; the agent may still apply it");
                    "rollout.host_rollback_timeout"
                }
                _ => {
                    h.message = format!("rollback not sent: {e}");
                    "rollout.host_rollback_failed"
                }
            };
            event(h, action)
        }
    }
}

impl ChangesCore {
    /// Whether the server holds this content hash for the host's file.
    pub(super) fn holds_hash(&self, host: &str, path: &str, hash: &str) -> bool {
        self.state
            .hosts
            .get(host)
            .and_then(|h| h.files.get(path).map(|f| f.state().content_hash == hash))
            .unwrap_or(false)
    }

    /// Write the rollout's new values into the baselines of the hosts it changed.
    pub(super) async fn promote(&self, r: &v1::Rollout) -> Result<Vec<String>, ServerError> {
        use driftwatch_proto::v1::baselines_server::Baselines;
        if r.set_keys.is_empty() && r.remove_keys.is_empty() {
            return Err(ServerError::FailedPrecondition("a content restore has no keys to promote".into()));
        }
        // One promotion per baseline, from the first applied host it covers.
        // Per (baseline, file): one promotion, from the first applied host it covers.
        let mut by_baseline: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        for h in r.waves.iter().flat_map(|w| &w.hosts).filter(|h| h.state == HS::Applied as i32) {
            if let Some((name, keys)) = self.baseline_keys(&h.host_id, &h.path).await {
                by_baseline
                    .entry((name, h.path.clone()))
                    .or_insert_with(|| (h.host_id.clone(), keys.into_iter().map(|k| k.key).collect()));
            }
        }
        let mut names = Vec::new();
        for ((name, path), (host, base_keys)) in by_baseline {
            let req = v1::SetBaselineKeysRequest {
                name: name.clone(),
                path,
                promote_keys: r.set_keys.keys().cloned().collect(),
                promote_from_host_id: host,
                remove: r.remove_keys.iter().filter(|k| base_keys.contains(k)).cloned().collect(),
                reason: format!("promoted by rollout {}", r.id),
                ..Default::default()
            };
            // The promotion is the rollout's starter's act.
            let mut request = tonic::Request::new(req);
            request.extensions_mut().insert(crate::principal::Principal::named(r.actor.clone()));
            self.baselines_service
                .set_baseline_keys(request)
                .await
                .map_err(|s| ServerError::FailedPrecondition(s.message().to_string()))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(state: HS, before: &str, after: &str) -> v1::RolloutHost {
        v1::RolloutHost {
            state: state as i32,
            before_hash: before.into(),
            after_hash: after.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_applied_host_is_always_restored_from_what_it_wrote() {
        assert_eq!(rollback_expects(&host(HS::Applied, "a", "b"), "a").as_deref(), Some("b"), "the server's copy lags");
        assert_eq!(rollback_expects(&host(HS::Applied, "a", ""), "c").as_deref(), Some("c"));
    }

    #[test]
    fn an_answer_that_wrote_nothing_is_never_rolled_back() {
        // A conflict: the agent's before and after agree, whatever the server's copy says.
        assert_eq!(rollback_expects(&host(HS::Failed, "x", "x"), "y"), None);
        // Skipped (already had the content).
        assert_eq!(rollback_expects(&host(HS::Skipped, "a", "a"), "a"), None);
        // The agent failed after writing and left the file changed: undo that.
        assert_eq!(rollback_expects(&host(HS::Failed, "a", "b"), "a").as_deref(), Some("b"));
    }

    #[test]
    fn without_an_answer_the_servers_copy_decides() {
        assert_eq!(rollback_expects(&host(HS::Failed, "a", ""), "a"), None);
        assert_eq!(rollback_expects(&host(HS::Failed, "a", ""), ""), None);
        assert_eq!(rollback_expects(&host(HS::Failed, "a", ""), "b").as_deref(), Some("b"));
    }
}
