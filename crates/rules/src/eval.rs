//! Evaluation: which rules apply to an input, their variables, fast path then CEL.
//!
//! What the rules of one call share is worked out once: glob matches (by pattern), a key
//! table of the file, its baseline and previous snapshot, history statistics, the CEL forms
//! of `file`, `meta` and `host` (only when a rule that needs CEL reads them) and the JSON
//! document for schema rules. Per rule and key, the fast path reads borrowed inputs and
//! allocates nothing; the `_with` forms hand out borrowed outcomes, so a call allocates a
//! few buffers whatever the number of rules.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use driftwatch_proto::v1::Value;

use crate::expr::{self, Compiled};
use crate::fast;
use crate::history::HistoryMemo;
use crate::input::{AgentInput, FileInput, FileMeta, HostInfo, ResourceInput};
use crate::schema::unflatten;
use crate::scope::{FVal, Scope, VARIABLES};
use crate::{FileGlob, Outcome, OutcomeRef, Rule, RuleSet, Target, ValueRef, key_hash};

type BoxVal<'a> = Box<dyn Val + 'a>;

/// The CEL forms of the per-call maps, built from the call's inputs on first use by a rule
/// that needs CEL.
pub(crate) struct CelCache<'c> {
    keys: Option<&'c BTreeMap<String, Value>>,
    meta_in: Option<&'c FileMeta>,
    host_in: &'c HostInfo,
    file: OnceCell<BoxVal<'c>>,
    meta: OnceCell<BoxVal<'c>>,
    host: OnceCell<BoxVal<'c>>,
}

impl<'c> CelCache<'c> {
    pub(crate) fn new(
        host: &'c HostInfo,
        keys: Option<&'c BTreeMap<String, Value>>,
        meta: Option<&'c FileMeta>,
    ) -> Self {
        CelCache {
            keys,
            meta_in: meta,
            host_in: host,
            file: OnceCell::new(),
            meta: OnceCell::new(),
            host: OnceCell::new(),
        }
    }
}

fn cel_str(s: &str) -> BoxVal<'_> {
    Box::new(CelString::from(s))
}

fn cel_map<'a>(entries: impl IntoIterator<Item = (&'a str, BoxVal<'a>)>) -> BoxVal<'a> {
    let map: HashMap<CelMapKey<'a>, BoxVal<'a>> = entries.into_iter().map(|(k, v)| (CelMapKey::from(k), v)).collect();
    Box::new(CelMap::from(map))
}

/// A fast-path value as CEL sees it; strings are borrowed, not copied. Masked values are
/// maps `{masked: true, fingerprint, reason}`.
fn cel_val<'a>(v: FVal<'a>) -> BoxVal<'a> {
    match v {
        FVal::Null => Box::new(CelNull),
        FVal::Bool(b) => Box::new(CelBool::from(b)),
        FVal::Int(i) => Box::new(CelInt::from(i)),
        FVal::UInt(u) => Box::new(CelUInt::from(u)),
        FVal::Double(d) => Box::new(CelDouble::from(d)),
        FVal::Str(s) => cel_str(s),
        FVal::Masked(m) => cel_map([
            ("masked", Box::new(CelBool::from(true)) as BoxVal<'a>),
            ("fingerprint", cel_str(&m.fingerprint)),
            ("key_id", cel_str(&m.key_id)),
            ("reason", cel_str(&m.reason)),
        ]),
        FVal::List(items) => Box::new(CelList::from(items.iter().map(|s| cel_str(s)).collect::<Vec<_>>())),
    }
}

fn meta_val(m: &FileMeta) -> BoxVal<'_> {
    let parse_error = FVal::of_str(m.parse_error.as_deref());
    cel_map([
        ("mode", cel_val(FVal::Int(i64::from(m.mode & 0o7777)))),
        ("dir_mode", cel_val(FVal::Int(i64::from(m.dir_mode & 0o7777)))),
        ("uid", cel_val(FVal::Int(i64::from(m.uid)))),
        ("gid", cel_val(FVal::Int(i64::from(m.gid)))),
        ("size", cel_val(FVal::Int(i64::try_from(m.size).unwrap_or(i64::MAX)))),
        ("format", cel_str(&m.format)),
        ("exists", cel_val(FVal::Bool(m.exists))),
        ("parse_error", cel_val(parse_error)),
    ])
}

fn host_val(h: &HostInfo) -> BoxVal<'_> {
    let labels = cel_map(h.labels.iter().map(|(k, v)| (k.as_str(), cel_str(v))));
    cel_map([("id", cel_str(&h.id)), ("labels", labels)])
}

/// The variables of one CEL evaluation: those the expression reads, by position in
/// [`VARIABLES`].
struct Bindings<'c, 'a> {
    slots: [Option<Slot<'c, 'a>>; VARIABLES.len()],
}

enum Slot<'c, 'a> {
    Own(BoxVal<'a>),
    Shared(&'c (dyn Val + 'a)),
}

impl VariableResolver for Bindings<'_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let i = VARIABLES.iter().position(|v| *v == variable)?;
        match self.slots[i].as_ref()? {
            Slot::Own(v) => Some(CowVal::Borrowed(v.as_ref())),
            Slot::Shared(v) => Some(CowVal::Borrowed(*v)),
        }
    }
}

/// Run `compiled` with CEL on the scope's variables (those it reads).
pub(crate) fn run_cel<'c: 'a, 'a>(compiled: &Compiled, s: &Scope<'a>, cache: &CelCache<'c>) -> Result<bool, String> {
    with_bindings(compiled, s, cache, |b| expr::execute(compiled, b, s.history))
}

/// [`run_cel`], returning the value whatever its type (to compare the fast path's values).
#[cfg(test)]
pub(crate) fn run_cel_value<'c: 'a, 'a>(
    compiled: &Compiled,
    s: &Scope<'a>,
    cache: &CelCache<'c>,
) -> Result<cel::Value, cel::ExecutionError> {
    with_bindings(compiled, s, cache, |b| expr::execute_value(compiled, b, s.history))
}

fn with_bindings<'c: 'a, 'a, R>(
    compiled: &Compiled,
    s: &Scope<'a>,
    cache: &CelCache<'c>,
    f: impl FnOnce(&Bindings<'_, 'a>) -> R,
) -> R {
    let uses = compiled.uses;
    let mut b = Bindings { slots: Default::default() };
    for (i, name) in VARIABLES.iter().enumerate() {
        if uses & (1 << i) == 0 {
            continue;
        }
        b.slots[i] = match *name {
            "value" => Some(Slot::Own(cel_val(s.value))),
            "baseline" => Some(Slot::Own(cel_val(s.baseline))),
            "previous" => Some(Slot::Own(cel_val(s.previous))),
            "key" => Some(Slot::Own(cel_val(FVal::of_str(s.key)))),
            "path" => Some(Slot::Own(cel_str(s.path))),
            "metric" => Some(Slot::Own(cel_str(s.metric))),
            "connected" => Some(Slot::Own(cel_val(FVal::Bool(s.connected)))),
            "last_seen" => Some(Slot::Own(cel_val(FVal::Int(s.last_seen)))),
            "schema_errors" => s.schema_errors.map(|e| Slot::Own(cel_val(FVal::List(e)))),
            "file" => cache.keys.map(|keys| {
                Slot::Shared(
                    cache
                        .file
                        .get_or_init(|| cel_map(keys.iter().map(|(k, v)| (k.as_str(), cel_val(FVal::of(Some(v)))))))
                        .as_ref(),
                )
            }),
            "meta" => cache.meta_in.map(|m| Slot::Shared(cache.meta.get_or_init(|| meta_val(m)).as_ref())),
            "host" => Some(Slot::Shared(cache.host.get_or_init(|| host_val(cache.host_in)).as_ref())),
            _ => None,
        };
    }
    f(&b)
}

/// Run a rule on a scope: (matched, evaluation error). An error never matches.
pub(crate) fn run<'c: 'a, 'a>(rule: &Rule, s: &Scope<'a>, cache: &CelCache<'c>) -> (bool, Option<String>) {
    if let Some(node) = &rule.compiled.fast
        && let Some(matched) = fast::eval_bool(node, s)
    {
        return (matched, None);
    }
    match run_cel(&rule.compiled, s, cache) {
        Ok(m) => (m, None),
        Err(e) => (false, Some(e)),
    }
}

/// Glob results of one call, by pattern text: rule sets repeat a few globs many times.
#[derive(Default)]
struct GlobMemo<'r> {
    seen: Vec<(&'r str, bool)>,
}

impl<'r> GlobMemo<'r> {
    const MAX: usize = 32;

    fn is_match(&mut self, glob: &'r FileGlob, path: &str) -> bool {
        let pattern = glob.as_str();
        if let Some(&(_, m)) = self.seen.iter().find(|(p, _)| *p == pattern) {
            return m;
        }
        let m = glob.is_match(path);
        if self.seen.len() < Self::MAX {
            self.seen.push((pattern, m));
        }
        m
    }
}

/// One key of the evaluated file, its baseline or its previous snapshot.
struct KeyRow<'a> {
    key: &'a str,
    value: Option<&'a Value>,
    baseline: Option<&'a Value>,
    previous: Option<&'a Value>,
}

/// The union of the keys of the file, its baseline and its previous snapshot, sorted, with
/// their three values, and a hash index over them: an exact key finds all three values with
/// one probe, and wildcard patterns walk the rows once per rule.
struct KeyTable<'a> {
    rows: Vec<KeyRow<'a>>,
    /// Open addressing: row index + 1, 0 = empty; a power of two at least twice the rows.
    slots: Vec<u32>,
    hashes: Vec<u64>,
}

impl<'a> KeyTable<'a> {
    fn new(file: &FileInput<'a>) -> Self {
        type Keys<'a> = std::iter::Peekable<std::collections::btree_map::Iter<'a, String, Value>>;
        fn take<'a>(it: &mut Keys<'a>, key: &str) -> Option<&'a Value> {
            it.next_if(|(k, _)| k.as_str() == key).map(|(_, v)| v)
        }
        static EMPTY: BTreeMap<String, Value> = BTreeMap::new();
        let mut cur = file.keys.iter().peekable();
        let mut base = file.baseline.unwrap_or(&EMPTY).iter().peekable();
        let mut prev = file.previous.unwrap_or(&EMPTY).iter().peekable();
        let mut rows = Vec::with_capacity(file.keys.len() + 8);
        while let Some(key) = [cur.peek(), base.peek(), prev.peek()].into_iter().flatten().map(|(k, _)| *k).min() {
            let (value, baseline, previous) = (take(&mut cur, key), take(&mut base, key), take(&mut prev, key));
            rows.push(KeyRow { key, value, baseline, previous });
        }
        let mask = (rows.len() * 2).next_power_of_two().max(8) - 1;
        let mut slots = vec![0u32; mask + 1];
        let hashes: Vec<u64> = rows.iter().map(|r| key_hash(r.key)).collect();
        for (i, h) in hashes.iter().enumerate() {
            let mut at = *h as usize & mask;
            while slots[at] != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = i as u32 + 1;
        }
        KeyTable { rows, slots, hashes }
    }

    fn get(&self, key: &str, hash: u64) -> Option<&KeyRow<'a>> {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let i = (*self.slots.get(at)? as usize).checked_sub(1)?;
            if self.hashes[i] == hash && self.rows[i].key == key {
                return Some(&self.rows[i]);
            }
            at = (at + 1) & mask;
        }
    }
}

impl RuleSet {
    /// Evaluate every file rule that selects `host` and whose glob matches `file.path`.
    pub fn evaluate_file(&self, host: &HostInfo, file: &FileInput<'_>) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.evaluate_file_with(host, file, |o| out.push(o.to_outcome()));
        out
    }

    /// [`evaluate_file`](Self::evaluate_file) without building the outcomes: `f` sees each
    /// one, borrowed, in the same order. Nothing is allocated per rule or key (only once per
    /// call, and by rules that need CEL).
    pub fn evaluate_file_with(&self, host: &HostInfo, file: &FileInput<'_>, mut f: impl FnMut(OutcomeRef<'_>)) {
        let cache = CelCache::new(host, Some(file.keys), Some(file.meta));
        let mut globs = GlobMemo::default();
        let doc = OnceCell::new();
        let table = OnceCell::new();
        for (idx, rule) in self.rules.iter().enumerate() {
            let Target::File { file: glob, key } = &rule.target else { continue };
            if !rule.selects(&host.labels) || !globs.is_match(glob, file.path) {
                continue;
            }
            let mut scope = Scope::new(host);
            scope.path = file.path;
            scope.file = Some(file.keys);
            scope.meta = Some(file.meta);
            // The server has the flattened keys only: validate the document they describe.
            let schema_errors =
                rule.schema.as_ref().map(|schema| schema.errors(doc.get_or_init(|| unflatten(file.keys))));
            scope.schema_errors = schema_errors.as_deref();
            // A schema rule's value is what is wrong, for `{{ value }}` in annotations.
            let schema_value = schema_errors.as_ref().filter(|e| !e.is_empty()).map(|e| e.join("; "));
            let mut eval_key = |key: Option<&str>, row: Option<&KeyRow<'_>>| {
                let (value, baseline, previous) = match row {
                    Some(r) => (r.value, r.baseline, r.previous),
                    None => (None, None, None),
                };
                let scope = Scope {
                    value: FVal::of(value),
                    baseline: FVal::of(baseline),
                    previous: FVal::of(previous),
                    key,
                    ..scope
                };
                let (matched, error) = run(rule, &scope, &cache);
                f(OutcomeRef {
                    rule: idx,
                    host: &host.id,
                    file: Some(file.path),
                    key,
                    matched,
                    value: match &schema_value {
                        Some(text) => ValueRef::Text(text),
                        None => value_ref(value),
                    },
                    baseline: value_ref(baseline),
                    previous: value_ref(previous),
                    error: error.as_deref(),
                });
            };
            match key {
                None => eval_key(None, None),
                Some(p) if !p.is_wildcard() => {
                    let row = table.get_or_init(|| KeyTable::new(file)).get(p.as_str(), p.hash());
                    eval_key(Some(p.as_str()), row);
                }
                Some(p) => {
                    // Keys of the file and of the baseline (a key gone from the file still counts).
                    let rows = &table.get_or_init(|| KeyTable::new(file)).rows;
                    for row in rows.iter().filter(|r| (r.value.is_some() || r.baseline.is_some()) && p.is_match(r.key))
                    {
                        eval_key(Some(row.key), Some(row));
                    }
                }
            }
        }
    }

    /// Evaluate every resource rule on `input.metric` that selects `host`. No samples → no
    /// outcome.
    pub fn evaluate_resource(&self, host: &HostInfo, input: &ResourceInput<'_>) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.evaluate_resource_with(host, input, |o| out.push(o.to_outcome()));
        out
    }

    /// [`evaluate_resource`](Self::evaluate_resource), handing each outcome to `f` borrowed.
    pub fn evaluate_resource_with(
        &self,
        host: &HostInfo,
        input: &ResourceInput<'_>,
        mut f: impl FnMut(OutcomeRef<'_>),
    ) {
        let Some(&(_, current)) = input.samples.last() else { return };
        let previous = input.samples.len().checked_sub(2).map(|i| input.samples[i].1);
        let memo = HistoryMemo::default();
        let scope = Scope {
            value: FVal::Double(current),
            previous: FVal::opt_double(previous),
            baseline: FVal::opt_double(input.baseline),
            metric: input.metric,
            history: Some((input.now_ms, input.samples)),
            memo: Some(&memo),
            ..Scope::new(host)
        };
        let cache = CelCache::new(host, None, None);
        for (idx, rule) in self.rules.iter().enumerate() {
            let Target::Resource { metric } = &rule.target else { continue };
            if metric != input.metric || !rule.selects(&host.labels) {
                continue;
            }
            let (matched, error) = run(rule, &scope, &cache);
            f(host_outcome(idx, host, matched, error.as_deref(), current, input.baseline, previous));
        }
    }

    /// Evaluate every `agent: offline` rule that selects `host`.
    pub fn evaluate_agent(&self, host: &HostInfo, input: &AgentInput) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.evaluate_agent_with(host, input, |o| out.push(o.to_outcome()));
        out
    }

    /// [`evaluate_agent`](Self::evaluate_agent), handing each outcome to `f` borrowed.
    pub fn evaluate_agent_with(&self, host: &HostInfo, input: &AgentInput, mut f: impl FnMut(OutcomeRef<'_>)) {
        let offline_s = if input.connected {
            0.0
        } else {
            (input.now_ms.saturating_sub(input.last_seen_ms)).max(0) as f64 / 1000.0
        };
        let scope = Scope {
            value: FVal::Double(offline_s),
            connected: input.connected,
            last_seen: input.last_seen_ms,
            ..Scope::new(host)
        };
        let cache = CelCache::new(host, None, None);
        for (idx, rule) in self.rules.iter().enumerate() {
            if !matches!(rule.target, Target::AgentOffline) || !rule.selects(&host.labels) {
                continue;
            }
            let (matched, error) = run(rule, &scope, &cache);
            f(host_outcome(idx, host, matched, error.as_deref(), offline_s, None, None));
        }
    }
}

fn value_ref(v: Option<&Value>) -> ValueRef<'_> {
    v.map(ValueRef::Proto).unwrap_or(ValueRef::Null)
}

/// An outcome about the host itself (a resource metric, the agent): no file, no key.
fn host_outcome<'a>(
    rule: usize,
    host: &'a HostInfo,
    matched: bool,
    error: Option<&'a str>,
    value: f64,
    baseline: Option<f64>,
    previous: Option<f64>,
) -> OutcomeRef<'a> {
    let num = |v: Option<f64>| v.map(ValueRef::Float).unwrap_or(ValueRef::Null);
    OutcomeRef {
        rule,
        host: &host.id,
        file: None,
        key: None,
        matched,
        value: ValueRef::Float(value),
        baseline: num(baseline),
        previous: num(previous),
        error,
    }
}
