//! Regression rules: rule files, CEL expression compile/eval, and the alert state machine.
//!
//! Pure and synchronous: the only I/O is reading rule files in [`RuleSet::load_dir`] /
//! [`RuleSet::check_dir`]. Everything else is a function of (rules, host, snapshot,
//! baseline, history, now).
//!
//! # Rule files
//!
//! ```yaml
//! groups:
//!   - name: web2img-settings
//!     rules:
//!       - name: browser-pool-too-large          # unique per group
//!         selector: {env: production}            # host labels, all must match; empty = all
//!         target: {file: "**/.env*", key: BROWSER_POOL_MAX_SIZE}
//!         # or {resource: memory_used_bytes} or {agent: offline}
//!         expr: "value > 20"
//!         for: 0s
//!         keep_firing_for: 0s
//!         severity: high                          # info|low|medium|high|critical
//!         labels: {team: web}
//!         annotations: {summary: "pool {{ value }} (baseline {{ baseline }})"}
//! ```
//!
//! `target.file` is a glob (globset; `*` does not cross `/`, `**` does); a glob without `/`
//! is matched against the file name only. `target.key` is a key pattern where `*` matches
//! any run of characters (dots included) and every other character is literal (so
//! `alert_channels[0]` is literal). No `key` means one evaluation per file (for `meta`
//! checks). A key pattern without `*` is evaluated even when the key is missing (`value`
//! is then null), which expresses "required" (`value != null`) and "forbidden"
//! (`value == null`); a pattern with `*` is evaluated for every matching key of the file
//! and of the baseline.
//!
//! # Variables
//!
//! File rules: `value`, `baseline` (that key in the baseline; null when none), `previous`
//! (that key in the previous snapshot; null when none), `key`, `path`, `file` (map of
//! every key of the file: `file["rate_limiting.requests_per_second"]`, or
//! `file.WORKERS` for keys without dots), `meta` (`mode` (permission bits, e.g.
//! `octal("600")`), `uid`, `gid`, `size`, `format`, `exists`, `parse_error` (string or
//! null)), `host` (`id`, `labels`).
//!
//! Resource rules: `value` (latest sample, double), `previous` (the sample before, or
//! null), `baseline` (resource expectation, or null), `metric`, `host`, plus the history
//! functions `avg(d)`, `min_over(d)`, `max_over(d)`, `rate(d)`, `trend(d)`, `zscore(d)`,
//! `samples(d)` with `d` a duration string ("1h").
//!
//! Agent rules (`target: {agent: offline}`): `value` = seconds since the agent was last
//! seen (0 while connected), `connected`, `last_seen` (ms), `host`. E.g.
//! `value > seconds("10m")`.
//!
//! Masked (secret) values are maps `{masked: true, fingerprint, reason}`; `is_masked(v)`
//! tests for them. Also `is_number(v)`, `seconds("5m")`, `octal("600")`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use driftwatch_proto::v1::Value;

pub mod alert;
mod duration;
mod expr;
mod load;

pub use alert::{AlertState, AlertStatus, Observation, Severity, Timing, Transition, fingerprint, step};
pub use duration::parse_duration_ms;
pub use load::RESOURCE_METRICS;

/// A problem in a rule file, with its place (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

impl std::error::Error for RuleError {}

/// A file glob as written in `target.file`.
#[derive(Debug, Clone)]
pub struct FileGlob {
    pattern: String,
    matcher: globset::GlobMatcher,
    basename_only: bool,
}

impl FileGlob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty glob".to_string());
        }
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid glob {pattern:?}: {}", e.kind()))?;
        Ok(Self {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
            basename_only: !pattern.contains('/'),
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        if self.basename_only {
            let name = path.rsplit('/').next().unwrap_or(path);
            self.matcher.is_match(name)
        } else {
            self.matcher.is_match(path) || self.matcher.is_match(path.trim_start_matches('/'))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// A key pattern: `*` matches any run of characters; everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pattern: String,
}

impl KeyPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty key pattern".to_string());
        }
        if let Some(c) = pattern.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("invalid key pattern {pattern:?}: contains {c:?}"));
        }
        if pattern.contains("**") {
            return Err(format!("invalid key pattern {pattern:?}: use a single '*' (it already matches dots)"));
        }
        Ok(Self { pattern: pattern.to_string() })
    }

    pub fn is_wildcard(&self) -> bool {
        self.pattern.contains('*')
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn is_match(&self, key: &str) -> bool {
        let mut parts = self.pattern.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = key.strip_prefix(first) else { return false };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for p in middle {
            match rest.find(p) {
                Some(i) => rest = &rest[i + p.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// What a rule looks at.
#[derive(Debug, Clone)]
pub enum Target {
    File { file: FileGlob, key: Option<KeyPattern> },
    Resource { metric: String },
    AgentOffline,
}

/// One loaded, compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub group: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub target: Target,
    pub expr: String,
    compiled: expr::Compiled,
    pub timing: Timing,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The file the rule came from.
    pub source: PathBuf,
}

impl Rule {
    /// Whether the rule applies to a host with these labels.
    /// Run the compiled expression: (matched, evaluation error). An error never matches.
    fn run(&self, vars: &[(&str, cel::Value)]) -> (bool, Option<String>) {
        match expr::execute(&self.compiled, vars) {
            Ok(m) => (m, None),
            Err(e) => (false, Some(e)),
        }
    }

    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Render the annotations for an outcome: `{{ value }}`, `{{ baseline }}`, `{{ previous }}`,
    /// `{{ host }}`, `{{ key }}`, `{{ file }}`/`{{ path }}`, `{{ metric }}`, `{{ rule }}`,
    /// `{{ severity }}`, `{{ labels.NAME }}` (host label). Masked values render as
    /// `masked:<12 hex>`.
    pub fn render_annotations(&self, o: &Outcome, host: &HostInfo) -> BTreeMap<String, String> {
        self.annotations
            .iter()
            .map(|(k, tmpl)| {
                let mut out = String::new();
                let mut rest = tmpl.as_str();
                while let Some(start) = rest.find("{{") {
                    out.push_str(&rest[..start]);
                    let after = &rest[start + 2..];
                    let Some(end) = after.find("}}") else { break };
                    let name = after[..end].trim();
                    let rendered = match name {
                        "value" => o.value.display(),
                        "baseline" => o.baseline.display(),
                        "previous" => o.previous.display(),
                        "host" => host.id.clone(),
                        "key" => o.key.clone().unwrap_or_default(),
                        "file" | "path" => o.file.clone().unwrap_or_default(),
                        "metric" => match &self.target {
                            Target::Resource { metric } => metric.clone(),
                            _ => String::new(),
                        },
                        "rule" => self.name.clone(),
                        "severity" => self.severity.to_string(),
                        other => {
                            other.strip_prefix("labels.").and_then(|l| host.labels.get(l).cloned()).unwrap_or_default()
                        }
                    };
                    out.push_str(&rendered);
                    rest = &after[end + 2..];
                }
                out.push_str(rest);
                (k.clone(), out)
            })
            .collect()
    }
}

/// All loaded rules.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// A host as the rules see it.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// File metadata visible as `meta`.
#[derive(Debug, Clone, Default)]
pub struct FileMeta {
    /// st_mode as the agent sends it; `meta.mode` shows only the permission bits (& 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// env, ini, yaml, json, toml, text.
    pub format: String,
    pub exists: bool,
    pub parse_error: Option<String>,
}

/// One file snapshot to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct FileInput<'a> {
    pub path: &'a str,
    pub keys: &'a BTreeMap<String, Value>,
    pub meta: &'a FileMeta,
    /// The effective baseline's keys for this file, if any.
    pub baseline: Option<&'a BTreeMap<String, Value>>,
    /// The previous snapshot's keys of this file, if any.
    pub previous: Option<&'a BTreeMap<String, Value>>,
}

/// One resource metric's history to evaluate: samples `(time_ms, value)` in time order,
/// the last one being the current value.
#[derive(Debug, Clone, Copy)]
pub struct ResourceInput<'a> {
    pub metric: &'a str,
    pub samples: &'a [(i64, f64)],
    /// The baseline's expectation for this metric, if any.
    pub baseline: Option<f64>,
    /// End of the history window (usually the last sample's time).
    pub now_ms: i64,
}

/// Agent connectivity, for `target: {agent: offline}` rules.
#[derive(Debug, Clone, Copy)]
pub struct AgentInput {
    pub connected: bool,
    pub last_seen_ms: i64,
    pub now_ms: i64,
}

/// The result of one rule for one (host, file, key) or (host, metric) or (host).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Index of the rule in [`RuleSet::rules`].
    pub rule: usize,
    pub host: String,
    pub file: Option<String>,
    pub key: Option<String>,
    pub matched: bool,
    pub value: Value,
    pub baseline: Value,
    pub previous: Value,
    /// Evaluation error (wrong type, missing history, ...): `matched` is false then.
    pub error: Option<String>,
}

impl Outcome {
    /// The alert identity of this outcome.
    /// An outcome about the host itself (a resource metric, the agent): no file, no key.
    fn of_host(
        rule: usize,
        host: &HostInfo,
        (matched, error): (bool, Option<String>),
        value: f64,
        baseline: Option<f64>,
        previous: Option<f64>,
    ) -> Self {
        Self {
            rule,
            host: host.id.clone(),
            file: None,
            key: None,
            matched,
            value: Value::float(value),
            baseline: baseline.map(Value::float).unwrap_or_else(Value::null),
            previous: previous.map(Value::float).unwrap_or_else(Value::null),
            error,
        }
    }

    pub fn fingerprint(&self, rules: &RuleSet) -> String {
        let r = &rules.rules[self.rule];
        let metric = match &r.target {
            Target::Resource { metric } => Some(metric.as_str()),
            _ => None,
        };
        fingerprint(&r.group, &r.name, &self.host, self.file.as_deref().or(metric), self.key.as_deref())
    }

    pub fn observation(&self) -> Observation {
        Observation::from_outcome(self.matched, self.error.is_some())
    }
}

fn proto_or_null(v: Option<&Value>) -> Value {
    v.cloned().unwrap_or_else(Value::null)
}

fn lookup<'m>(map: Option<&'m BTreeMap<String, Value>>, key: Option<&str>) -> Option<&'m Value> {
    map.and_then(|m| m.get(key?))
}

fn host_value(host: &HostInfo) -> cel::Value {
    let labels = expr::map_value(host.labels.iter().map(|(k, v)| (k.clone(), expr::string_value(v))));
    expr::map_value([("id".to_string(), expr::string_value(&host.id)), ("labels".to_string(), labels)])
}

impl RuleSet {
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluate every file rule that selects `host` and whose glob matches `file.path`.
    pub fn evaluate_file(&self, host: &HostInfo, file: &FileInput<'_>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let mut shared: Option<(cel::Value, cel::Value, cel::Value)> = None;
        for (idx, rule) in self.rules.iter().enumerate() {
            let Target::File { file: glob, key } = &rule.target else { continue };
            if !rule.selects(&host.labels) || !glob.is_match(file.path) {
                continue;
            }
            let (file_v, meta_v, host_v) = shared
                .get_or_insert_with(|| {
                    let file_v = expr::map_value(file.keys.iter().map(|(k, v)| (k.clone(), expr::to_cel(v))));
                    let m = file.meta;
                    let meta_v = expr::map_value([
                        ("mode".to_string(), cel::Value::Int(i64::from(m.mode & 0o7777))),
                        ("uid".to_string(), cel::Value::Int(i64::from(m.uid))),
                        ("gid".to_string(), cel::Value::Int(i64::from(m.gid))),
                        ("size".to_string(), cel::Value::Int(i64::try_from(m.size).unwrap_or(i64::MAX))),
                        ("format".to_string(), expr::string_value(&m.format)),
                        ("exists".to_string(), cel::Value::Bool(m.exists)),
                        (
                            "parse_error".to_string(),
                            m.parse_error.as_deref().map(expr::string_value).unwrap_or(cel::Value::Null),
                        ),
                    ]);
                    (file_v, meta_v, host_value(host))
                })
                .clone();
            let keys: Vec<Option<String>> = match key {
                None => vec![None],
                Some(p) if !p.is_wildcard() => vec![Some(p.as_str().to_string())],
                Some(p) => {
                    let mut ks: Vec<&String> = file.keys.keys().filter(|k| p.is_match(k)).collect();
                    if let Some(b) = file.baseline {
                        ks.extend(b.keys().filter(|k| p.is_match(k) && !file.keys.contains_key(*k)));
                    }
                    ks.sort();
                    ks.into_iter().map(|k| Some(k.clone())).collect()
                }
            };
            for key in keys {
                let value = proto_or_null(lookup(Some(file.keys), key.as_deref()));
                let baseline = proto_or_null(lookup(file.baseline, key.as_deref()));
                let previous = proto_or_null(lookup(file.previous, key.as_deref()));
                let vars = [
                    ("value", expr::to_cel(&value)),
                    ("baseline", expr::to_cel(&baseline)),
                    ("previous", expr::to_cel(&previous)),
                    ("key", key.as_deref().map(expr::string_value).unwrap_or(cel::Value::Null)),
                    ("path", expr::string_value(file.path)),
                    ("file", file_v.clone()),
                    ("meta", meta_v.clone()),
                    ("host", host_v.clone()),
                ];
                let (matched, error) = rule.run(&vars);
                out.push(Outcome {
                    rule: idx,
                    host: host.id.clone(),
                    file: Some(file.path.to_string()),
                    key,
                    matched,
                    value,
                    baseline,
                    previous,
                    error,
                });
            }
        }
        out
    }

    /// Evaluate every resource rule on `input.metric` that selects `host`. No samples → no
    /// outcome.
    pub fn evaluate_resource(&self, host: &HostInfo, input: &ResourceInput<'_>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(&(_, current)) = input.samples.last() else { return out };
        let previous = input.samples.len().checked_sub(2).map(|i| input.samples[i].1);
        let host_v = host_value(host);
        expr::with_history(input.now_ms, input.samples, || {
            self.resource_rules(host, input, current, previous, &host_v, &mut out);
        });
        out
    }

    fn resource_rules(
        &self,
        host: &HostInfo,
        input: &ResourceInput<'_>,
        current: f64,
        previous: Option<f64>,
        host_v: &cel::Value,
        out: &mut Vec<Outcome>,
    ) {
        for (idx, rule) in self.rules.iter().enumerate() {
            let Target::Resource { metric } = &rule.target else { continue };
            if metric != input.metric || !rule.selects(&host.labels) {
                continue;
            }
            let vars = [
                ("value", cel::Value::Float(current)),
                ("previous", previous.map(cel::Value::Float).unwrap_or(cel::Value::Null)),
                ("baseline", input.baseline.map(cel::Value::Float).unwrap_or(cel::Value::Null)),
                ("metric", expr::string_value(metric)),
                ("host", host_v.clone()),
            ];
            let (matched, error) = rule.run(&vars);
            out.push(Outcome::of_host(idx, host, (matched, error), current, input.baseline, previous));
        }
    }

    /// Evaluate every `agent: offline` rule that selects `host`.
    pub fn evaluate_agent(&self, host: &HostInfo, input: &AgentInput) -> Vec<Outcome> {
        let offline_s = if input.connected {
            0.0
        } else {
            (input.now_ms.saturating_sub(input.last_seen_ms)).max(0) as f64 / 1000.0
        };
        let host_v = host_value(host);
        let mut out = Vec::new();
        for (idx, rule) in self.rules.iter().enumerate() {
            if !matches!(rule.target, Target::AgentOffline) || !rule.selects(&host.labels) {
                continue;
            }
            let vars = [
                ("value", cel::Value::Float(offline_s)),
                ("connected", cel::Value::Bool(input.connected)),
                ("last_seen", cel::Value::Int(input.last_seen_ms)),
                ("host", host_v.clone()),
            ];
            let (matched, error) = rule.run(&vars);
            out.push(Outcome::of_host(idx, host, (matched, error), offline_s, None, None));
        }
        out
    }
}

#[cfg(test)]
mod tests;
