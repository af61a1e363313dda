//! Evaluation: a changed file, a resource sample, the agent-offline rules, and
//! re-evaluation of the fleet (new rules, new baselines, a queue overflow). Each
//! turns rule outcomes into observations the alert lifecycle steps.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use driftwatch_proto::v1::{self, FileState, ResourceSample};
use driftwatch_rules::{AgentInput, FileInput, HostInfo, Observation, Outcome, ResourceInput, Rule, RuleSet, Target};
use prost::Message;

use super::{ERROR_LOG_INTERVAL, Engine, Subject};
use crate::rule_input::{file_meta, key_map};

impl Engine {
    pub(super) fn host_info(&self, host: &str) -> Option<HostInfo> {
        self.state.hosts.get(host).map(|h| HostInfo { id: host.to_string(), labels: h.labels.clone() })
    }

    /// The effective baseline's resource expectations for a host.
    pub(super) fn expected_resources(&self, info: &HostInfo) -> HashMap<String, f64> {
        self.baselines
            .effective(&info.id, &info.labels)
            .map(|b| b.resources.iter().map(|r| (r.metric.clone(), r.value)).collect())
            .unwrap_or_default()
    }

    pub(super) fn eval_file(&mut self, host: &str, path: &str, previous: Option<&[u8]>, current: &[u8], now: i64) {
        let Some(rules) = self.rules.clone() else { return };
        let Some(info) = self.host_info(host) else { return };
        let subject = Subject::File(path.to_string());
        let relevant = rules.rules().iter().any(|r| match &r.target {
            Target::File { file, .. } => r.selects(&info.labels) && file.is_match(path),
            _ => false,
        });
        if !relevant && !self.has_alerts(host, &subject) {
            return;
        }
        let outcomes = if relevant {
            let Ok(state) = FileState::decode(current) else { return };
            let keys = key_map(&state.keys);
            let prev_keys = previous.and_then(|p| FileState::decode(p).ok()).map(|p| key_map(&p.keys));
            let baseline = self
                .baselines
                .effective(host, &info.labels)
                .and_then(|b| b.files.iter().find(|f| f.path == path))
                .map(|f| key_map(&f.keys));
            let meta = file_meta(&state);
            let input =
                FileInput { path, keys: &keys, meta: &meta, baseline: baseline.as_ref(), previous: prev_keys.as_ref() };
            let tracked = self.has_alerts(host, &subject);
            let (mut out, mut n) = (Vec::new(), 0u64);
            rules.evaluate_file_with(&info, &input, |o| keep(&mut out, &mut n, o, tracked));
            self.metrics.rule_evaluations.inc_by(n);
            out
        } else {
            Vec::new()
        };
        self.apply_outcomes(&rules, &info, &subject, outcomes, now);
    }

    pub(super) fn eval_resource(&mut self, host: &str, sample: &ResourceSample) {
        let Some(rules) = self.rules.clone() else { return };
        if self.history_metrics.is_empty() {
            return;
        }
        let Some(info) = self.host_info(host) else { return };
        if !rules.rules().iter().any(|r| matches!(r.target, Target::Resource { .. }) && r.selects(&info.labels)) {
            return;
        }
        let t = sample
            .sampled_at
            .as_ref()
            .map(driftwatch_proto::timestamp_millis)
            .unwrap_or_else(driftwatch_proto::now_millis);
        self.warm_history(host, t);
        let window = self.history_ms;
        let expected = self.expected_resources(&info);
        let values: Vec<(String, f64)> = driftwatch_rules::resource_metrics(sample)
            .into_iter()
            .filter(|(m, v)| self.history_metrics.contains(m) && v.is_finite())
            .collect();
        for (metric, value) in values {
            let tracked = self.has_alerts(host, &Subject::Metric(metric.clone()));
            let outcomes = {
                let h = self.history.entry(host.to_string()).or_default();
                let series = h.series.entry(metric.clone()).or_default();
                super::history::push(series, t, value, window);
                let samples = series.make_contiguous();
                let baseline = expected.get(&metric).copied();
                let (mut out, mut n) = (Vec::new(), 0u64);
                let input = ResourceInput { metric: &metric, samples, baseline, now_ms: t };
                rules.evaluate_resource_with(&info, &input, |o| keep(&mut out, &mut n, o, tracked));
                self.metrics.rule_evaluations.inc_by(n);
                out
            };
            self.apply_outcomes(&rules, &info, &Subject::Metric(metric), outcomes, t);
        }
    }

    /// After a restart, read the host's recent samples back so windows are full at once.
    pub(super) fn warm_history(&mut self, host: &str, now: i64) {
        let h = self.history.entry(host.to_string()).or_default();
        if h.warmed {
            return;
        }
        h.warmed = true;
        let Some(reader) = &self.reader else { return };
        let records = match reader.lock().resource_history(host, now - self.history_ms, now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot read resource history; windows start empty");
                return;
            }
        };
        for r in records {
            let Ok(s) = ResourceSample::decode(r.sample.as_slice()) else { continue };
            for (m, v) in driftwatch_rules::resource_metrics(&s) {
                if self.history_metrics.contains(&m) && v.is_finite() {
                    let series = h.series.entry(m).or_default();
                    if series.back().is_none_or(|&(last, _)| r.sampled_ms > last) {
                        series.push_back((r.sampled_ms, v));
                    }
                }
            }
        }
    }

    pub(super) fn has_alerts(&self, host: &str, subject: &Subject) -> bool {
        self.subjects.get(host).and_then(|s| s.get(subject)).is_some_and(|f| !f.is_empty())
    }

    pub(super) fn apply_outcomes(
        &mut self,
        rules: &RuleSet,
        info: &HostInfo,
        subject: &Subject,
        outcomes: Vec<Outcome>,
        now: i64,
    ) {
        // The common case, a clean subject: nothing matched and nothing is tracked for
        // it, so there is no alert to create or update (and no fingerprint to hash).
        let tracked = self.has_alerts(&info.id, subject);
        let mut seen = Vec::new();
        for o in outcomes {
            let rule = &rules.rules()[o.rule];
            if let Some(err) = &o.error {
                self.evaluation_error(rule, info, &o, err);
            }
            let obs = o.observation();
            if obs != Observation::Matched && !tracked {
                continue;
            }
            let fp = o.fingerprint(rules);
            self.observe(&fp, Some((rule, &o, info)), obs, now);
            seen.push(fp);
        }
        if tracked {
            self.apply(&info.id, subject, seen, now);
        }
    }

    /// Alerts of `subject` that the last evaluation did not produce (key gone, rule
    /// gone or no longer selecting the host, file unwatched) see a non-match.
    pub(super) fn apply(&mut self, host: &str, subject: &Subject, seen: Vec<String>, now: i64) {
        let Some(existing) = self.subjects.get(host).and_then(|s| s.get(subject)) else { return };
        let seen: HashSet<&String> = seen.iter().collect();
        let absent: Vec<String> = existing.iter().filter(|fp| !seen.contains(fp)).cloned().collect();
        for fp in absent {
            self.observe(&fp, None, Observation::NotMatched, now);
        }
    }

    pub(super) fn evaluation_error(&mut self, rule: &Rule, info: &HostInfo, o: &Outcome, err: &str) {
        self.metrics.rule_evaluation_errors.inc();
        let key = (rule.group.clone(), rule.name.clone());
        let now = Instant::now();
        if self.error_logged.get(&key).is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL) {
            self.error_logged.insert(key, now);
            tracing::warn!(group = %rule.group, rule = %rule.name, host = %info.id, file = o.file.as_deref().unwrap_or(""), key = o.key.as_deref().unwrap_or(""), error = %err, "rule evaluation error (state held; logged once a minute per rule)");
        }
    }

    /// Evaluate again from the in-memory state: every file (the current version
    /// counts as its own previous: nothing changed) and the latest resource sample.
    pub(super) fn reevaluate(&mut self, host: Option<&str>) {
        let now = driftwatch_proto::now_millis();
        let hosts: Vec<String> = match host {
            Some(h) => vec![h.to_string()],
            None => {
                let mut all: HashSet<String> = self.state.hosts.iter().map(|h| h.key().clone()).collect();
                all.extend(self.subjects.keys().cloned());
                all.into_iter().collect()
            }
        };
        for h in hosts {
            let files: Vec<(String, Arc<[u8]>)> = self
                .state
                .hosts
                .get(&h)
                .map(|e| e.files.iter().map(|(p, f)| (p.clone(), f.shared())).collect())
                .unwrap_or_default();
            let watched: HashSet<&String> = files.iter().map(|(p, _)| p).collect();
            // A host removed from the fleet (expired) keeps no alert but the server's own.
            let gone = !self.state.hosts.contains_key(&h);
            // Alerts of files the host no longer watches (or of a host gone) resolve.
            let stale: Vec<Subject> = self
                .subjects
                .get(&h)
                .map(|s| {
                    s.keys()
                        .filter(|sub| match sub {
                            Subject::File(p) => !watched.contains(p),
                            Subject::Metric(_) | Subject::Agent => gone || self.rules.is_none(),
                            Subject::System => false,
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for sub in stale {
                self.apply(&h, &sub, Vec::new(), now);
            }
            if gone {
                // Its resource series too: a host that comes back is a new host.
                self.history.remove(&h);
            }
            for (path, bytes) in &files {
                self.eval_file(&h, path, Some(bytes), bytes, now);
            }
            self.reevaluate_resources(&h);
        }
        if host.is_none() {
            self.tick(now);
        }
    }

    /// Resource rules again on the newest sample of each metric (after a rule change).
    pub(super) fn reevaluate_resources(&mut self, host: &str) {
        let Some(rules) = self.rules.clone() else { return };
        let Some(info) = self.host_info(host) else { return };
        let metrics: Vec<String> =
            self.history.get(host).map(|h| h.series.keys().cloned().collect()).unwrap_or_default();
        let expected = self.expected_resources(&info);
        let mut evaluated = HashSet::new();
        for metric in metrics {
            let outcomes = {
                let Some(series) = self.history.get_mut(host).and_then(|h| h.series.get_mut(&metric)) else { continue };
                let Some(&(t, _)) = series.back() else { continue };
                let samples = series.make_contiguous();
                let baseline = expected.get(&metric).copied();
                let o =
                    rules.evaluate_resource(&info, &ResourceInput { metric: &metric, samples, baseline, now_ms: t });
                (o, t)
            };
            evaluated.insert(Subject::Metric(metric.clone()));
            self.apply_outcomes(&rules, &info, &Subject::Metric(metric), outcomes.0, outcomes.1);
        }
        // Resource alerts not evaluated just now whose rule is gone resolve; those whose
        // rule still runs wait for the next sample (after a restart, history is empty).
        let now = driftwatch_proto::now_millis();
        let gone: Vec<String> = {
            self.subjects
                .get(host)
                .into_iter()
                .flat_map(|s| s.iter())
                .filter(|(sub, _)| matches!(sub, Subject::Metric(_)) && !evaluated.contains(*sub))
                .flat_map(|(_, fps)| fps.iter())
                .filter(|fp| {
                    self.book.get(fp).is_some_and(|a| !self.rule_index.contains_key(&(a.group.clone(), a.rule.clone())))
                })
                .cloned()
                .collect()
        };
        for fp in gone {
            self.observe(&fp, None, Observation::NotMatched, now);
        }
    }

    /// Timers: pending alerts whose `for` elapsed, firing ones whose
    /// `keep_firing_for` ran out (file and agent rules; resource rules move on the
    /// sample clock), agent-offline rules, and silences starting or ending.
    pub(super) fn tick(&mut self, now: i64) {
        let due = self.book.tracked_where(|t| {
            t.alert.metric.is_empty()
                && match v1::AlertState::try_from(t.alert.state) {
                    Ok(v1::AlertState::Pending) => t.last_obs == Observation::Matched,
                    Ok(v1::AlertState::Firing) => t.alert.keep_since.is_some(),
                    _ => false,
                }
        });
        for (fp, obs) in due {
            self.observe(&fp, None, obs, now);
        }
        if self.has_agent_rules
            && let Some(rules) = self.rules.clone()
        {
            let hosts: Vec<(HostInfo, AgentInput)> = self
                .state
                .hosts
                .iter()
                .map(|h| {
                    (
                        HostInfo { id: h.key().clone(), labels: h.labels.clone() },
                        AgentInput { connected: h.connection.is_some(), last_seen_ms: h.last_seen_ms, now_ms: now },
                    )
                })
                .collect();
            for (info, input) in hosts {
                let outcomes = rules.evaluate_agent(&info, &input);
                self.apply_outcomes(&rules, &info, &Subject::Agent, outcomes, now);
            }
        }
        self.silence_boundaries(now);
    }
}

/// Keep an outcome that can change an alert (matched, failed, or about a subject with
/// alerts); the rest, the clean common case, is never copied out of the evaluation.
fn keep(out: &mut Vec<Outcome>, count: &mut u64, o: driftwatch_rules::OutcomeRef<'_>, tracked: bool) {
    *count += 1;
    if tracked || o.matched || o.error.is_some() {
        out.push(o.to_outcome());
    }
}
