//! The alert lifecycle: one observation steps one alert's state machine; every
//! transition becomes an event (with the next id) and, through the router, the
//! notifiers' outbox rows; silences mark alerts. Writes go to the alert book and
//! into the engine's next store write.

use std::collections::BTreeMap;
use std::sync::Arc;

use driftwatch_proto::v1;
use driftwatch_rules::{AlertState, AlertStatus, HostInfo, Observation, Outcome, Rule, Severity, Target, Timing, step};
use driftwatch_store::{AlertRecord, EventRecord, Op};
use prost::Message;

use super::{Engine, SYSTEM_GROUP, Subject, SystemAlert};
use crate::alert_book::Tracked;

impl Engine {
    pub(super) fn timing_of(&self, a: &v1::Alert) -> Timing {
        self.rules
            .as_ref()
            .and_then(|set| self.rule_index.get(&(a.group.clone(), a.rule.clone())).map(|&i| set.rules()[i].timing))
            .unwrap_or_default()
    }

    /// Advance one alert with an observation; `outcome` carries the evaluation that
    /// produced it (None: the subject was not evaluated by that rule this time).
    pub(super) fn observe(
        &mut self,
        fp: &str,
        outcome: Option<(&Rule, &Outcome, &HostInfo)>,
        obs: Observation,
        now: i64,
    ) {
        let prev = self.book.tracked(fp);
        let timing = match outcome {
            Some((rule, _, _)) => rule.timing,
            None => prev.as_ref().map(|p| self.timing_of(&p.alert)).unwrap_or_default(),
        };
        let prev_status = prev.as_ref().map(|p| status_of(&p.alert));
        let (status, transitions) = step(prev_status.as_ref(), timing, obs, now);
        if prev.is_none() && status.state == AlertState::Inactive {
            return;
        }
        let mut alert = match (&prev, outcome) {
            (Some(p), _) => p.alert.clone(),
            (None, Some((rule, o, info))) => new_alert(fp, rule, o, info),
            (None, None) => return,
        };
        let before = alert.clone();
        if let Some((rule, o, info)) = outcome {
            alert.severity = severity_to_proto(rule.severity) as i32;
            alert.labels = alert_labels(rule, o, info);
            alert.annotations = rule.render_annotations(o, info);
            alert.value = Some(o.value.clone());
            alert.baseline = Some(o.baseline.clone());
            alert.previous = Some(o.previous.clone());
            alert.evaluation_error = o.error.clone().unwrap_or_default();
        }
        set_status(&mut alert, &status);
        for t in &transitions {
            if matches!(t.from, AlertState::Inactive | AlertState::Resolved) {
                // A new episode needs a new acknowledgement.
                alert.acknowledged = None;
            }
        }
        let silenced_before = !alert.silenced_by.is_empty();
        alert.silenced_by = self.book.silenced_by(&alert.labels, now);
        let silenced_after = !alert.silenced_by.is_empty();
        let changed = alert != before;
        alert.evaluated_at = Some(driftwatch_proto::timestamp_from_millis(now));

        if status.state == AlertState::Inactive {
            // A pending episode ended before `for` elapsed: nothing to keep.
            self.book.remove(fp);
            self.unindex(&alert.host_id, &Subject::of(&alert), fp);
            self.ops.push(Op::RemoveAlert { fingerprint: fp.to_string() });
            self.event(v1::AlertEventKind::Cleared, &alert, now);
            return;
        }
        if prev.is_none() {
            self.index(&alert.host_id, Subject::of(&alert), fp);
        }
        if changed {
            self.persist(fp, &alert, now);
        }
        for t in &transitions {
            let kind = match t.to {
                AlertState::Pending => v1::AlertEventKind::Pending,
                AlertState::Firing => v1::AlertEventKind::Fired,
                AlertState::Resolved => v1::AlertEventKind::Resolved,
                AlertState::Inactive => v1::AlertEventKind::Cleared,
            };
            self.event(kind, &alert, t.at_ms);
        }
        if silenced_before != silenced_after {
            let kind = if silenced_after { v1::AlertEventKind::Silenced } else { v1::AlertEventKind::Unsilenced };
            self.event(kind, &alert, now);
        }
        self.book.put(Tracked { alert, last_obs: obs });
    }

    pub(super) fn system_alert(&mut self, a: SystemAlert, now: i64) {
        let labels = self.state.hosts.get(&a.host).map(|h| h.labels.clone()).unwrap_or_default();
        let info = HostInfo { id: a.host.clone(), labels };
        let rule = Rule::builtin(SYSTEM_GROUP, &a.name, a.severity, [("summary".to_string(), a.summary)].into());
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let o = Outcome {
            rule: 0,
            host: a.host.clone(),
            file: opt(&a.path),
            key: opt(&a.key),
            matched: a.firing,
            value: v1::Value::null(),
            baseline: v1::Value::null(),
            previous: v1::Value::null(),
            error: None,
        };
        let fp = driftwatch_rules::fingerprint(SYSTEM_GROUP, &a.name, &a.host, o.file.as_deref(), o.key.as_deref());
        let obs = if a.firing { Observation::Matched } else { Observation::NotMatched };
        self.observe(&fp, Some((&rule, &o, &info)), obs, now);
    }

    pub(super) fn persist(&mut self, fp: &str, alert: &v1::Alert, now: i64) {
        self.ops.push(Op::Alert(AlertRecord {
            fingerprint: fp.to_string(),
            updated_ms: now,
            payload: alert.encode_to_vec(),
        }));
    }

    pub(super) fn event(&mut self, kind: v1::AlertEventKind, alert: &v1::Alert, at_ms: i64) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        let ev = v1::AlertEvent {
            id,
            at: Some(driftwatch_proto::timestamp_from_millis(at_ms)),
            kind: kind as i32,
            alert: Some(alert.clone()),
        };
        self.metrics.alert_events.inc();
        tracing::info!(event = id, kind = driftwatch_proto::alert_event_kind_name(kind), rule = %alert.rule, host = %alert.host_id, path = %alert.path, key = %alert.key, metric = %alert.metric, "alert event");
        self.ops.push(Op::Event(EventRecord {
            id,
            kind: format!("alert.{}", driftwatch_proto::alert_event_kind_name(kind)),
            at_ms,
            payload: ev.encode_to_vec(),
        }));
        if let Some(router) = &self.router {
            self.ops.extend(router.route(&ev));
        }
        self.unpublished.push(Arc::new(ev));
    }

    pub(super) fn index(&mut self, host: &str, subject: Subject, fp: &str) {
        self.subjects.entry(host.to_string()).or_default().entry(subject).or_default().insert(fp.to_string());
    }

    pub(super) fn unindex(&mut self, host: &str, subject: &Subject, fp: &str) {
        if let Some(s) = self.subjects.get_mut(host) {
            if let Some(set) = s.get_mut(subject) {
                set.remove(fp);
                if set.is_empty() {
                    s.remove(subject);
                }
            }
            if s.is_empty() {
                self.subjects.remove(host);
            }
        }
    }

    /// Re-check alerts whose silenced state changed because a silence started or ended.
    pub(super) fn silence_boundaries(&mut self, now: i64) {
        let changed = self.book.silence_changes(now);
        for (fp, by) in changed {
            self.set_silenced(&fp, by, now);
        }
    }

    pub(super) fn set_silenced(&mut self, fp: &str, by: Vec<String>, now: i64) {
        let Some(mut t) = self.book.tracked(fp) else { return };
        let was = !t.alert.silenced_by.is_empty();
        t.alert.silenced_by = by;
        let is = !t.alert.silenced_by.is_empty();
        self.persist(fp, &t.alert, now);
        if was != is {
            let kind = if is { v1::AlertEventKind::Silenced } else { v1::AlertEventKind::Unsilenced };
            self.event(kind, &t.alert, now);
        }
        self.book.put(t);
    }
}

fn new_alert(fp: &str, rule: &Rule, o: &Outcome, info: &HostInfo) -> v1::Alert {
    let metric = match &rule.target {
        Target::Resource { metric } => metric.clone(),
        _ => String::new(),
    };
    v1::Alert {
        fingerprint: fp.to_string(),
        group: rule.group.clone(),
        rule: rule.name.clone(),
        host_id: info.id.clone(),
        path: o.file.clone().unwrap_or_default(),
        key: o.key.clone().unwrap_or_default(),
        metric,
        ..Default::default()
    }
}

/// The labels silences and notifiers match on: the host's labels, then the rule's,
/// then the reserved identity labels (which win).
fn alert_labels(rule: &Rule, o: &Outcome, info: &HostInfo) -> BTreeMap<String, String> {
    let mut l = info.labels.clone();
    l.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l.insert("alertname".into(), rule.name.clone());
    l.insert("group".into(), rule.group.clone());
    l.insert("severity".into(), rule.severity.to_string());
    l.insert("host".into(), info.id.clone());
    if let Some(f) = &o.file {
        l.insert("path".into(), f.clone());
    }
    if let Some(k) = &o.key {
        l.insert("key".into(), k.clone());
    }
    if let Target::Resource { metric } = &rule.target {
        l.insert("metric".into(), metric.clone());
    }
    l
}

/// The state-machine view of a stored alert.
fn status_of(a: &v1::Alert) -> AlertStatus {
    let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(driftwatch_proto::timestamp_millis);
    AlertStatus {
        state: match v1::AlertState::try_from(a.state) {
            Ok(v1::AlertState::Pending) => AlertState::Pending,
            Ok(v1::AlertState::Firing) => AlertState::Firing,
            Ok(v1::AlertState::Resolved) => AlertState::Resolved,
            _ => AlertState::Inactive,
        },
        active_since_ms: ms(&a.active_since),
        fired_at_ms: ms(&a.fired_at),
        last_matched_ms: ms(&a.last_matched),
        keep_since_ms: ms(&a.keep_since),
        resolved_at_ms: ms(&a.resolved_at),
    }
}

fn set_status(a: &mut v1::Alert, s: &AlertStatus) {
    let ts = |v: Option<i64>| v.map(driftwatch_proto::timestamp_from_millis);
    a.state = match s.state {
        AlertState::Pending => v1::AlertState::Pending,
        AlertState::Firing => v1::AlertState::Firing,
        AlertState::Resolved => v1::AlertState::Resolved,
        AlertState::Inactive => v1::AlertState::Unspecified,
    } as i32;
    a.active_since = ts(s.active_since_ms);
    a.fired_at = ts(s.fired_at_ms);
    a.last_matched = ts(s.last_matched_ms);
    a.keep_since = ts(s.keep_since_ms);
    a.resolved_at = ts(s.resolved_at_ms);
}

pub fn severity_to_proto(s: Severity) -> v1::Severity {
    match s {
        Severity::Info => v1::Severity::Info,
        Severity::Low => v1::Severity::Low,
        Severity::Medium => v1::Severity::Medium,
        Severity::High => v1::Severity::High,
        Severity::Critical => v1::Severity::Critical,
    }
}
