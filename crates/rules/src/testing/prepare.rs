//! Preparing a test file: parse the document, load its rule files, check every case
//! against the rules (hosts, files, metrics, expected alerts), read contents; every problem
//! with its line and column in the test file.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use driftwatch_formats::{Masker, detect_format};

use super::case::{Case, ExpAlert, Expect, FileEvent, Source, parse_source};
use super::doc::{CaseDoc, ExpAlertDoc, TestFileDoc};
use super::report::alert_label;
use crate::alert::fingerprint;
use crate::metrics::valid_metric;
use crate::{HostInfo, RuleError, RuleSet, Target};

/// Fleet key used for masking when the test file names none.
pub const DEFAULT_FLEET_KEY: &str = "driftwatch rules test";

/// `evaluation_interval` when the file names none: agent rules' grid.
const DEFAULT_INTERVAL_MS: i64 = 10_000;

/// Positions for problems found after parsing: the first line at or after `from` that
/// holds every needle (1-based line, column of the last needle).
struct Locator<'a> {
    file: &'a Path,
    lines: Vec<&'a str>,
}

impl Locator<'_> {
    fn find(&self, from: usize, needles: &[&str]) -> (usize, usize) {
        for (i, l) in self.lines.iter().enumerate().skip(from.saturating_sub(1)) {
            let mut col = None;
            for n in needles {
                match l.find(n) {
                    Some(c) => col = Some(c),
                    None => {
                        col = None;
                        break;
                    }
                }
            }
            if let Some(c) = col {
                return (i + 1, c + 1);
            }
        }
        (from.max(1), 1)
    }

    fn err(&self, (line, column): (usize, usize), message: String) -> RuleError {
        RuleError { file: self.file.to_path_buf(), line, column, message }
    }
}

pub(super) fn prepare(path: &Path, text: &str) -> Result<(RuleSet, Vec<Case>), Vec<RuleError>> {
    let loc = Locator { file: path, lines: text.lines().collect() };
    let doc: TestFileDoc = serde_yaml_ng::from_str(text).map_err(|e| vec![yaml_error(&loc, &e)])?;
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let rules = load_rules(&loc, &dir, &doc.rule_files)?;
    let interval = doc.evaluation_interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL_MS);
    let masker = Masker::new(doc.fleet_key.as_deref().unwrap_or(DEFAULT_FLEET_KEY).as_bytes());
    let mut errors = Vec::new();
    let mut cases = Vec::new();
    let mut names = HashSet::new();
    for c in doc.tests {
        let from = loc.find(1, &["name:", &c.name]).0;
        if !names.insert(c.name.clone()) {
            errors.push(loc.err((from, 1), format!("duplicate test name {:?}", c.name)));
        }
        let mut cx = CaseCx { loc: &loc, dir: &dir, rules: &rules, from, errors: Vec::new() };
        if let Some(case) = cx.case(c, interval, masker.clone()) {
            cases.push(case);
        }
        errors.extend(cx.errors);
    }
    if cases.is_empty() && errors.is_empty() {
        errors.push(loc.err(loc.find(1, &["tests:"]), "no tests".to_string()));
    }
    if errors.is_empty() { Ok((rules, cases)) } else { Err(errors) }
}

/// A serde error with its position; the message without serde's "at line…" suffix, and the
/// position moved onto a quoted value when the message quotes one.
fn yaml_error(loc: &Locator<'_>, e: &serde_yaml_ng::Error) -> RuleError {
    let mut msg = e.to_string();
    let mut pos = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let quoted = |q: char| msg.split(q).nth(1).filter(|s| !s.is_empty());
    if pos.0 > 0
        && !msg.contains("missing field")
        && let Some(q) = quoted('"').or_else(|| quoted('`'))
    {
        let found = loc.find(pos.0, &[q]);
        if loc.lines.get(found.0 - 1).is_some_and(|l| l.contains(q)) {
            pos = found;
        }
    }
    loc.err(pos, msg)
}

fn load_rules(loc: &Locator<'_>, dir: &Path, files: &[String]) -> Result<RuleSet, Vec<RuleError>> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    if files.is_empty() {
        errors.push(loc.err(loc.find(1, &["rule_files"]), "rule_files: name at least one rule file".to_string()));
    }
    let mut groups: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        let p = dir.join(f);
        let loaded = if p.is_dir() {
            RuleSet::load_dir(&p)
        } else {
            match std::fs::read_to_string(&p) {
                Ok(text) => RuleSet::from_text(&p, &text),
                Err(e) => {
                    errors.push(loc.err(loc.find(1, &[f]), format!("rule file {}: {e}", p.display())));
                    continue;
                }
            }
        };
        match loaded {
            Err(errs) => errors.extend(errs),
            Ok(set) => {
                // Group names are unique across a rules directory; keep that across the list.
                let mine: BTreeSet<&String> = set.rules.iter().map(|r| &r.group).collect();
                for g in mine {
                    match groups.get(g) {
                        Some(other) => {
                            let msg = format!("group {g:?} is in both {} and {f}", other.display());
                            errors.push(loc.err(loc.find(1, &[f]), msg));
                        }
                        None => {
                            groups.insert(g.clone(), p.clone());
                        }
                    }
                }
                all.extend(set.rules);
            }
        }
    }
    // A literal, not `Default` + extend: should RuleSet grow derived state, this stops compiling.
    if errors.is_empty() { Ok(RuleSet { rules: all }) } else { Err(errors) }
}

/// Checking one test case.
struct CaseCx<'a> {
    loc: &'a Locator<'a>,
    dir: &'a Path,
    rules: &'a RuleSet,
    /// Line of the case's name: searches for positions start there.
    from: usize,
    errors: Vec<RuleError>,
}

impl CaseCx<'_> {
    fn error(&mut self, needles: &[&str], message: String) {
        let pos = self.loc.find(self.from, needles);
        self.errors.push(self.loc.err(pos, message));
    }

    fn host(&mut self, hosts: &[HostInfo], id: Option<&str>) -> Option<usize> {
        match id {
            Some(id) => {
                let i = hosts.iter().position(|h| h.id == id);
                if i.is_none() {
                    self.error(&["host:", id], format!("unknown host {id:?} (not in this test's hosts)"));
                }
                i
            }
            None if hosts.len() == 1 => Some(0),
            None => {
                self.error(&["host"], "host: needed, this test has several hosts".to_string());
                None
            }
        }
    }

    fn read(&mut self, rel: &str) -> Option<Vec<u8>> {
        let p = self.dir.join(rel);
        match std::fs::read(&p) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(&[rel], format!("content_file {}: {e}", p.display()));
                None
            }
        }
    }

    fn content(
        &mut self,
        content: Option<String>,
        content_file: Option<String>,
        keys: Option<serde_yaml_ng::Mapping>,
        what: &str,
    ) -> Option<Option<Source>> {
        match (content, content_file, keys) {
            (None, None, None) => Some(None),
            (Some(c), None, None) => Some(Some(Source::Content(c.into_bytes()))),
            (None, Some(f), None) => self.read(&f).map(|b| Some(Source::Content(b))),
            (None, None, Some(k)) => Some(Some(Source::Keys(k))),
            _ => {
                self.error(&["content"], format!("{what}: give one of content, content_file, keys"));
                None
            }
        }
    }

    fn case(&mut self, c: CaseDoc, default_interval: i64, masker: Masker) -> Option<Case> {
        let interval_ms = c.evaluation_interval.map(|d| d.0).unwrap_or(default_interval);
        if interval_ms <= 0 {
            self.error(&["evaluation_interval"], "evaluation_interval must be positive".to_string());
        }
        let mut hosts: Vec<HostInfo> = Vec::new();
        for h in c.hosts {
            if hosts.iter().any(|x| x.id == h.id) {
                self.error(&["id:", &h.id], format!("duplicate host {:?}", h.id));
            }
            hosts.push(HostInfo { id: h.id, labels: h.labels });
        }
        if hosts.is_empty() {
            self.error(&["hosts"], "hosts: give at least one host".to_string());
            return None;
        }
        let mut case = Case {
            name: c.name,
            interval_ms,
            masker,
            hosts: Vec::new(),
            file_baselines: HashMap::new(),
            files: Vec::new(),
            samples: Vec::new(),
            offline: vec![Vec::new(); hosts.len()],
            expects: Vec::new(),
        };
        for b in c.baselines {
            let host = self.host(&hosts, b.host.as_deref());
            let format = b.format.map(|f| f.0).unwrap_or_else(|| detect_format(Path::new(&b.path)));
            match (host, self.content(b.content, b.content_file, b.keys, "baseline")) {
                (Some(h), Some(Some(src))) => {
                    let (keys, _) = parse_source(&src, format, &case.masker);
                    case.file_baselines.insert((h, b.path), keys);
                }
                (_, Some(None)) => {
                    self.error(&["path:", &b.path], "baseline: give one of content, content_file, keys".to_string())
                }
                _ => {}
            }
        }
        for f in c.files {
            let host = self.host(&hosts, f.host.as_deref());
            let format = f.format.map(|x| x.0).unwrap_or_else(|| detect_format(Path::new(&f.path)));
            let src = if f.missing {
                if f.content.is_some() || f.content_file.is_some() || f.keys.is_some() || f.set.is_some() {
                    self.error(&["missing"], "missing: true takes no content, keys or set".to_string());
                }
                Some(Source::Missing)
            } else {
                self.content(f.content, f.content_file, f.keys, "file").map(|s| s.unwrap_or(Source::Previous))
            };
            if matches!(src, Some(Source::Previous)) && f.set.is_none() && f.unset.is_empty() {
                self.error(&["path:", &f.path], "file: give content, content_file, keys, set/unset or missing".into());
            }
            if let (Some(host), Some(source)) = (host, src) {
                case.files.push(FileEvent {
                    at: f.at.0,
                    host,
                    path: f.path,
                    source,
                    set: f.set,
                    unset: f.unset,
                    format,
                    mode: f.mode.map(|m| m.0),
                    dir_mode: f.dir_mode.map(|m| m.0),
                    uid: f.uid,
                    gid: f.gid,
                });
            }
        }
        // `set` edits "the previous snapshot": that must exist in time order.
        case.files.sort_by_key(|f| f.at);
        let mut seen = HashSet::new();
        for f in &case.files {
            if matches!(f.source, Source::Previous) && !seen.contains(&(f.host, f.path.clone())) {
                let msg = format!("{}: set/unset needs an earlier snapshot of this file", f.path);
                self.error(&["path:", &f.path], msg);
            }
            seen.insert((f.host, f.path.clone()));
        }
        for r in c.resources {
            let Some(host) = self.host(&hosts, r.host.as_deref()) else { continue };
            let step = r.interval.map(|d| d.0).unwrap_or(interval_ms);
            if step <= 0 {
                self.error(&["interval"], "interval must be positive".to_string());
                continue;
            }
            let start = r.start.map(|d| d.0).unwrap_or(0);
            for (metric, series) in r.series {
                if !valid_metric(&metric) {
                    self.error(&[&metric], format!("unknown resource metric {metric:?}"));
                }
                for (i, v) in series.0.iter().enumerate() {
                    if let Some(v) = v {
                        case.samples.push((start + step * i as i64, host, metric.clone(), *v));
                    }
                }
            }
        }
        case.samples.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        for a in c.agents {
            let Some(host) = self.host(&hosts, a.host.as_deref()) else { continue };
            if a.online_at.as_ref().is_some_and(|o| o.0 <= a.offline_since.0) {
                self.error(&["online_at"], "online_at must be after offline_since".to_string());
            }
            case.offline[host].push((a.offline_since.0, a.online_at.map(|d| d.0)));
        }
        // Per host, the file paths the case feeds: the default `file` of an expectation.
        let mut paths: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); hosts.len()];
        for f in &case.files {
            paths[f.host].insert(&f.path);
        }
        if c.expect.is_empty() {
            self.error(&["name:", &case.name], "expect: give at least one evaluation time".to_string());
        }
        let mut expects = Vec::new();
        for e in c.expect {
            let list = |docs: Vec<ExpAlertDoc>, cx: &mut Self| -> Vec<ExpAlert> {
                let mut out: Vec<ExpAlert> = Vec::new();
                for d in docs {
                    if let Some(x) = cx.expected(d, &hosts, &paths)
                        && !out.iter().any(|o| o.fp == x.fp)
                    {
                        out.push(x);
                    }
                }
                out
            };
            let firing = list(e.firing, self);
            let pending = list(e.pending, self);
            let resolved = list(e.resolved, self);
            expects.push(Expect { at: e.at.0, firing, pending, resolved });
        }
        expects.sort_by_key(|e| e.at);
        case.expects = expects;
        case.hosts = hosts;
        Some(case)
    }

    fn expected(&mut self, d: ExpAlertDoc, hosts: &[HostInfo], paths: &[BTreeSet<&str>]) -> Option<ExpAlert> {
        let rules = self.rules.rules();
        let found: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].name == d.rule && d.group.as_ref().is_none_or(|g| *g == rules[i].group))
            .collect();
        let idx = match found[..] {
            [i] => i,
            [] => {
                self.error(&["rule:", &d.rule], format!("unknown rule {:?} (not in rule_files)", d.rule));
                return None;
            }
            _ => {
                let groups: Vec<&str> = found.iter().map(|&i| rules[i].group.as_str()).collect();
                self.error(
                    &["rule:", &d.rule],
                    format!("rule {:?} is in groups {}: add group:", d.rule, groups.join(", ")),
                );
                return None;
            }
        };
        let rule = &rules[idx];
        let host = self.host(hosts, d.host.as_deref())?;
        let (file, key) = match &rule.target {
            Target::File { key: pattern, .. } => {
                let file = match d.file {
                    Some(f) => f,
                    None => match paths[host].iter().collect::<Vec<_>>()[..] {
                        [only] => only.to_string(),
                        ref several => {
                            let why =
                                if several.is_empty() { "no file of this host in files" } else { "several files" };
                            self.error(&["rule:", &d.rule], format!("{}: file: needed ({why})", d.rule));
                            return None;
                        }
                    },
                };
                let key = match (pattern, d.key) {
                    (None, Some(k)) => {
                        self.error(&["key:", &k], format!("{}: the rule has no key; drop key:", d.rule));
                        return None;
                    }
                    (None, None) => None,
                    (Some(p), Some(k)) if !p.is_match(&k) => {
                        self.error(&["key:", &k], format!("{}: key {k:?} does not match {:?}", d.rule, p.as_str()));
                        return None;
                    }
                    (Some(_), Some(k)) => Some(k),
                    (Some(p), None) if !p.is_wildcard() => Some(p.as_str().to_string()),
                    (Some(p), None) => {
                        self.error(&["rule:", &d.rule], format!("{}: key: needed (pattern {:?})", d.rule, p.as_str()));
                        return None;
                    }
                };
                (Some(file), key)
            }
            _ if d.file.is_some() || d.key.is_some() => {
                self.error(&["rule:", &d.rule], format!("{}: file/key apply to file rules only", d.rule));
                return None;
            }
            _ => (None, None),
        };
        let h = &hosts[host].id;
        let metric = match &rule.target {
            Target::Resource { metric } => Some(metric.as_str()),
            _ => None,
        };
        Some(ExpAlert {
            fp: fingerprint(&rule.group, &rule.name, h, file.as_deref().or(metric), key.as_deref()),
            rule: idx,
            label: alert_label(self.rules, idx, h, file.as_deref(), key.as_deref()),
            severity: d.severity,
            annotations: d.annotations,
        })
    }
}
