//! Unit tests for rule files (`driftwatch rules test`), in the spirit of `promtool test rules`.
//!
//! A test file names rule files and test cases. Each case replays a timeline of inputs
//! (file snapshots, resource samples, agent connectivity) through the rules and the alert
//! state machine, and checks the alerts at given times.
//!
//! ```yaml
//! rule_files: [../web2img.yaml]          # relative to this file; a directory loads its *.yaml
//! evaluation_interval: 10s               # agent rules' grid (default 10s); also per test
//! fleet_key: "driftwatch rules test"     # key for masked values (this is the default)
//! tests:
//!   - name: workers regress and are restored
//!     hosts:
//!       - {id: web-1, labels: {service: web2img, env: production}}
//!     baselines:                         # per file: content, content_file or keys
//!       - {path: /etc/web2img/.env.production, content_file: ../../configs/web2img/.env.production}
//!     files:                             # snapshots as the agent would send them
//!       - at: 0s
//!         path: /etc/web2img/.env.production
//!         content_file: ../../configs/web2img/.env.production   # or content: |, or keys: {K: v}
//!         mode: "0600"                   # also dir_mode, uid, gid, format (else from the path)
//!       - {at: 5m, path: /etc/web2img/.env.production, set: {WORKERS: 16}}  # edit the previous
//!       - {at: 9m, path: /etc/web2img/.env.production, unset: [WORKERS]}
//!       - {at: 20m, path: /etc/web2img/.env.production, missing: true}      # deleted
//!     resources:                         # promtool series: "a+bxn" = a, a+b, ..., a+n*b; "_" = gap
//!       - {interval: 1m, series: {memory_used_bytes: "4.8e9x9 7.5e9x9", cpu_cores_used: "10.4x19"}}
//!     agents:
//!       - {offline_since: 10m, online_at: 30m}
//!     expect:
//!       - at: 5m
//!         firing:                        # exhaustive: any other firing alert is a failure
//!           - {rule: workers-above-12, key: WORKERS, severity: high,
//!              annotations: {summary: "WORKERS 16 above 12 (baseline 8)"}}
//!         pending: []                    # each listed alert must be pending
//!         resolved: []                   # each listed alert must be resolved
//! ```
//!
//! Content is parsed with driftwatch-formats as the agent does (format from the path,
//! secrets masked); `keys:`/`set:` values go through the same typing and masking. A
//! snapshot without `mode`/`dir_mode`/`uid`/`gid` keeps those of the file's previous
//! snapshot (0644, 0755, 0, 0 at first). `dir_mode` is the mode of the directory holding
//! the file; it defaults to a usual directory's mode, not to 0 (unknown, which directory
//! rules usually skip). A missing file has mode and dir_mode 0, as the agent sends it.
//! `host` may be left out wherever the case has one host; in an expectation,
//! `file` where the host has one file path, `key` where the rule names a literal key;
//! `group` disambiguates a rule name used in several groups. Listed annotations must equal
//! the rendered ones (from the alert's latest evaluation, as the server shows them);
//! unlisted ones are not checked.
//!
//! Evaluation follows the server: file rules run when a snapshot arrives and are re-stepped
//! continuously (here: at every moment anything happens and exactly when a `for` or
//! `keep_firing_for` runs out); resource rules run on each sample, at the sample's time,
//! with the whole series as history and `baseline` null; agent rules run every
//! `evaluation_interval` and at every other moment anything happens. An alert whose
//! (file, key) or metric is no longer produced sees a non-match. Expectations observe the
//! state after everything at their time has run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use driftwatch_formats::{FileStatus, Format, Limits, Masker, analyze, detect_format, parse_format_name};
use driftwatch_proto::v1::Value;
use serde::{Deserialize, Deserializer, de};

use crate::alert::{AlertState, AlertStatus, Observation, Severity, fingerprint, step};
use crate::{
    AgentInput, FileInput, FileMeta, HostInfo, Outcome, ResourceInput, RuleError, RuleSet, Target, parse_duration_ms,
};

/// Fleet key used for masking when the test file names none.
pub const DEFAULT_FLEET_KEY: &str = "driftwatch rules test";

const DEFAULT_INTERVAL_MS: i64 = 10_000;

/// The outcome of one test file.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub file: PathBuf,
    /// Problems with the test file or its rule files; when any, no test ran.
    pub errors: Vec<RuleError>,
    pub tests: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.tests.iter().all(TestResult::passed)
    }
}

/// The outcome of one test case.
#[derive(Debug, Clone, Default)]
pub struct TestResult {
    pub name: String,
    /// One entry per failed check; multi-line (expected vs got).
    pub failures: Vec<String>,
    /// Evaluation errors seen while replaying (first per alert): hints for a failure.
    pub notes: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Read and run one test file.
pub fn run_test_file(path: &Path) -> TestReport {
    match std::fs::read_to_string(path) {
        Ok(text) => run_test_text(path, &text),
        Err(e) => TestReport {
            file: path.to_path_buf(),
            errors: vec![RuleError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }],
            tests: Vec::new(),
        },
    }
}

/// Run test-file text as if it were the file `path` (relative paths resolve against its
/// directory; rule files and `content_file`s are read from disk).
pub fn run_test_text(path: &Path, text: &str) -> TestReport {
    let mut report = TestReport { file: path.to_path_buf(), ..Default::default() };
    match prepare(path, text) {
        Err(errors) => report.errors = errors,
        Ok((rules, cases)) => report.tests = cases.iter().map(|c| Sim::new(&rules, c).run()).collect(),
    }
    report
}

// ---------------------------------------------------------------------------------------
// The document

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileDoc {
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Dur>,
    #[serde(default)]
    fleet_key: Option<String>,
    tests: Vec<CaseDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    name: String,
    #[serde(default)]
    evaluation_interval: Option<Dur>,
    hosts: Vec<HostDoc>,
    #[serde(default)]
    baselines: Vec<BaselineDoc>,
    #[serde(default)]
    files: Vec<FileDoc>,
    #[serde(default)]
    resources: Vec<ResourceDoc>,
    #[serde(default)]
    agents: Vec<AgentDoc>,
    expect: Vec<ExpectDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostDoc {
    id: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineDoc {
    #[serde(default)]
    host: Option<String>,
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_file: Option<String>,
    #[serde(default)]
    keys: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    format: Option<FormatName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    at: Dur,
    #[serde(default)]
    host: Option<String>,
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_file: Option<String>,
    #[serde(default)]
    keys: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    set: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    unset: Vec<String>,
    #[serde(default)]
    missing: bool,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    dir_mode: Option<Mode>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    format: Option<FormatName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceDoc {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    interval: Option<Dur>,
    #[serde(default)]
    start: Option<Dur>,
    series: BTreeMap<String, Series>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentDoc {
    #[serde(default)]
    host: Option<String>,
    offline_since: Dur,
    #[serde(default)]
    online_at: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDoc {
    at: Dur,
    #[serde(default)]
    firing: Vec<ExpAlertDoc>,
    #[serde(default)]
    pending: Vec<ExpAlertDoc>,
    #[serde(default)]
    resolved: Vec<ExpAlertDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlertDoc {
    rule: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A duration (`5m`), parsed while deserializing so the error carries a position.
struct Dur(i64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_duration_ms(&s).map(Dur).map_err(de::Error::custom)
    }
}

/// Permission bits as octal text (`"0600"`); a YAML number is read as octal digits too.
struct Mode(u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 => Ok(Mode(m)),
            _ => Err(de::Error::custom(format!("invalid mode {s:?}: octal permission bits, e.g. \"0600\""))),
        }
    }
}

struct FormatName(Format);

impl<'de> Deserialize<'de> for FormatName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_format_name(&s)
            .map(FormatName)
            .ok_or_else(|| de::Error::custom(format!("unknown format {s:?} (env, ini, yaml, json, toml, text)")))
    }
}

/// A resource series in promtool's expanding notation, one slot per interval.
struct Series(Vec<Option<f64>>);

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?.0;
        parse_series(&s).map(Series).map_err(de::Error::custom)
    }
}

/// Text that YAML may have typed as a number (`at: 0`, `mode: 600`, `series: 4e9`).
struct StrOrNum(String);

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StrOrNum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrOrNum, E> {
                Ok(StrOrNum(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// promtool's expanding notation: `a+bxn` is a, a+b, …, a+n·b (n+1 values), `a-bxn`
/// likewise, `axn` is a repeated n+1 times, `_` one gap, `_xn` n gaps.
pub fn parse_series(s: &str) -> Result<Vec<Option<f64>>, String> {
    let bad =
        |t: &str, why: &str| format!("invalid series item {t:?}: {why} (e.g. \"1 2 3\", \"4e9+1e8x60\", \"_x3\")");
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (head, count) = match tok.rsplit_once('x') {
            Some((h, n)) => (h, Some(n.parse::<usize>().map_err(|_| bad(tok, "repeat count is not a whole number"))?)),
            None => (tok, None),
        };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, count.unwrap_or(1)));
            continue;
        }
        // The operator is a '+'/'-' after the first character that is not an exponent sign.
        let op = head.char_indices().skip(1).find(|&(i, c)| {
            (c == '+' || c == '-') && !matches!(head.as_bytes()[i - 1], b'e' | b'E') && count.is_some()
        });
        let num = |t: &str| t.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(tok, "not a number"));
        let (start, inc) = match op {
            Some((i, c)) => {
                let inc = num(&head[i + 1..])?;
                (num(&head[..i])?, if c == '-' { -inc } else { inc })
            }
            None => (num(head)?, 0.0),
        };
        match count {
            None => out.push(Some(start)),
            Some(n) => out.extend((0..=n).map(|i| Some(start + inc * i as f64))),
        }
    }
    if out.is_empty() {
        return Err("empty series".to_string());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Preparing: the document checked against the rules, paths resolved, contents read

/// Where a file snapshot's keys come from.
enum Source {
    Content(Vec<u8>),
    Keys(serde_yaml_ng::Mapping),
    /// The previous snapshot of the same file, edited by `set` / `unset`.
    Previous,
    Missing,
}

struct FileEvent {
    at: i64,
    host: usize,
    path: String,
    source: Source,
    set: Option<serde_yaml_ng::Mapping>,
    unset: Vec<String>,
    format: Format,
    /// None: as the previous snapshot of the file (0644, 0755, 0, 0 for the first).
    mode: Option<u32>,
    dir_mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
}

struct ExpAlert {
    fp: String,
    rule: usize,
    /// How to name the alert in a report.
    label: String,
    severity: Option<Severity>,
    annotations: BTreeMap<String, String>,
}

struct Expect {
    at: i64,
    firing: Vec<ExpAlert>,
    pending: Vec<ExpAlert>,
    resolved: Vec<ExpAlert>,
}

struct Case {
    name: String,
    interval_ms: i64,
    masker: Masker,
    hosts: Vec<HostInfo>,
    file_baselines: HashMap<(usize, String), BTreeMap<String, Value>>,
    files: Vec<FileEvent>,
    /// (time, host, metric, value), in time order.
    samples: Vec<(i64, usize, String, f64)>,
    /// Per host: (offline since, back online at).
    offline: Vec<Vec<(i64, Option<i64>)>>,
    expects: Vec<Expect>,
}

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

fn prepare(path: &Path, text: &str) -> Result<(RuleSet, Vec<Case>), Vec<RuleError>> {
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
                if !crate::load::valid_metric(&metric) {
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

/// `rule{host=…, file=…, key=…}` (`metric=` for resource rules); the group is shown when
/// the rule name is not unique.
fn alert_label(rules: &RuleSet, idx: usize, host: &str, file: Option<&str>, key: Option<&str>) -> String {
    let r = &rules.rules()[idx];
    let shared = rules.rules().iter().filter(|x| x.name == r.name).count() > 1;
    let mut s = if shared { format!("{}/{}", r.group, r.name) } else { r.name.clone() };
    s.push_str(&format!("{{host={host}"));
    if let Some(f) = file {
        s.push_str(&format!(", file={f}"));
    }
    if let Target::Resource { metric } = &r.target {
        s.push_str(&format!(", metric={metric}"));
    }
    if let Some(k) = key {
        s.push_str(&format!(", key={k}"));
    }
    s.push('}');
    s
}

/// Keys of a source as the agent would send them (secrets masked), and the parse error.
fn parse_source(src: &Source, format: Format, masker: &Masker) -> (BTreeMap<String, Value>, Option<String>) {
    match src {
        Source::Content(bytes) => {
            let a = analyze(bytes, format, masker, &Limits::default());
            let error = match (a.status, a.error) {
                (FileStatus::ParseError, Some(e)) if e.line > 0 => {
                    Some(format!("{}:{}: {}", e.line, e.column, e.message))
                }
                (FileStatus::ParseError, Some(e)) => Some(e.message),
                _ => None,
            };
            (a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect(), error)
        }
        Source::Keys(map) => (keys_of(map, masker), None),
        Source::Previous | Source::Missing => (BTreeMap::new(), None),
    }
}

/// A `keys:`/`set:` map goes through the YAML parser so values get the agent's typing and
/// masking.
fn keys_of(map: &serde_yaml_ng::Mapping, masker: &Masker) -> BTreeMap<String, Value> {
    let text = serde_yaml_ng::to_string(map).unwrap_or_default();
    let a = analyze(text.as_bytes(), Format::Yaml, masker, &Limits::default());
    a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect()
}

/// `90000` → `1m30s`.
pub fn format_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut left = ms.unsigned_abs();
    if ms < 0 {
        out.push('-');
    }
    for (unit, size) in [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Replaying a case

/// Resource history kept per series, as the server keeps it: the longest duration a
/// resource rule names (`for`, or a literal such as `avg('1h')`) plus a minute, within
/// [1h, 24h].
fn history_window(rules: &RuleSet) -> i64 {
    let longest = rules.rules().iter().filter(|r| matches!(r.target, Target::Resource { .. })).map(|r| {
        let literals = ['\'', '"'].into_iter().flat_map(|q| {
            r.expr.split(q).skip(1).step_by(2).filter_map(|part| parse_duration_ms(part).ok()).collect::<Vec<_>>()
        });
        literals.fold(r.timing.for_ms, i64::max) + 60_000
    });
    longest.fold(3_600_000, i64::max).min(86_400_000)
}

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

struct Sim<'a> {
    rules: &'a RuleSet,
    case: &'a Case,
    alerts: BTreeMap<String, Alert>,
    files: BTreeMap<(usize, String), Snapshot>,
    history: BTreeMap<(usize, String), VecDeque<(i64, f64)>>,
    history_ms: i64,
    /// First evaluation error per alert.
    notes: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl<'a> Sim<'a> {
    fn new(rules: &'a RuleSet, case: &'a Case) -> Self {
        Self {
            rules,
            case,
            alerts: BTreeMap::new(),
            files: BTreeMap::new(),
            history: BTreeMap::new(),
            history_ms: history_window(rules),
            notes: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    fn run(mut self) -> TestResult {
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
                .or_insert_with(|| format!("{label}: evaluation error at {}: {e}", format_duration_ms(now)));
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
        let at = |t: Option<i64>| t.map(format_duration_ms).unwrap_or_else(|| "?".to_string());
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
        let at = format_duration_ms(e.at);
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

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"groups:
  - name: g
    rules:
      - name: workers-high
        selector: {env: production}
        target: {file: "**/.env*", key: WORKERS}
        expr: "is_number(value) && double(value) > 12.0"
        for: 5m
        keep_firing_for: 2m
        severity: high
        annotations: {summary: "WORKERS {{ value }} (baseline {{ baseline }})"}
      - name: token-set
        target: {file: "**/.env*", key: "*TOKEN*"}
        expr: "is_masked(value)"
        severity: critical
      - name: offline
        target: {agent: offline}
        expr: "value > seconds('10m')"
        severity: medium
      - name: cpu-high
        target: {resource: cpu_cores_used}
        expr: "value > 12.0"
        for: 2m
"#;

    /// Run `test` (YAML) next to a rule file `r.yaml` holding `RULES`.
    fn run(test: &str) -> TestReport {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), RULES).unwrap();
        let path = dir.path().join("t.test.yaml");
        std::fs::write(&path, test).unwrap();
        run_test_file(&path)
    }

    fn case(body: &str) -> String {
        format!(
            "rule_files: [r.yaml]\ntests:\n  - name: c\n    hosts: [{{id: h1, labels: {{env: production}}}}]\n{body}"
        )
    }

    fn failures(r: &TestReport) -> String {
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r.tests.iter().flat_map(|t| t.failures.iter().map(|f| format!("{}\n", f))).collect()
    }

    fn errors(r: &TestReport) -> Vec<String> {
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    const WORKERS_16: &str = "    baselines: [{path: /etc/app/.env, content: \"WORKERS=8\\n\"}]
    files:
      - {at: 30s, path: /etc/app/.env, content: \"WORKERS=16\\n\"}
      - {at: 10m, path: /etc/app/.env, set: {WORKERS: 8}}
";

    #[test]
    fn example_test_files_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/rules/tests");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.to_string_lossy().ends_with(".test.yaml") {
                continue;
            }
            n += 1;
            let r = run_test_file(&path);
            let why: Vec<String> = r
                .errors
                .iter()
                .map(|e| e.to_string())
                .chain(
                    r.tests
                        .iter()
                        .flat_map(|t| t.failures.iter().chain(t.notes.iter()).map(move |f| format!("{}: {f}", t.name))),
                )
                .collect();
            assert!(r.passed(), "{}:\n{}", path.display(), why.join("\n"));
            assert!(!r.tests.is_empty());
        }
        assert!(n >= 2, "example test files found: {n}");
    }

    /// The examples are the rules' own tests: each rule must be seen firing and resolved.
    #[test]
    fn example_test_files_cover_every_rule() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/rules/tests");
        for name in ["web2img.test.yaml", "gguf-sync.test.yaml"] {
            let path = dir.join(name);
            let Ok((rules, cases)) = prepare(&path, &std::fs::read_to_string(&path).unwrap()) else { panic!("{name}") };
            let seen = |pick: fn(&Expect) -> &Vec<ExpAlert>| -> BTreeSet<&str> {
                let idx = cases.iter().flat_map(|c| c.expects.iter().flat_map(|e| pick(e).iter().map(|x| x.rule)));
                idx.map(|i| rules.rules()[i].name.as_str()).collect()
            };
            let all: BTreeSet<&str> = rules.rules().iter().map(|r| r.name.as_str()).collect();
            assert_eq!(seen(|e| &e.firing), all, "{name}: rules never expected firing");
            assert_eq!(seen(|e| &e.resolved), all, "{name}: rules never expected resolved");
        }
    }

    #[test]
    fn for_and_keep_firing_for_are_honoured_off_the_grid() {
        let r = run(&case(&format!(
            "{WORKERS_16}    expect:
      - {{at: 30s, pending: [{{rule: workers-high, severity: high}}]}}
      - {{at: 5m29s, pending: [{{rule: workers-high}}]}}
      - at: 5m30s
        firing: [{{rule: workers-high, annotations: {{summary: \"WORKERS 16 (baseline 8)\"}}}}]
      - {{at: 11m59s, firing: [{{rule: workers-high}}]}}
      - {{at: 12m, resolved: [{{rule: workers-high}}]}}
"
        )));
        assert_eq!(failures(&r), "");
        assert!(r.passed());
    }

    #[test]
    fn a_failing_expectation_is_reported_with_expected_and_got() {
        let r = run(&case(&format!(
            "{WORKERS_16}    expect:
      - {{at: 4m, firing: [{{rule: workers-high}}]}}
      - at: 6m
        firing: [{{rule: workers-high, severity: low, annotations: {{summary: \"WORKERS 17 (baseline 8)\"}}}}]
      - {{at: 7m, resolved: [{{rule: workers-high}}]}}
"
        )));
        let f = failures(&r);
        assert!(!r.passed());
        assert_eq!(r.tests[0].failures.len(), 4, "{f}");
        assert!(
            f.contains("at 4m: firing alerts differ")
                && f.contains("- workers-high{host=h1, file=/etc/app/.env, key=WORKERS} (pending since 30s)"),
            "{f}"
        );
        assert!(f.contains("severity: expected low, got high"), "{f}");
        assert!(
            f.contains("expected \"WORKERS 17 (baseline 8)\"") && f.contains("got      \"WORKERS 16 (baseline 8)\""),
            "{f}"
        );
        let want =
            "at 7m: expected resolved workers-high{host=h1, file=/etc/app/.env, key=WORKERS}, got firing since 5m30s";
        assert!(f.contains(want), "{f}");
    }

    #[test]
    fn an_unexpected_alert_is_reported() {
        let r = run(&case(
            "    files:
      - {at: 0s, path: /etc/app/.env, content: \"API_TOKEN=sk_live_abcdefghijklmnopqrstuvwx\\n\"}
    expect:
      - {at: 1m, firing: []}
",
        ));
        let f = failures(&r);
        assert!(f.contains("+ token-set{host=h1, file=/etc/app/.env, key=API_TOKEN} severity=critical"), "{f}");
        // Listing it makes the test pass: the content was masked as the agent would.
        let r = run(&case(
            "    files:
      - {at: 0s, path: /etc/app/.env, content: \"API_TOKEN=sk_live_abcdefghijklmnopqrstuvwx\\n\"}
    expect:
      - {at: 1m, firing: [{rule: token-set, key: API_TOKEN}]}
",
        ));
        assert_eq!(failures(&r), "");
    }

    #[test]
    fn a_key_that_disappears_stops_matching() {
        let r = run(&case(
            "    files:
      - {at: 0s, path: /etc/app/.env, keys: {API_TOKEN: sk_live_abcdefghijklmnopqrstuvwx, WORKERS: 4}}
      - {at: 1m, path: /etc/app/.env, unset: [API_TOKEN]}
      - {at: 2m, path: /etc/app/.env, set: {GITHUB_TOKEN: ghp_abcdefghijklmnopqrstuvwxyz0123456789}}
      - {at: 3m, path: /etc/app/.env, missing: true}
    expect:
      - {at: 0s, firing: [{rule: token-set, key: API_TOKEN}]}
      - {at: 1m, resolved: [{rule: token-set, key: API_TOKEN}]}
      - {at: 2m, firing: [{rule: token-set, key: GITHUB_TOKEN}]}
      - {at: 3m, resolved: [{rule: token-set, key: GITHUB_TOKEN}]}
",
        ));
        assert_eq!(failures(&r), "");
    }

    #[test]
    fn agent_offline_and_resource_series() {
        let r = run(&case(
            "    evaluation_interval: 1m
    agents: [{offline_since: 5m, online_at: 30m}]
    resources: [{interval: 1m, series: {cpu_cores_used: \"10 13x3 _ 10\"}}]
    expect:
      - {at: 1m, pending: [{rule: cpu-high}]}
      - {at: 3m, firing: [{rule: cpu-high}]}
      - {at: 5m, firing: [{rule: cpu-high}]}
      - {at: 6m, resolved: [{rule: cpu-high}]}
      - {at: 15m, firing: []}
      - {at: 16m, firing: [{rule: offline, severity: medium}]}
      - {at: 30m, resolved: [{rule: offline}]}
",
        ));
        assert_eq!(failures(&r), "");
    }

    #[test]
    fn bad_test_files_are_errors_with_positions() {
        let e = errors(&run("rule_files: [r.yaml]\ntests:\n  - name: c\n    hosts: [{id: h1}]\n    bogus: 1\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("t.test.yaml:5:5: ") && e[0].contains("unknown field `bogus`"), "{e:?}");

        let e = errors(&run(&case("    expect:\n      - {at: 5x}\n")));
        assert!(e[0].contains("t.test.yaml:6:") && e[0].contains("invalid duration"), "{e:?}");

        let e = errors(&run(&case("    expect:\n      - at: 1m\n        firing: [{rule: nope}]\n")));
        assert!(e[0].contains("t.test.yaml:7:") && e[0].contains("unknown rule \"nope\""), "{e:?}");

        let e = errors(&run(&case(
            "    files: [{at: 0s, path: /a/.env, content: \"A=1\"}, {at: 0s, path: /b/.env, content: \"A=1\"}]
    expect:
      - at: 1m
        firing: [{rule: token-set, key: A_TOKEN}]
",
        )));
        assert!(e[0].contains("file: needed"), "{e:?}");

        let e = errors(&run(&case("    resources: [{series: {cpu_cores_used: \"1 2 x\"}}]\n    expect: [{at: 0s}]\n")));
        assert!(e[0].contains(":5:") && e[0].contains("invalid series item \"x\""), "{e:?}");

        let e = errors(&run("rule_files: [missing.yaml]\ntests: []\n"));
        assert!(e[0].contains("t.test.yaml:1:") && e[0].contains("missing.yaml"), "{e:?}");

        // A broken rule file reports its own positions.
        let dir = tempfile::tempdir().unwrap();
        let bad = "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {agent: offline}\n\
                   \x20       expr: \"value >\"\n";
        std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
        std::fs::write(dir.path().join("t.yaml"), "rule_files: [bad.yaml]\ntests: []\n").unwrap();
        let r = run_test_file(&dir.path().join("t.yaml"));
        assert!(r.errors[0].to_string().contains("bad.yaml:6:"), "{:?}", r.errors);
        assert!(!r.passed());
    }

    #[test]
    fn dir_mode_defaults_to_0755_and_carries_over() {
        let dir = tempfile::tempdir().unwrap();
        let rules = "groups:\n  - name: g\n    rules:\n      - name: dir-open\n        target: {file: \"*.env\"}\n\
                     \x20       expr: \"meta.exists && meta.dir_mode != octal('700')\"\n";
        std::fs::write(dir.path().join("r.yaml"), rules).unwrap();
        let test = "rule_files: [r.yaml]
tests:
  - name: c
    hosts: [{id: h1}]
    files:
      - {at: 0s, path: /etc/app/a.env, content: \"A=1\\n\"}
      - {at: 1m, path: /etc/app/a.env, content: \"A=1\\n\", dir_mode: \"0700\"}
      - {at: 2m, path: /etc/app/a.env, set: {A: 2}}
      - {at: 3m, path: /etc/app/a.env, missing: true}
      - {at: 4m, path: /etc/app/a.env, content: \"A=1\\n\"}
    expect:
      - {at: 0s, firing: [{rule: dir-open}]}
      - {at: 1m, resolved: [{rule: dir-open}]}
      - {at: 2m, firing: []}
      - {at: 3m, firing: []}
      - {at: 4m, firing: [{rule: dir-open}]}
";
        std::fs::write(dir.path().join("t.yaml"), test).unwrap();
        let r = run_test_file(&dir.path().join("t.yaml"));
        assert_eq!(failures(&r), "");
        assert!(r.passed());
    }

    #[test]
    fn series_notation() {
        assert_eq!(parse_series("1 2").unwrap(), vec![Some(1.0), Some(2.0)]);
        assert_eq!(parse_series("4e9+1e8x2").unwrap(), vec![Some(4e9), Some(4.1e9), Some(4.2e9)]);
        assert_eq!(
            parse_series("5-1x2 _x2 7x1").unwrap(),
            vec![Some(5.0), Some(4.0), Some(3.0), None, None, Some(7.0), Some(7.0)]
        );
        assert_eq!(parse_series("-1e-3").unwrap(), vec![Some(-0.001)]);
        assert!(parse_series("").is_err() && parse_series("1x").is_err() && parse_series("a").is_err());
        assert_eq!(format_duration_ms(5_430_500), "1h30m30s500ms");
    }
}
