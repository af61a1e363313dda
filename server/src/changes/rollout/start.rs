//! Starting a rollout: the targets a selector and path pick, wave sizes, the
//! pre-flight (rules evaluated on every host's candidate keys), and a dry run's
//! per-host diffs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::v1::{self, OnFailure, RolloutHostState as HS, RolloutState as RS};

use super::{DEFAULT_HOST_TIMEOUT, describe_change, now_ts, set_host};
use crate::changes::{ChangesCore, plan};
use crate::error::ServerError;
use crate::limits::{Breach, Limit};
use crate::selector::Selector;

impl ChangesCore {
    /// Plan, pre-flight and (unless a dry run) start a rollout.
    pub async fn start_rollout(
        self: &Arc<Self>,
        req: v1::StartRolloutRequest,
        actor: &str,
    ) -> Result<v1::StartRolloutResponse, ServerError> {
        let invalid = ServerError::InvalidArgument;
        let selector_text = req.selector.trim().to_string();
        if selector_text.is_empty() {
            return Err(invalid(
                "selector is required (a label selector such as service=web2img,env=production)".into(),
            ));
        }
        let selector = Selector::parse(&selector_text).map_err(|e| invalid(format!("selector: {e}")))?;
        let path = req.path.trim().to_string();
        if !path.starts_with('/') {
            return Err(invalid("path must be the absolute path of the file on the hosts".into()));
        }
        let keys_change = !req.set_keys.is_empty() || !req.remove_keys.is_empty();
        let restore = req.restore_hash.trim().to_string();
        if keys_change != restore.is_empty() {
            return Err(invalid("give the change as set_keys/remove_keys, or as restore_hash (one of the two)".into()));
        }
        let set: BTreeMap<String, String> = req.set_keys.clone().into_iter().collect();
        let gate = match v1::Severity::try_from(req.gate_severity) {
            Ok(v1::Severity::Unspecified) | Err(_) => v1::Severity::Medium,
            Ok(s) => s,
        };
        let on_failure = match OnFailure::try_from(req.on_failure) {
            Ok(OnFailure::Pause) => OnFailure::Pause,
            _ => OnFailure::RollBack,
        };
        let host_timeout =
            driftwatch_proto::duration::from_proto_or("host_timeout", req.host_timeout.as_ref(), DEFAULT_HOST_TIMEOUT)
                .map_err(invalid)?
                .max(Duration::from_secs(1));
        let bake =
            driftwatch_proto::duration::from_proto_or("bake", req.bake.as_ref(), Duration::ZERO).map_err(invalid)?;

        // Targets: hosts the selector picks that watch the file (or one match of the
        // glob), in a stable order.
        let glob = if path.contains(['*', '?', '[']) {
            Some(driftwatch_rules::FileGlob::new(&path).map_err(|e| invalid(format!("path: {e}")))?)
        } else {
            None
        };
        let mut targets: Vec<(String, v1::FileState)> = Vec::new();
        for h in self.state.hosts.iter().filter(|h| selector.matches(&h.labels)) {
            let matches: Vec<&String> = match &glob {
                None => h.files.keys().filter(|p| **p == path).collect(),
                Some(g) => h.files.keys().filter(|p| g.is_match(p)).collect(),
            };
            match matches.as_slice() {
                [] => {}
                [one] => targets.push((h.key().clone(), h.files[*one].state())),
                many => {
                    return Err(ServerError::FailedPrecondition(format!(
                        "host '{}' watches {} files matching '{path}'; a rollout changes one file per host",
                        h.key(),
                        many.len()
                    )));
                }
            }
        }
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        if targets.is_empty() {
            return Err(ServerError::FailedPrecondition(format!(
                "no host matches '{selector_text}' and watches '{path}'"
            )));
        }
        // No value in clear for a key masked on any target or in its baseline, nor one that
        // looks secret: refused before anything is sent (a dry run included) or stored.
        let mut masked = plan::MaskedKeys::default();
        for (host, current) in targets.iter().filter(|_| !set.is_empty()) {
            masked.add(&format!("on host '{host}'"), &current.keys);
            if let Some((name, keys)) = self.baseline_keys(host, &current.path).await {
                masked.add(&format!("in baseline '{name}'"), &keys);
            }
        }
        plan::check_no_secrets(&set, &masked).map_err(|e| {
            tracing::warn!(actor, path = %path, error = %e, "rollout refused");
            invalid(e)
        })?;
        let waves = plan::wave_counts(&req.waves, targets.len()).map_err(invalid)?;
        let busy: Vec<String> = {
            let ids: HashSet<&str> = targets.iter().map(|(h, _)| h.as_str()).collect();
            self.rollouts
                .all()
                .into_iter()
                .filter(|r| !driftwatch_proto::rollout_is_terminal(r.state))
                .filter(|r| {
                    r.waves.iter().flat_map(|w| &w.hosts).any(|h| {
                        ids.contains(h.host_id.as_str())
                            && targets.iter().any(|(id, f)| *id == h.host_id && f.path == h.path)
                    })
                })
                .map(|r| r.id)
                .collect()
        };
        if !busy.is_empty() {
            return Err(ServerError::FailedPrecondition(format!(
                "rollout {} is still changing '{path}' on some of these hosts; abort it or wait",
                busy.join(", ")
            )));
        }

        // Pre-flight: the new values against the rules, host by host.
        let mut preflight = Vec::new();
        if keys_change && let Some(rules) = self.rules.current() {
            for (host, current) in &targets {
                let Some(info) = self.host_info(host) else { continue };
                let candidate = plan::candidate_keys(&current.keys, &set, &req.remove_keys);
                let base = self.baseline_keys(host, &current.path).await.map(|(_, k)| k);
                preflight.extend(crate::changes::preflight_host(&rules, &info, current, &candidate, base.as_deref()));
            }
        }
        if !preflight.is_empty() && !req.force && !req.dry_run {
            return Err(ServerError::FailedPrecondition(format!(
                "pre-flight refused the rollout: the change would fire {} rule outcome(s): {} (force to start anyway)",
                preflight.len(),
                plan::describe_findings(&preflight)
            )));
        }

        let now = now_ts();
        let mut rollout = v1::Rollout {
            id: self.dispatcher.new_id("r"),
            state: RS::Pending as i32,
            selector: selector_text,
            path: path.clone(),
            set_keys: req.set_keys.clone(),
            remove_keys: req.remove_keys.clone(),
            restore_hash: restore,
            bake: Some(driftwatch_proto::duration::to_proto(bake)),
            gate_severity: gate as i32,
            on_failure: on_failure as i32,
            promote_baseline: req.promote_baseline,
            actor: actor.to_string(),
            reason: req.reason.clone(),
            created_at: Some(now),
            updated_at: Some(now),
            host_timeout: Some(driftwatch_proto::duration::to_proto(host_timeout)),
            forced_past: if req.force { preflight.clone() } else { Vec::new() },
            ..Default::default()
        };
        let mut from = 0;
        for (i, (size, upto)) in waves.iter().enumerate() {
            let hosts = targets[from..*upto]
                .iter()
                .map(|(h, f)| v1::RolloutHost {
                    host_id: h.clone(),
                    path: f.path.clone(),
                    state: HS::Waiting as i32,
                    before_hash: f.content_hash.clone(),
                    ..Default::default()
                })
                .collect();
            rollout.waves.push(v1::Wave { index: i as u32, size: size.clone(), hosts, ..Default::default() });
            from = *upto;
        }

        if req.dry_run {
            self.dry_run(&mut rollout).await;
            return Ok(v1::StartRolloutResponse { rollout: Some(rollout), preflight });
        }

        // Held until the rollout is registered below (or this start fails).
        let _place = self.rollouts.reserve(actor, self.limits.max_rollouts_per_principal).map_err(|active| {
            let what = format!("'{actor}' has {active} rollouts pending, running or paused");
            Breach::new(Limit::MaxRolloutsPerPrincipal, what).refuse(&self.limits, &self.engine.metrics())
        })?;
        self.persist(&rollout).await?;
        let detail = format!(
            "{} host(s) in {} wave(s), selector {}, change {}{}",
            targets.len(),
            rollout.waves.len(),
            rollout.selector,
            describe_change(&rollout),
            if rollout.forced_past.is_empty() {
                String::new()
            } else {
                format!("; forced past pre-flight: {}", plan::describe_findings(&rollout.forced_past))
            }
        );
        self.audit.record(Self::audit_entry(&rollout, &rollout.actor, "rollout.started", "", "", "", &detail)).await;
        tracing::info!(rollout = %rollout.id, path = %path, hosts = targets.len(), waves = rollout.waves.len(), "rollout started");
        self.spawn_rollout(rollout.clone());
        Ok(v1::StartRolloutResponse { rollout: Some(rollout), preflight })
    }

    /// Every target host's diff, as its agent would write it; nothing written.
    async fn dry_run(&self, rollout: &mut v1::Rollout) {
        let mut tasks = tokio::task::JoinSet::new();
        for h in rollout.waves.iter().flat_map(|w| &w.hosts) {
            let change = self.change_for(rollout, h, &h.before_hash, true, "dry");
            let d = self.dispatcher.clone();
            let host = h.host_id.clone();
            tasks.spawn(async move {
                let r = d.apply(&host, change, Duration::from_secs(30)).await;
                (host, r)
            });
        }
        while let Some(Ok((host, r))) = tasks.join_next().await {
            set_host(rollout, &host, |h| match r {
                Ok(r) => {
                    h.after_hash = r.after_hash;
                    h.diff = r.diff;
                    h.message = format!("{}: {}", driftwatch_proto::change_outcome_name(r.outcome), r.message);
                }
                Err(e) => h.message = format!("no diff: {e}"),
            });
        }
    }

    pub(super) fn change_for(
        &self,
        r: &v1::Rollout,
        h: &v1::RolloutHost,
        expected: &str,
        dry_run: bool,
        tag: &str,
    ) -> v1::ApplyChange {
        v1::ApplyChange {
            change_id: format!("{}/{tag}/{}", r.id, h.host_id),
            path: h.path.clone(),
            expected_hash: expected.to_string(),
            dry_run,
            set_text: r.set_keys.clone(),
            remove_keys: r.remove_keys.clone(),
            restore_hash: r.restore_hash.clone(),
            reason: format!("rollout {} by {}", r.id, r.actor),
            ..Default::default()
        }
    }
}
