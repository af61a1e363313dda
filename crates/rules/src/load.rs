//! Rule files: YAML documents with `groups`, each with `rules`; loading and checking.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use driftwatch_proto::duration::parse_ms as parse_duration_ms;

use crate::alert::{Severity, Timing};
use crate::check::ExprKind;
use crate::expr;
use crate::metrics::{RESOURCE_METRICS, valid_metric};
use crate::schema::Schema;
use crate::{KeyPattern, Remediation, Rule, RuleError, RuleSet, Target};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    groups: Vec<GroupDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: String,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    target: TargetDoc,
    /// Required, except with `target.schema` (default `size(schema_errors) > 0`).
    #[serde(default)]
    expr: Option<String>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// `restore_baseline`: the server puts the key back when the alert fires.
    #[serde(default)]
    remediate: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    file: Option<String>,
    key: Option<String>,
    resource: Option<String>,
    agent: Option<String>,
    /// A JSON Schema file for the whole file, relative to the rule file's directory.
    schema: Option<String>,
}

/// The expression of a schema rule that has none.
const SCHEMA_DEFAULT_EXPR: &str = "size(schema_errors) > 0";

/// Lines (0-based index) where a YAML key `key:` starts (after optional `- `), with the
/// column (0-based) of the key.
fn key_lines<'a>(lines: &'a [&'a str], key: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    lines.iter().enumerate().filter_map(move |(i, l)| {
        let trimmed = l.trim_start();
        let mut col = l.len() - trimmed.len();
        let mut t = trimmed;
        while let Some(r) = t.strip_prefix("- ") {
            let r2 = r.trim_start();
            col += t.len() - r2.len();
            t = r2;
        }
        let rest = t.strip_prefix(key)?;
        let rest = rest.strip_prefix(':')?;
        (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some((i, col))
    })
}

/// Where one rule's parts are in the file text (1-based line, column).
struct RulePos {
    rule: (usize, usize),
    /// Start of the expression text (the first line of a block scalar's content).
    expr: Option<(usize, usize)>,
    /// Start of `target.schema`'s value.
    schema: Option<(usize, usize)>,
    fields: BTreeMap<&'static str, (usize, usize)>,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

fn is_content(l: &str) -> bool {
    let t = l.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn is_item(l: &str) -> bool {
    let t = l.trim_start();
    t == "-" || t.starts_with("- ")
}

/// The rules of every `rules:` block, in order: the lines of each list item
/// `[start, end)`, and the column (0-based) of the item's keys.
fn rule_items(lines: &[&str]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (r, rcol) in key_lines(lines, "rules") {
        let Some(first) = (r + 1..lines.len()).find(|&i| is_content(lines[i])) else { continue };
        let icol = indent(lines[first]);
        if !is_item(lines[first]) || icol < rcol {
            continue;
        }
        let mut start = first;
        let mut i = first + 1;
        while i < lines.len() {
            let l = lines[i];
            if is_content(l) {
                if indent(l) < icol || (indent(l) == icol && !is_item(l)) {
                    break;
                }
                if indent(l) == icol {
                    out.push((start, i, 0));
                    start = i;
                }
            }
            i += 1;
        }
        out.push((start, i, 0));
        // Keys start after `- ` and any further blanks.
        for item in out.iter_mut().filter(|it| it.2 == 0) {
            let l = lines[item.0];
            let after = &l[icol + 1..];
            item.2 = icol + 1 + (after.len() - after.trim_start().len());
        }
    }
    out
}

/// The value of `schema:` inside the item's lines, block or flow style.
fn locate_schema(lines: &[&str], start: usize, end: usize) -> Option<(usize, usize)> {
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        let mut from = 0;
        while let Some(k) = l[from..].find("schema:").map(|k| k + from) {
            let before = l[..k].chars().next_back();
            if before.is_none_or(|c| c == '{' || c == ',' || c.is_whitespace()) {
                let after = &l[k + "schema:".len()..];
                let value = after.trim_start();
                let mut col = l.len() - value.len();
                if value.starts_with(['"', '\'']) {
                    col += 1;
                }
                return Some((i + 1, col + 1));
            }
            from = k + 1;
        }
    }
    None
}

fn locate_rules(text: &str) -> Vec<RulePos> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (start, end, kcol) in rule_items(&lines) {
        let at = |key: &'static str| {
            key_lines(&lines, key).find(|&(i, c)| i >= start && i < end && c == kcol).map(|(i, c)| (i + 1, c + 1))
        };
        let mut fields = BTreeMap::new();
        for key in
            ["name", "selector", "target", "for", "keep_firing_for", "severity", "labels", "annotations", "remediate"]
        {
            if let Some(p) = at(key) {
                fields.insert(key, p);
            }
        }
        // Expression start: after `expr:`, inside quotes, or the block scalar's first line.
        let expr = at("expr").map(|(eline, ecol)| {
            let line = lines[eline - 1];
            let after = ecol - 1 + "expr:".len();
            let rest = &line[after.min(line.len())..];
            let value = rest.trim_start();
            let mut vcol = after + (rest.len() - value.len());
            if value.starts_with('|') || value.starts_with('>') {
                let next = lines.get(eline).copied().unwrap_or("");
                (eline + 1, indent(next) + 1)
            } else {
                if value.starts_with('"') || value.starts_with('\'') {
                    vcol += 1;
                }
                (eline, vcol + 1)
            }
        });
        let rule = fields.get("name").copied().unwrap_or((start + 1, kcol + 1));
        out.push(RulePos { rule, expr, schema: locate_schema(&lines, start, end), fields });
    }
    out
}

pub(crate) fn load_text(path: &Path, text: &str, groups_seen: &mut HashSet<String>) -> (Vec<Rule>, Vec<RuleError>) {
    let err =
        |line: usize, column: usize, message: String| RuleError { file: path.to_path_buf(), line, column, message };
    let doc: FileDoc = match serde_yaml_ng::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            return (Vec::new(), vec![err(line, col, e.to_string())]);
        }
    };
    let positions = locate_rules(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut k = 0usize;
    // Each schema file is read and compiled once per rule file.
    let mut schemas: HashMap<PathBuf, Result<Arc<Schema>, String>> = HashMap::new();
    for group in doc.groups {
        let gpos = key_lines(&lines, "name")
            .find(|&(i, c)| {
                let v = lines[i][c + "name:".len()..].split(" #").next().unwrap_or("").trim();
                v.trim_matches(|q| q == '"' || q == '\'') == group.name
                    && !positions.iter().any(|p| p.rule == (i + 1, c + 1))
            })
            .map(|(i, c)| (i + 1, c + 1))
            .unwrap_or((1, 1));
        if !groups_seen.insert(group.name.clone()) {
            errors.push(err(gpos.0, gpos.1, format!("duplicate group name '{}'", group.name)));
        }
        let mut names = HashSet::new();
        for rd in group.rules {
            let pos = positions.get(k).map(|p| (p.rule, p.expr, p.schema, p.fields.clone()));
            k += 1;
            let (rpos, epos, spos, fields) = pos.unwrap_or(((0, 0), None, None, BTreeMap::new()));
            let at = |f: &'static str| fields.get(f).copied().unwrap_or(rpos);
            let epos = epos.unwrap_or(rpos);
            let before = errors.len();
            if rd.name.trim().is_empty() {
                errors.push(err(rpos.0, rpos.1, "rule name is empty".to_string()));
            }
            if !names.insert(rd.name.clone()) {
                errors.push(err(
                    rpos.0,
                    rpos.1,
                    format!("duplicate rule name '{}' in group '{}'", rd.name, group.name),
                ));
            }
            let mut duration = |field: &'static str, v: &Option<String>| -> i64 {
                match v.as_deref().map(parse_duration_ms) {
                    None => 0,
                    Some(Ok(ms)) => ms,
                    Some(Err(msg)) => {
                        let p = at(field);
                        errors.push(err(p.0, p.1, format!("{field}: {msg}")));
                        0
                    }
                }
            };
            let timing = Timing {
                for_ms: duration("for", &rd.for_),
                keep_firing_for_ms: duration("keep_firing_for", &rd.keep_firing_for),
            };
            let remediate = match rd.remediate.as_deref() {
                None => None,
                Some("restore_baseline") => {
                    if rd.target.file.is_none() {
                        let p = at("remediate");
                        errors.push(err(p.0, p.1, "remediate: only rules on a file key can restore a baseline".into()));
                    }
                    Some(Remediation::RestoreBaseline)
                }
                Some(other) => {
                    let p = at("remediate");
                    errors.push(err(p.0, p.1, format!("remediate: unknown {other:?} (restore_baseline)")));
                    None
                }
            };
            let severity = match rd.severity.as_deref() {
                None => Severity::default(),
                Some(s) => Severity::parse(s).unwrap_or_else(|| {
                    let p = at("severity");
                    errors.push(err(p.0, p.1, format!("severity: unknown {s:?} (info, low, medium, high, critical)")));
                    Severity::default()
                }),
            };
            let tpos = at("target");
            let t = rd.target;
            let mut schema = None;
            let target = match (&t.file, &t.resource, &t.agent) {
                (Some(glob), None, None) => {
                    let file = match crate::FileGlob::new(glob) {
                        Ok(g) => Some(g),
                        Err(msg) => {
                            errors.push(err(tpos.0, tpos.1, format!("target.file: {msg}")));
                            None
                        }
                    };
                    let key = match t.key.as_deref().map(KeyPattern::new) {
                        None => None,
                        Some(Ok(k)) => Some(k),
                        Some(Err(msg)) => {
                            errors.push(err(tpos.0, tpos.1, format!("target.key: {msg}")));
                            None
                        }
                    };
                    if let Some(rel) = &t.schema {
                        let (line, col) = spos.unwrap_or(tpos);
                        if t.key.is_some() {
                            let msg = "target.schema: validates the whole file; it takes no target.key".to_string();
                            errors.push(err(line, col, msg));
                        }
                        let full = path.parent().unwrap_or(Path::new("")).join(rel);
                        match schemas.entry(full.clone()).or_insert_with(|| Schema::load(&full).map(Arc::new)) {
                            Ok(s) => schema = Some(Arc::clone(s)),
                            Err(msg) => errors.push(err(line, col, format!("target.schema: {msg}"))),
                        }
                    }
                    file.map(|file| Target::File { file, key })
                }
                (None, Some(metric), None) if t.key.is_none() && t.schema.is_none() => {
                    if valid_metric(metric) {
                        Some(Target::Resource { metric: metric.clone() })
                    } else {
                        errors.push(err(
                            tpos.0,
                            tpos.1,
                            format!(
                                "target.resource: unknown metric {metric:?} (known: {}, process_group.<name>.count|rss_bytes|cpu_percent, disk.<mount>.used_percent)",
                                RESOURCE_METRICS.join(", ")
                            ),
                        ));
                        None
                    }
                }
                (None, None, Some(a)) if t.key.is_none() && t.schema.is_none() => {
                    if a == "offline" {
                        Some(Target::AgentOffline)
                    } else {
                        errors.push(err(tpos.0, tpos.1, format!("target.agent: unknown {a:?} (only \"offline\")")));
                        None
                    }
                }
                _ => {
                    errors.push(err(
                        tpos.0,
                        tpos.1,
                        "target: give exactly one of {file (+ optional key or schema)}, {resource}, {agent: offline}"
                            .to_string(),
                    ));
                    None
                }
            };
            let kind = match &target {
                Some(Target::Resource { .. }) => ExprKind::Resource,
                Some(Target::AgentOffline) => ExprKind::Agent,
                _ if t.schema.is_some() => ExprKind::Schema,
                _ => ExprKind::File,
            };
            let source = match (rd.expr, &t.schema) {
                (Some(e), _) => e,
                (None, Some(_)) => SCHEMA_DEFAULT_EXPR.to_string(),
                (None, None) => {
                    let msg = "expr: missing (only a rule with target.schema has a default expression)";
                    errors.push(err(rpos.0, rpos.1, msg.to_string()));
                    String::new()
                }
            };
            let compiled = match expr::compile(&source, kind) {
                Ok(c) => Some(c),
                Err(errs) => {
                    for e in errs {
                        let (line, col) = match e.pos {
                            None => epos,
                            Some((1, c)) => (epos.0, epos.1 + c - 1),
                            Some((l, c)) => (epos.0 + l - 1, epos.1 + c - 1),
                        };
                        errors.push(err(line, col, format!("expr: {}", e.message)));
                    }
                    None
                }
            };
            let known: BTreeSet<&str> = [
                "value", "baseline", "previous", "host", "key", "file", "path", "metric", "labels", "rule", "severity",
            ]
            .into_iter()
            .collect();
            for (name, tmpl) in &rd.annotations {
                for msg in expr::unknown_placeholders(tmpl, &known) {
                    let p = at("annotations");
                    errors.push(err(p.0, p.1, format!("annotations.{name}: {msg}")));
                }
            }
            if errors.len() == before
                && let (Some(target), Some(compiled)) = (target, compiled)
            {
                rules.push(Rule {
                    group: group.name.clone(),
                    name: rd.name,
                    selector: rd.selector,
                    target,
                    expr: source,
                    compiled,
                    schema,
                    timing,
                    severity,
                    labels: rd.labels,
                    annotations: rd.annotations,
                    remediate,
                    source: path.to_path_buf(),
                });
            }
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    (rules, errors)
}

/// Rule files in a directory: `*.yaml` / `*.yml`, sorted by name, not recursive.
pub(crate) fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let read = std::fs::read_dir(dir).map_err(|e| RuleError {
        file: dir.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read rules directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

impl RuleSet {
    /// Parse rule-file text as if it were the file `path`. The only I/O is reading the
    /// JSON Schemas that rules name (`target.schema`, relative to `path`'s directory).
    pub fn from_text(path: &Path, text: &str) -> Result<RuleSet, Vec<RuleError>> {
        let (rules, errors) = load_text(path, text, &mut HashSet::new());
        if errors.is_empty() { Ok(RuleSet { rules }) } else { Err(errors) }
    }

    /// Load every `*.yaml`/`*.yml` file in `dir`. All errors of all files are returned.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let files = rule_files(dir).map_err(|e| vec![e])?;
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let mut groups = HashSet::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    let (r, e) = load_text(&f, &text, &mut groups);
                    rules.extend(r);
                    errors.extend(e);
                }
                Err(e) => errors.push(RuleError { file: f, line: 0, column: 0, message: format!("cannot read: {e}") }),
            }
        }
        if errors.is_empty() { Ok(RuleSet { rules }) } else { Err(errors) }
    }

    /// Every error in `dir`'s rule files (empty when all is well).
    pub fn check_dir(dir: &Path) -> Vec<RuleError> {
        RuleSet::load_dir(dir).err().unwrap_or_default()
    }
}
