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
//!         # or {file: "**/x.yaml", schema: x.schema.json} or {resource: memory_used_bytes}
//!         # or {agent: offline}
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
//! `target.schema` names a JSON Schema file (relative to the rule file's directory; drafts 4
//! to 2020-12, no remote references) that the whole file must satisfy; it takes no `key`.
//! The file's flattened keys are turned back into a document ([`unflatten`]) and validated;
//! the rule sees the errors as `schema_errors` (strings `"/json/pointer: message"`, masked
//! values quoted only as `masked:<16 hex>`), its `expr` defaults to
//! `size(schema_errors) > 0`, and its outcome's `value` is the errors joined with `"; "`.
//!
//! # Variables
//!
//! File rules: `value`, `baseline` (that key in the baseline; null when none), `previous`
//! (that key in the previous snapshot; null when none), `key`, `path`, `file` (map of
//! every key of the file: `file["rate_limiting.requests_per_second"]`, or
//! `file.WORKERS` for keys without dots), `meta` (`mode` (permission bits, e.g.
//! `octal("600")`), `dir_mode` (permission bits of the directory holding the file, of
//! its target for a symlink; 0 when unknown, e.g. from an older agent or for a missing
//! file), `uid`, `gid`, `size`, `format`, `exists`, `parse_error` (string or null)),
//! `host` (`id`, `labels`).
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
//!
//! Resource metric names come from samples through [`resource_metrics`] /
//! [`for_each_resource_metric`], the one mapping the loader's names follow.
//!
//! # Evaluation
//!
//! Expressions are CEL, compiled and checked at load. The common ones (comparisons, `&&`,
//! `||`, `in` a literal list, string tests, `file[...]`, `meta.*`, history functions, ...)
//! also run on a direct evaluator that gives CEL's answer without its cost, and defers to
//! CEL for anything else and for every error (see the `fast` module). `evaluate_*` return
//! owned [`Outcome`]s; `evaluate_*_with` hand out borrowed [`OutcomeRef`]s instead and
//! allocate nothing per outcome (`BENCHMARKS.md` has the figures).
//!
//! # Modules
//!
//! Imports run one way, each module only from those before it:
//! `alert`, `schema`, `metrics`, `history`, `input` (no crate imports) → `scope` (what an
//! expression reads) → `fast` (the direct evaluator) → `check` (compile-time checks) →
//! `expr` (CEL: compile, run) → this file (rules, rule sets, outcomes) → `eval`
//! (evaluation), `load` (rule files) → `testing` (`driftwatch rules test`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use driftwatch_proto::v1::Value;

pub mod alert;
mod check;
mod eval;
mod expr;
mod fast;
mod history;
mod input;
mod load;
mod metrics;
mod schema;
mod scope;
pub mod testing;

pub use alert::{AlertState, AlertStatus, Observation, Severity, Timing, Transition, fingerprint, step};
pub use driftwatch_proto::duration::parse_ms as parse_duration_ms;
pub use input::{AgentInput, FileInput, FileMeta, HostInfo, ResourceInput};
pub use metrics::{RESOURCE_METRICS, for_each_resource_metric, resource_metrics};
pub use schema::unflatten;

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
    /// The literal runs between the `*`s (one when there is none): matching runs for every
    /// key of every evaluated file, so it is split once here.
    parts: Vec<String>,
    /// [`key_hash`] of a literal pattern, for the per-call key index.
    hash: u64,
}

/// Hash of a key for the per-call key index, seeded once per process: keys come from
/// hosts, and an unseeded hash would let one host's file make lookups quadratic.
pub(crate) fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(key)
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
        Ok(Self {
            pattern: pattern.to_string(),
            parts: pattern.split('*').map(str::to_string).collect(),
            hash: key_hash(pattern),
        })
    }

    pub fn is_wildcard(&self) -> bool {
        self.pattern.contains('*')
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    pub fn is_match(&self, key: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else { return false };
        let Some((last, middle)) = rest.split_last() else { return key == self.pattern };
        let Some(mut rest) = key.strip_prefix(first.as_str()) else { return false };
        for p in middle {
            match rest.find(p.as_str()) {
                Some(i) => rest = &rest[i + p.len()..],
                None => return false,
            }
        }
        rest.ends_with(last.as_str())
    }
}

/// What a rule looks at.
#[derive(Debug, Clone)]
pub enum Target {
    File { file: FileGlob, key: Option<KeyPattern> },
    Resource { metric: String },
    AgentOffline,
}

/// An automatic fix a rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remediation {
    /// Put the alert's key back to the host's effective baseline value.
    RestoreBaseline,
}

/// One loaded, compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub group: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub target: Target,
    /// The expression as written (for a schema rule without `expr`, its default).
    pub expr: String,
    compiled: expr::Compiled,
    /// `target.schema`, loaded and compiled.
    schema: Option<std::sync::Arc<schema::Schema>>,
    pub timing: Timing,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// What the server does on its own when the alert fires.
    pub remediate: Option<Remediation>,
    /// The file the rule came from.
    pub source: PathBuf,
}

impl Rule {
    /// A rule the server raises alerts for itself (no expression of its own: it never
    /// matches when evaluated), such as "remediation gave up". Its group is `group`,
    /// its alerts carry `annotations` as given.
    pub fn builtin(group: &str, name: &str, severity: Severity, annotations: BTreeMap<String, String>) -> Rule {
        Rule {
            group: group.to_string(),
            name: name.to_string(),
            selector: BTreeMap::new(),
            target: Target::AgentOffline,
            expr: "false".to_string(),
            compiled: expr::compile("false", check::ExprKind::Agent).expect("the constant false compiles"),
            schema: None,
            timing: Timing::default(),
            severity,
            labels: BTreeMap::new(),
            annotations,
            remediate: None,
            source: PathBuf::new(),
        }
    }

    /// The resource history this rule needs, in ms: its `for` or the longest window its
    /// history functions are given (`avg('2h')`), whichever is longer, plus a minute for
    /// sample jitter. Only resource rules read history.
    pub fn history_window_ms(&self) -> i64 {
        self.timing.for_ms.max(self.compiled.window_ms) + 60_000
    }

    /// The JSON Schema file of `target.schema`, resolved against the rule file's directory.
    pub fn schema_path(&self) -> Option<&std::path::Path> {
        self.schema.as_deref().map(|s| s.path.as_path())
    }

    /// Whether the rule applies to a host with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Render the annotations for an outcome: `{{ value }}`, `{{ baseline }}`, `{{ previous }}`,
    /// `{{ host }}`, `{{ key }}`, `{{ file }}`/`{{ path }}`, `{{ metric }}`, `{{ rule }}`,
    /// `{{ severity }}`, `{{ labels.NAME }}` (host label). Masked values render as
    /// `masked:<16 hex>`.
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
    pub fn fingerprint(&self, rules: &RuleSet) -> String {
        outcome_fingerprint(rules, self.rule, &self.host, self.file.as_deref(), self.key.as_deref())
    }

    pub fn observation(&self) -> Observation {
        Observation::from_outcome(self.matched, self.error.is_some())
    }
}

/// The alert identity of rule `rule`'s outcome on (host, file or metric, key).
fn outcome_fingerprint(rules: &RuleSet, rule: usize, host: &str, file: Option<&str>, key: Option<&str>) -> String {
    let r = &rules.rules[rule];
    let metric = match &r.target {
        Target::Resource { metric } => Some(metric.as_str()),
        _ => None,
    };
    fingerprint(&r.group, &r.name, host, file.or(metric), key)
}

/// A value of an [`OutcomeRef`], borrowed where the input holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Proto(&'a Value),
    /// A resource metric or an agent's offline time.
    Float(f64),
    /// A schema rule's errors, joined with "; ".
    Text(&'a str),
}

impl ValueRef<'_> {
    pub fn to_value(&self) -> Value {
        match self {
            ValueRef::Null => Value::null(),
            ValueRef::Proto(v) => (*v).clone(),
            ValueRef::Float(f) => Value::float(*f),
            ValueRef::Text(s) => Value::string(*s),
        }
    }
}

/// An [`Outcome`] borrowing from the evaluation's inputs, as the `evaluate_*_with` methods
/// hand them out: no allocation per outcome. Same fields, same meaning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutcomeRef<'a> {
    pub rule: usize,
    pub host: &'a str,
    pub file: Option<&'a str>,
    pub key: Option<&'a str>,
    pub matched: bool,
    pub value: ValueRef<'a>,
    pub baseline: ValueRef<'a>,
    pub previous: ValueRef<'a>,
    pub error: Option<&'a str>,
}

impl OutcomeRef<'_> {
    pub fn to_outcome(&self) -> Outcome {
        Outcome {
            rule: self.rule,
            host: self.host.to_string(),
            file: self.file.map(str::to_string),
            key: self.key.map(str::to_string),
            matched: self.matched,
            value: self.value.to_value(),
            baseline: self.baseline.to_value(),
            previous: self.previous.to_value(),
            error: self.error.map(str::to_string),
        }
    }

    /// The alert identity, as [`Outcome::fingerprint`].
    pub fn fingerprint(&self, rules: &RuleSet) -> String {
        outcome_fingerprint(rules, self.rule, self.host, self.file, self.key)
    }

    pub fn observation(&self) -> Observation {
        Observation::from_outcome(self.matched, self.error.is_some())
    }
}

impl RuleSet {
    /// Resource history kept when no rule asks for a longer window: 1 h.
    pub const MIN_HISTORY_MS: i64 = 3_600_000;
    /// Upper bound of the resource history kept in memory, whatever a rule asks for: 24 h
    /// (the server keeps raw samples this long in its store).
    pub const MAX_HISTORY_MS: i64 = 86_400_000;

    /// How much resource history to keep per series, in ms: the longest any resource rule
    /// needs ([`Rule::history_window_ms`]), at least [`MIN_HISTORY_MS`](Self::MIN_HISTORY_MS)
    /// and at most [`MAX_HISTORY_MS`](Self::MAX_HISTORY_MS). The server and `rules test`
    /// both keep this much.
    pub fn history_window_ms(&self) -> i64 {
        let resource_rules = self.rules.iter().filter(|r| matches!(r.target, Target::Resource { .. }));
        resource_rules.map(Rule::history_window_ms).fold(Self::MIN_HISTORY_MS, i64::max).min(Self::MAX_HISTORY_MS)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
