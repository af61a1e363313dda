//! Replaying a prepared case through the rules and the alert state machine, as the server
//! would, and checking the alerts at each expected time.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use driftwatch_proto::duration::format_ms;
use driftwatch_proto::v1::Value;

use super::case::{Case, ExpAlert, Expect, FileEvent, Source, keys_of, parse_source};
use super::report::{TestResult, alert_label};
use crate::alert::{AlertState, AlertStatus, Observation, step};
use crate::{AgentInput, FileInput, FileMeta, Outcome, ResourceInput, RuleSet, Target};

struct Alert {
    rule: usize,
    host: usize,
    file: Option<String>,
    key: Option<String>,
    status: AlertStatus,
    /// The latest evaluation: annotations render from it, as the server's do.
    last: Outcome,
}

struct Snapshot {
    keys: BTreeMap<String, Value>,
    meta: FileMeta,
    /// Outcomes of the last evaluation, re-stepped at every evaluation time.
    outcomes: Vec<Outcome>,
}

/// One case being replayed: its alerts, the latest snapshot of each file, resource history.
pub(super) struct Sim<'a> {
    rules: &'a RuleSet,
    case: &'a Case,
    alerts: BTreeMap<String, Alert>,
    files: BTreeMap<(usize, String), Snapshot>,
    history: BTreeMap<(usize, String), VecDeque<(i64, f64)>>,
    /// How long a series is kept: as long as the server keeps it for these rules.
    history_ms: i64,
    /// First evaluation error per alert.
    notes: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl<'a> Sim<'a> {
    pub(super) fn new(rules: &'a RuleSet, case: &'a Case) -> Self {
        Self {
            rules,
            case,
            alerts: BTreeMap::new(),
            files: BTreeMap::new(),
            history: BTreeMap::new(),
            history_ms: rules.history_window_ms(),
            notes: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    pub(super) fn run(mut self) -> TestResult {
        let case = self.case;
        let end = case.expects.last().map(|e| e.at).unwrap_or(0);
        // The server re-steps pending and keep-firing alerts every half second: here they are
        // re-stepped at every moment anything happens, and at the exact moment their `for` or
        // `keep_firing_for` runs out, so timing matches without a fine grid.
        let agent_rules = self.rules.rules().iter().any(|r| matches!(r.target, Target::AgentOffline));
        let grid = if agent_rules { end / case.interval_ms } else { 0 };
        let mut agenda: BTreeSet<i64> = (0..=grid).map(|i| i * case.interval_ms).collect();
        agenda.extend(case.files.iter().map(|f| f.at));
        agenda.extend(case.samples.iter().map(|s| s.0));
        agenda.extend(case.expects.iter().map(|e| e.at));
        agenda.retain(|t| (0..=end).contains(t));
        let (mut fi, mut si, mut ei) = (0, 0, 0);
        while let Some(t) = agenda.pop_first() {
            let mut arrived = HashSet::new();
            while let Some(f) = case.files.get(fi).filter(|f| f.at == t) {
                self.file_arrives(f);
                arrived.insert((f.host, f.path.clone()));
                fi += 1;
            }
            while let Some((_, host, metric, v)) = case.samples.get(si).filter(|s| s.0 == t) {
                self.sample(t, *host, metric, *v);
                si += 1;
            }
            let others: Vec<(usize, String)> = self.files.keys().filter(|k| !arrived.contains(*k)).cloned().collect();
            for (host, path) in others {
                self.restep_file(host, &path, t);
            }
            for host in 0..case.hosts.len() {
                self.agent(host, t);
            }
            agenda.extend(self.timers().filter(|&w| w > t && w <= end));
            while let Some(e) = case.expects.get(ei).filter(|e| e.at == t) {
                self.check(e);
                ei += 1;
            }
        }
        let notes = self.notes.into_values().collect();
        TestResult { name: case.name.clone(), failures: self.failures, notes }
    }

    /// When file and agent alerts next change on their own: `for` or `keep_firing_for`
    /// running out (resource alerts move on the sample clock only).
    fn timers(&self) -> impl Iterator<Item = i64> + '_ {
        self.alerts.values().filter_map(|a| {
            let rule = &self.rules.rules()[a.rule];
            if matches!(rule.target, Target::Resource { .. }) {
                return None;
            }
            let s = &a.status;
            match s.state {
                AlertState::Pending => s.active_since_ms.map(|t| t + rule.timing.for_ms),
                AlertState::Firing => s.keep_since_ms.map(|t| t + rule.timing.keep_firing_for_ms),
                _ => None,
            }
        })
    }

    fn apply(&mut self, o: &Outcome, now: i64) -> String {
        let fp = o.fingerprint(self.rules);
        let rule = &self.rules.rules()[o.rule];
        if let Some(e) = &o.error {
            let label = alert_label(self.rules, o.rule, &o.host, o.file.as_deref(), o.key.as_deref());
            self.notes
                .entry(fp.clone())
                .or_insert_with(|| format!("{label}: evaluation error at {}: {e}", format_ms(now)));
        }
        let host = self.case.hosts.iter().position(|h| h.id == o.host).unwrap_or(0);
        let a = self.alerts.entry(fp.clone()).or_insert_with(|| Alert {
            rule: o.rule,
            host,
            file: o.file.clone(),
            key: o.key.clone(),
            status: AlertStatus::default(),
            last: o.clone(),
        });
        a.status = step(Some(&a.status), rule.timing, o.observation(), now).0;
        a.last = o.clone();
        fp
    }

    /// Alerts in `scope` that the latest evaluation did not produce no longer match.
    fn lapse(&mut self, produced: &HashSet<String>, now: i64, scope: impl Fn(&Alert) -> bool) {
        for (fp, a) in self.alerts.iter_mut() {
            if !produced.contains(fp) && scope(a) {
                let timing = self.rules.rules()[a.rule].timing;
                a.status = step(Some(&a.status), timing, Observation::NotMatched, now).0;
            }
        }
    }

    fn file_arrives(&mut self, f: &FileEvent) {
        let case = self.case;
        let slot = (f.host, f.path.clone());
        let before = self.files.get(&slot);
        let previous = before.map(|s| &s.keys);
        // A file that comes back after being missing starts from the defaults again.
        let old = before.filter(|s| s.meta.exists).map(|s| s.meta.clone());
        let old = old.unwrap_or(FileMeta { mode: 0o644, dir_mode: 0o755, ..Default::default() });
        let (mut keys, parse_error) = match &f.source {
            Source::Previous => (previous.cloned().unwrap_or_default(), old.parse_error.clone()),
            src => parse_source(src, f.format, &case.masker),
        };
        if let Some(set) = &f.set {
            keys.extend(keys_of(set, &case.masker));
        }
        for k in &f.unset {
            keys.remove(k);
        }
        let exists = !matches!(f.source, Source::Missing);
        let size = match &f.source {
            Source::Content(b) => b.len() as u64,
            Source::Previous => old.size,
            _ => 0,
        };
        let mode = f.mode.unwrap_or(old.mode & 0o7777);
        let dir_mode = f.dir_mode.unwrap_or(old.dir_mode & 0o7777);
        let meta = FileMeta {
            mode: if exists { 0o100000 | mode } else { 0 },
            dir_mode: if exists { 0o040000 | dir_mode } else { 0 },
            uid: f.uid.unwrap_or(old.uid),
            gid: f.gid.unwrap_or(old.gid),
            size,
            format: driftwatch_proto::format_name(f.format as i32).to_string(),
            exists,
            parse_error,
        };
        let outcomes = self.rules.evaluate_file(
            &case.hosts[f.host],
            &FileInput { path: &f.path, keys: &keys, meta: &meta, baseline: case.file_baselines.get(&slot), previous },
        );
        self.files.insert(slot, Snapshot { keys, meta, outcomes });
        self.restep_file(f.host, &f.path, f.at);
    }

    fn restep_file(&mut self, host: usize, path: &str, now: i64) {
        let Some(snap) = self.files.get(&(host, path.to_string())) else { return };
        let outcomes = snap.outcomes.clone();
        let produced: HashSet<String> = outcomes.iter().map(|o| self.apply(o, now)).collect();
        let rules = self.rules;
        self.lapse(&produced, now, |a| {
            a.host == host
                && a.file.as_deref() == Some(path)
                && matches!(rules.rules()[a.rule].target, Target::File { .. })
        });
    }

    fn sample(&mut self, now: i64, host: usize, metric: &str, v: f64) {
        let case = self.case;
        let samples = self.history.entry((host, metric.to_string())).or_default();
        samples.push_back((now, v));
        while samples.front().is_some_and(|&(t, _)| t <= now - self.history_ms) {
            samples.pop_front();
        }
        let samples = samples.make_contiguous();
        // The server has no resource expectations (yet): `baseline` is null, as there.
        let input = ResourceInput { metric, samples, baseline: None, now_ms: now };
        let outcomes = self.rules.evaluate_resource(&case.hosts[host], &input);
        let produced: HashSet<String> = outcomes.iter().map(|o| self.apply(o, now)).collect();
        let rules = self.rules;
        self.lapse(&produced, now, |a| {
            a.host == host && matches!(&rules.rules()[a.rule].target, Target::Resource { metric: m } if m == metric)
        });
    }

    fn agent(&mut self, host: usize, now: i64) {
        let episode =
            self.case.offline[host].iter().find(|(since, back)| now >= *since && back.is_none_or(|b| now < b));
        let input = match episode {
            Some(&(since, _)) => AgentInput { connected: false, last_seen_ms: since, now_ms: now },
            None => AgentInput { connected: true, last_seen_ms: now, now_ms: now },
        };
        for o in self.rules.evaluate_agent(&self.case.hosts[host], &input) {
            self.apply(&o, now);
        }
    }

    fn describe(&self, fp: &str) -> String {
        let Some(a) = self.alerts.get(fp) else { return "never evaluated".to_string() };
        let s = &a.status;
        let at = |t: Option<i64>| t.map(format_ms).unwrap_or_else(|| "?".to_string());
        match s.state {
            AlertState::Inactive => "inactive".to_string(),
            AlertState::Pending => format!("pending since {}", at(s.active_since_ms)),
            AlertState::Firing => format!("firing since {}", at(s.fired_at_ms)),
            AlertState::Resolved => format!("resolved at {}", at(s.resolved_at_ms)),
        }
    }

    fn label_of(&self, a: &Alert) -> String {
        alert_label(self.rules, a.rule, &self.case.hosts[a.host].id, a.file.as_deref(), a.key.as_deref())
    }

    fn rendered(&self, a: &Alert) -> BTreeMap<String, String> {
        self.rules.rules()[a.rule].render_annotations(&a.last, &self.case.hosts[a.host])
    }

    /// Severity and annotations of an alert found in the expected state.
    fn check_details(&mut self, at: &str, state: &str, x: &ExpAlert) {
        let Some(a) = self.alerts.get(&x.fp) else { return };
        let mut diffs = Vec::new();
        let severity = self.rules.rules()[x.rule].severity;
        if let Some(s) = x.severity.filter(|s| *s != severity) {
            diffs.push(format!("severity: expected {s}, got {severity}"));
        }
        let got = self.rendered(a);
        for (k, want) in &x.annotations {
            match got.get(k) {
                Some(g) if g == want => {}
                Some(g) => diffs.push(format!("annotations.{k}:\n  expected {want:?}\n  got      {g:?}")),
                None => diffs.push(format!("annotations.{k}: expected {want:?}, the rule has no such annotation")),
            }
        }
        if !diffs.is_empty() {
            let body: String = diffs.iter().flat_map(|d| d.lines()).map(|l| format!("\n  {l}")).collect();
            self.failures.push(format!("at {at}: {state} {}:{body}", x.label));
        }
    }

    fn check(&mut self, e: &Expect) {
        let at = format_ms(e.at);
        let firing: BTreeSet<String> = self
            .alerts
            .iter()
            .filter(|(_, a)| a.status.state == AlertState::Firing)
            .map(|(fp, _)| fp.clone())
            .collect();
        let expected: HashSet<&String> = e.firing.iter().map(|x| &x.fp).collect();
        let mut lines = Vec::new();
        for x in e.firing.iter().filter(|x| !firing.contains(&x.fp)) {
            lines.push(format!("- {} ({})", x.label, self.describe(&x.fp)));
        }
        for fp in firing.iter().filter(|fp| !expected.contains(fp)) {
            let a = &self.alerts[fp];
            let mut l = format!("+ {} severity={}", self.label_of(a), self.rules.rules()[a.rule].severity);
            for (k, v) in self.rendered(a) {
                l.push_str(&format!(" {k}={v:?}"));
            }
            lines.push(l);
        }
        if !lines.is_empty() {
            let body: String = lines.iter().map(|l| format!("\n  {l}")).collect();
            self.failures
                .push(format!("at {at}: firing alerts differ (- expected but not firing, + unexpected):{body}"));
        }
        for x in e.firing.iter().filter(|x| firing.contains(&x.fp)) {
            self.check_details(&at, "firing", x);
        }
        for (list, state) in [(&e.pending, AlertState::Pending), (&e.resolved, AlertState::Resolved)] {
            for x in list {
                if self.alerts.get(&x.fp).map(|a| a.status.state) == Some(state) {
                    self.check_details(&at, state.as_str(), x);
                } else {
                    self.failures.push(format!(
                        "at {at}: expected {} {}, got {}",
                        state.as_str(),
                        x.label,
                        self.describe(&x.fp)
                    ));
                }
            }
        }
    }
}
