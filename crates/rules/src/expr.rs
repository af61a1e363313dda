//! CEL: compile-time checks, custom functions, value conversion, execution.
//!
//! Custom functions (global calls):
//! - `is_masked(x)`: true when `x` is a masked (secret) value.
//! - `is_number(x)`: true for int, uint and double.
//! - `seconds("5m")`: a duration string as seconds (double).
//! - `octal("600")`: an octal string as int (for `meta.mode`).
//! - history functions, resource rules only, `d` a duration string such as `"1h"`:
//!   `avg(d)`, `min_over(d)`, `max_over(d)`, `rate(d)` (last minus first over their time
//!   distance, per second), `trend(d)` (least-squares slope, per second), `zscore(d)`
//!   (current value against mean and population stddev of the window; 0 when stddev is 0),
//!   `samples(d)` (number of samples in the window, int). The window is
//!   `(now - d, now]`; a function needing samples it does not have (none; fewer than 2 for
//!   rate/trend) is an evaluation error.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, ExecutionError, FunctionContext, IdedExpr, Program};
use driftwatch_proto::v1::value::Kind;

use crate::duration::parse_duration_ms;

pub(crate) const HISTORY_FUNCTIONS: [&str; 7] = ["avg", "min_over", "max_over", "rate", "trend", "zscore", "samples"];
const CUSTOM_FUNCTIONS: [&str; 4] = ["is_masked", "is_number", "seconds", "octal"];
/// Operators and standard functions of the `cel` crate's standard environment (as far as
/// this crate enables it: no chrono, no extensions).
const STD_FUNCTIONS: &[&str] = &[
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "_-_",
    "_+_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "-_",
    "_[_]",
    "@in",
    "@not_strictly_false",
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "type",
    "dyn",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "max",
    "min",
];

/// What kind of rule an expression belongs to: decides its variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExprKind {
    File,
    Resource,
    Agent,
}

impl ExprKind {
    fn variables(self) -> &'static [&'static str] {
        match self {
            ExprKind::File => &["value", "baseline", "previous", "file", "meta", "host", "key", "path"],
            ExprKind::Resource => &["value", "baseline", "previous", "host", "metric"],
            ExprKind::Agent => &["value", "host", "connected", "last_seen"],
        }
    }
}

/// A problem found at compile time, with a 1-based (line, column) inside the expression
/// when the crate gives one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExprError {
    pub pos: Option<(usize, usize)>,
    pub message: String,
}

/// A compiled, checked expression.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub program: Program,
    /// The context variables the expression reads: only these are built per evaluation
    /// (turning a large map into a CEL value is the expensive part of an evaluation).
    pub uses: Vec<String>,
}

pub(crate) fn compile(source: &str, kind: ExprKind) -> Result<Compiled, Vec<ExprError>> {
    let program = match Program::compile(source) {
        Ok(p) => p,
        Err(errs) => {
            return Err(errs
                .errors
                .iter()
                .map(|e| ExprError {
                    pos: (e.pos.0 > 0).then(|| (e.pos.0 as usize, e.pos.1.max(1) as usize)),
                    message: format!("syntax error: {}", e.msg.trim_start_matches("Syntax error: ")),
                })
                .collect());
        }
    };
    let mut checker =
        Checker { kind, program: &program, source, errors: Vec::new(), bound: Vec::new(), uses: Vec::new() };
    checker.walk(program.expression());
    let uses = std::mem::take(&mut checker.uses);
    if checker.errors.is_empty() { Ok(Compiled { program, uses }) } else { Err(checker.errors) }
}

/// Static types the checker can be sure of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Double,
    String,
    Bool,
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Int => "int",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Bool => "bool",
            Ty::Null => "null",
        }
    }
    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Double)
    }
}

struct Checker<'a> {
    kind: ExprKind,
    program: &'a Program,
    source: &'a str,
    errors: Vec<ExprError>,
    bound: Vec<String>,
    uses: Vec<String>,
}

impl Checker<'_> {
    fn pos(&self, id: u64) -> Option<(usize, usize)> {
        let (start, _) = self.program.source_info().offset_for(id)?;
        Some(self.pos_at(start))
    }

    /// The call's name, not its `(` where the crate places a call node.
    fn call_pos(&self, id: u64, name: &str) -> Option<(usize, usize)> {
        let (start, _) = self.program.source_info().offset_for(id)?;
        let n = name.chars().count() as u32;
        let at_paren = self.source.chars().nth(start as usize) == Some('(');
        Some(self.pos_at(if at_paren && start >= n { start - n } else { start }))
    }

    fn pos_at(&self, start: u32) -> (usize, usize) {
        // Offsets count characters from the start of the source.
        let mut line = 1;
        let mut col = 1;
        for (i, c) in self.source.chars().enumerate() {
            if i as u32 == start {
                break;
            }
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        (line, col)
    }

    fn error(&mut self, id: u64, message: String) {
        let pos = self.pos(id);
        self.errors.push(ExprError { pos, message });
    }

    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => {
                let bound = self.bound.iter().any(|b| b == name);
                if !bound && !self.uses.contains(name) {
                    self.uses.push(name.clone());
                }
                if !bound && !self.kind.variables().contains(&name.as_str()) {
                    let known = self.kind.variables().join(", ");
                    self.error(e.id, format!("unknown variable '{name}' (known here: {known})"));
                }
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let history = HISTORY_FUNCTIONS.contains(&name);
                if !(STD_FUNCTIONS.contains(&name) || CUSTOM_FUNCTIONS.contains(&name) || history) {
                    let pos = self.call_pos(e.id, name);
                    self.errors.push(ExprError { pos, message: format!("unknown function '{name}'") });
                }
                if history && self.kind != ExprKind::Resource {
                    self.error(e.id, format!("'{name}' needs a resource history: only in rules with target.resource"));
                }
                let lit = call.args.first().and_then(|a| string_literal(a));
                if history || name == "seconds" {
                    if call.args.len() != 1 || call.target.is_some() {
                        self.error(e.id, format!("'{name}' takes one argument, a duration such as \"1h\""));
                    } else if let Some(d) = lit
                        && let Err(msg) = parse_duration_ms(d)
                    {
                        self.error(call.args[0].id, msg);
                    }
                }
                if name == "octal"
                    && let Some(s) = lit
                    && i64::from_str_radix(s, 8).is_err()
                {
                    self.error(call.args[0].id, format!("octal: {s:?} is not an octal number"));
                }
                if name == "matches" {
                    // `s.matches(re)` or `matches(s, re)`.
                    let re = if call.target.is_some() { call.args.first() } else { call.args.get(1) };
                    if let Some(re) = re
                        && let Some(pattern) = string_literal(re)
                        && let Err(err) = regex::Regex::new(pattern)
                    {
                        let msg = err.to_string().lines().last().unwrap_or("").trim().to_string();
                        self.error(re.id, format!("invalid regex in matches(): {msg}"));
                    }
                }
                if let Some(op) = type_checked_operator(name)
                    && call.args.len() == 2
                    && let (Some(a), Some(b)) = (self.static_type(&call.args[0]), self.static_type(&call.args[1]))
                    && ((a == Ty::String && b.numeric()) || (b == Ty::String && a.numeric()))
                {
                    self.error(e.id, format!("type error: {} {op} {} is never valid", a.name(), b.name()));
                }
                if let Some(t) = &call.target {
                    self.walk(t);
                }
                for a in &call.args {
                    self.walk(a);
                }
            }
            Expr::Select(sel) => self.walk(&sel.operand),
            Expr::List(list) => {
                for el in &list.elements {
                    self.walk(el);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key);
                        self.walk(&me.value);
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.walk(&f.value);
                    }
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let n = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(n);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn static_type(&self, e: &IdedExpr) -> Option<Ty> {
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Int(_) | LiteralValue::UInt(_) => Some(Ty::Int),
                LiteralValue::Double(_) => Some(Ty::Double),
                LiteralValue::String(_) => Some(Ty::String),
                LiteralValue::Boolean(_) => Some(Ty::Bool),
                LiteralValue::Null => Some(Ty::Null),
                LiteralValue::Bytes(_) => None,
            },
            Expr::Ident(name) if !self.bound.iter().any(|b| b == name) => match (self.kind, name.as_str()) {
                (ExprKind::Resource | ExprKind::Agent, "value") => Some(Ty::Double),
                (ExprKind::File | ExprKind::Resource, "key" | "path" | "metric") => Some(Ty::String),
                _ => None,
            },
            Expr::Select(sel) if matches!(&sel.operand.expr, Expr::Ident(n) if n == "meta") && !sel.test => {
                match sel.field.as_str() {
                    "mode" | "uid" | "gid" | "size" => Some(Ty::Int),
                    "format" | "path" => Some(Ty::String),
                    "exists" => Some(Ty::Bool),
                    _ => None,
                }
            }
            Expr::Call(call) => match call.func_name.as_str() {
                "int" | "size" | "octal" | "samples" => Some(Ty::Int),
                "double" | "seconds" | "avg" | "min_over" | "max_over" | "rate" | "trend" | "zscore" => {
                    Some(Ty::Double)
                }
                "string" => Some(Ty::String),
                "is_masked" | "is_number" | "matches" | "startsWith" | "endsWith" | "contains" => Some(Ty::Bool),
                _ => None,
            },
            _ => None,
        }
    }
}

fn type_checked_operator(name: &str) -> Option<&'static str> {
    Some(match name {
        "_==_" => "==",
        "_!=_" => "!=",
        "_<_" => "<",
        "_<=_" => "<=",
        "_>_" => ">",
        "_>=_" => ">=",
        "_+_" => "+",
        "_-_" => "-",
        "_*_" => "*",
        "_/_" => "/",
        _ => return None,
    })
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Values

/// A proto value as CEL sees it. Masked values are maps
/// `{"masked": true, "fingerprint": "...", "reason": "..."}`.
pub(crate) fn to_cel(v: &driftwatch_proto::v1::Value) -> cel::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => cel::Value::Null,
        Some(Kind::BoolValue(b)) => cel::Value::Bool(*b),
        Some(Kind::IntValue(i)) => cel::Value::Int(*i),
        Some(Kind::FloatValue(f)) => cel::Value::Float(*f),
        Some(Kind::StringValue(s)) => cel::Value::String(Arc::new(s.clone())),
        Some(Kind::Masked(m)) => {
            let mut map: HashMap<Key, cel::Value> = HashMap::with_capacity(3);
            map.insert(Key::from("masked"), cel::Value::Bool(true));
            map.insert(Key::from("fingerprint"), cel::Value::String(Arc::new(m.fingerprint.clone())));
            map.insert(Key::from("reason"), cel::Value::String(Arc::new(m.reason.clone())));
            cel::Value::Map(Map { map: Arc::new(map) })
        }
    }
}

pub(crate) fn map_value(entries: impl IntoIterator<Item = (String, cel::Value)>) -> cel::Value {
    let map: HashMap<Key, cel::Value> = entries.into_iter().map(|(k, v)| (Key::from(k), v)).collect();
    cel::Value::Map(Map { map: Arc::new(map) })
}

pub(crate) fn string_value(s: &str) -> cel::Value {
    cel::Value::String(Arc::new(s.to_string()))
}

fn is_masked(v: &cel::Value) -> bool {
    match v {
        cel::Value::Map(m) => matches!(m.map.get(&Key::from("masked")), Some(cel::Value::Bool(true))),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Execution

/// The resource history visible to the history functions during one evaluation.
#[derive(Default)]
struct HistoryScope {
    active: bool,
    now_ms: i64,
    samples: Vec<(i64, f64)>,
}

thread_local! {
    static HISTORY: RefCell<HistoryScope> = RefCell::new(HistoryScope::default());
    static BASE: Context<'static, 'static> = base_context();
}

fn fn_err(name: &str, msg: impl ToString) -> ExecutionError {
    ExecutionError::function_error(name, msg)
}

/// Run `f` on the window `(now - d, now]` of the current history (samples in time order)
/// and the current value; errors when no history is in scope.
fn with_window<R>(
    name: &str,
    d: &str,
    f: impl FnOnce(f64, &[(i64, f64)]) -> Result<R, ExecutionError>,
) -> Result<R, ExecutionError> {
    let ms = parse_duration_ms(d).map_err(|e| fn_err(name, e))?;
    HISTORY.with(|h| {
        let h = h.borrow();
        if !h.active {
            return Err(fn_err(name, "no resource history here (only in rules with target.resource)"));
        }
        let from = h.now_ms.saturating_sub(ms);
        let end = h.samples.partition_point(|(t, _)| *t <= h.now_ms);
        let start = h.samples[..end].partition_point(|(t, _)| *t <= from);
        let current = if end > 0 { h.samples[end - 1].1 } else { f64::NAN };
        f(current, &h.samples[start..end])
    })
}

fn need(name: &str, d: &str, pts: &[(i64, f64)], n: usize) -> Result<(), ExecutionError> {
    if pts.len() < n {
        return Err(fn_err(name, format!("{} sample(s) in the last {d}, need at least {n}", pts.len())));
    }
    Ok(())
}

fn mean(pts: &[(i64, f64)]) -> f64 {
    pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64
}

fn secs(t: i64) -> f64 {
    t as f64 / 1000.0
}

fn history_fn(name: &'static str) -> impl Fn(Arc<String>) -> Result<cel::Value, ExecutionError> + Send + Sync {
    move |d: Arc<String>| {
        with_window(name, &d, |current, pts| {
            let v = match name {
                "samples" => return Ok(cel::Value::Int(pts.len() as i64)),
                "avg" => {
                    need(name, &d, pts, 1)?;
                    mean(pts)
                }
                "min_over" => {
                    need(name, &d, pts, 1)?;
                    pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
                }
                "max_over" => {
                    need(name, &d, pts, 1)?;
                    pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max)
                }
                "rate" => {
                    need(name, &d, pts, 2)?;
                    let (a, b) = (pts[0], pts[pts.len() - 1]);
                    if b.0 <= a.0 { 0.0 } else { (b.1 - a.1) / (secs(b.0) - secs(a.0)) }
                }
                "trend" => {
                    need(name, &d, pts, 2)?;
                    // Times relative to the first sample keep the sums well conditioned.
                    let t0 = pts[0].0;
                    let n = pts.len() as f64;
                    let mt = pts.iter().map(|p| secs(p.0 - t0)).sum::<f64>() / n;
                    let mv = mean(pts);
                    let (mut num, mut den) = (0.0, 0.0);
                    for (t, v) in pts {
                        let dt = secs(t - t0) - mt;
                        num += dt * (v - mv);
                        den += dt * dt;
                    }
                    if den == 0.0 { 0.0 } else { num / den }
                }
                "zscore" => {
                    need(name, &d, pts, 1)?;
                    let m = mean(pts);
                    let var = pts.iter().map(|p| (p.1 - m) * (p.1 - m)).sum::<f64>() / pts.len() as f64;
                    let sd = var.sqrt();
                    if sd == 0.0 { 0.0 } else { (current - m) / sd }
                }
                _ => return Err(fn_err(name, "unknown history function")),
            };
            Ok(cel::Value::Float(v))
        })
    }
}

fn base_context() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    // Names are unique and not standard overloads, so these cannot fail.
    let _ = ctx.add_function("is_masked", |v: cel::Value| is_masked(&v));
    let _ = ctx.add_function("is_number", |v: cel::Value| {
        matches!(v, cel::Value::Int(_) | cel::Value::UInt(_) | cel::Value::Float(_))
    });
    let _ = ctx.add_function("seconds", |d: Arc<String>| {
        parse_duration_ms(&d).map(|ms| cel::Value::Float(ms as f64 / 1000.0)).map_err(|e| fn_err("seconds", e))
    });
    let _ = ctx.add_function("octal", |_ftx: &FunctionContext, s: Arc<String>| {
        i64::from_str_radix(&s, 8).map(cel::Value::Int).map_err(|_| fn_err("octal", format!("{s:?} is not octal")))
    });
    for name in HISTORY_FUNCTIONS {
        let _ = ctx.add_function(name, history_fn(name));
    }
    ctx
}

/// Make `samples` (ending at `now_ms`) the history seen by the history functions while
/// `f` runs; outside it the functions report an error.
pub(crate) fn with_history<R>(now_ms: i64, samples: &[(i64, f64)], f: impl FnOnce() -> R) -> R {
    HISTORY.with(|h| {
        let mut h = h.borrow_mut();
        h.samples.clear();
        h.samples.extend_from_slice(samples);
        h.now_ms = now_ms;
        h.active = true;
    });
    let r = f();
    HISTORY.with(|h| {
        let mut h = h.borrow_mut();
        h.active = false;
        h.samples.clear();
    });
    r
}

/// Run `program` with `vars` (only those it reads are bound). Returns the boolean
/// result, or an error message.
pub(crate) fn execute(compiled: &Compiled, vars: &[(&str, cel::Value)]) -> Result<bool, String> {
    let result = BASE.with(|base| {
        let mut ctx = base.new_inner_scope();
        for (name, v) in vars {
            if compiled.uses.iter().any(|u| u == name) {
                ctx.add_variable_from_value(*name, v.clone());
            }
        }
        compiled.program.execute(&ctx)
    });
    match result {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression returned {}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// Names an expression references that are not among `known` (template check helper).
pub(crate) fn unknown_placeholders(template: &str, known: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push("unclosed '{{'".to_string());
            break;
        };
        let name = after[..end].trim();
        let root = name.split('.').next().unwrap_or("");
        if !known.contains(root) {
            out.push(format!("unknown template variable '{name}'"));
        }
        rest = &after[end + 2..];
    }
    out
}
