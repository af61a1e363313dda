//! CEL: compile-time checks, custom functions, value conversion, execution.
//!
//! Custom functions (global calls):
//! - `is_masked(x)`: true when `x` is a masked (secret) value.
//! - `is_number(x)`: true for int, uint and double.
//! - `seconds("5m")`: a duration string as seconds (double).
//! - `octal("600")`: an octal string as int (for `meta.mode`, `meta.dir_mode`).
//! - history functions, resource rules only, `d` a duration string such as `"1h"`:
//!   `avg(d)`, `min_over(d)`, `max_over(d)`, `rate(d)` (last minus first over their time
//!   distance, per second), `trend(d)` (least-squares slope, per second), `zscore(d)`
//!   (current value against mean and population stddev of the window; 0 when stddev is 0),
//!   `samples(d)` (number of samples in the window, int). The window is
//!   `(now - d, now]`; a function needing samples it does not have (none; fewer than 2 for
//!   rate/trend) is an evaluation error.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{Context, ExecutionError, FunctionContext, IdedExpr, Program};

use driftwatch_proto::duration::parse_ms as parse_duration_ms;

const HISTORY_FUNCTIONS: [&str; 7] = ["avg", "min_over", "max_over", "rate", "trend", "zscore", "samples"];
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
    /// A file rule with `target.schema`: the file variables plus `schema_errors`.
    Schema,
    Resource,
    Agent,
}

impl ExprKind {
    fn variables(self) -> &'static [&'static str] {
        match self {
            ExprKind::File => &["value", "baseline", "previous", "file", "meta", "host", "key", "path"],
            ExprKind::Schema => {
                &["value", "baseline", "previous", "file", "meta", "host", "key", "path", "schema_errors"]
            }
            ExprKind::Resource => &["value", "baseline", "previous", "host", "metric"],
            ExprKind::Agent => &["value", "host", "connected", "last_seen"],
        }
    }
}

/// Every variable any rule kind has; [`Compiled::uses`] is a bit set over this list.
pub(crate) const VARIABLES: [&str; 12] = [
    "value",
    "baseline",
    "previous",
    "key",
    "path",
    "file",
    "meta",
    "host",
    "metric",
    "connected",
    "last_seen",
    "schema_errors",
];

pub(crate) fn var_bit(name: &str) -> u16 {
    VARIABLES.iter().position(|v| *v == name).map(|i| 1 << i).unwrap_or(0)
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
    /// The variables the expression reads (bits over [`VARIABLES`]): only these are built
    /// for CEL (turning the file into a CEL map is the expensive part of an evaluation).
    pub uses: u16,
    /// Whether it calls a history function (CEL then needs the history in scope).
    pub history: bool,
    /// The same expression for the fast path, when it is within its subset.
    pub fast: Option<crate::fast::Node>,
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
    let mut checker = Checker {
        kind,
        program: &program,
        source,
        errors: Vec::new(),
        bound: Vec::new(),
        uses: Vec::new(),
        history: false,
    };
    checker.walk(program.expression());
    let uses = checker.uses.iter().fold(0, |acc, name| acc | var_bit(name));
    let history = checker.history;
    if !checker.errors.is_empty() {
        return Err(checker.errors);
    }
    let fast = crate::fast::compile(program.expression());
    Ok(Compiled { program, uses, history, fast })
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
    history: bool,
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
                self.history |= history;
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
                (ExprKind::File | ExprKind::Schema | ExprKind::Resource, "key" | "path" | "metric") => Some(Ty::String),
                _ => None,
            },
            Expr::Select(sel) if matches!(&sel.operand.expr, Expr::Ident(n) if n == "meta") && !sel.test => {
                match sel.field.as_str() {
                    "mode" | "dir_mode" | "uid" | "gid" | "size" => Some(Ty::Int),
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
// History

/// The history functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryFn {
    Avg,
    MinOver,
    MaxOver,
    Rate,
    Trend,
    Zscore,
    Samples,
}

impl HistoryFn {
    const ALL: [HistoryFn; 7] = [
        HistoryFn::Avg,
        HistoryFn::MinOver,
        HistoryFn::MaxOver,
        HistoryFn::Rate,
        HistoryFn::Trend,
        HistoryFn::Zscore,
        HistoryFn::Samples,
    ];

    pub(crate) fn parse(name: &str) -> Option<Self> {
        HistoryFn::ALL.into_iter().find(|f| f.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            HistoryFn::Avg => "avg",
            HistoryFn::MinOver => "min_over",
            HistoryFn::MaxOver => "max_over",
            HistoryFn::Rate => "rate",
            HistoryFn::Trend => "trend",
            HistoryFn::Zscore => "zscore",
            HistoryFn::Samples => "samples",
        }
    }
}

/// A history function's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stat {
    Double(f64),
    Int(i64),
}

fn mean(pts: &[(i64, f64)]) -> f64 {
    pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64
}

fn secs(t: i64) -> f64 {
    t as f64 / 1000.0
}

/// `f` over the window `(now - window_ms, now]` of `samples` (time order). The one
/// implementation behind both CEL and the fast path. Err((samples in the window, needed)).
pub(crate) fn history_stat(
    f: HistoryFn,
    window_ms: i64,
    now_ms: i64,
    samples: &[(i64, f64)],
) -> Result<Stat, (usize, usize)> {
    let from = now_ms.saturating_sub(window_ms);
    let end = samples.partition_point(|(t, _)| *t <= now_ms);
    let start = samples[..end].partition_point(|(t, _)| *t <= from);
    let current = if end > 0 { samples[end - 1].1 } else { f64::NAN };
    let pts = &samples[start..end];
    let need = |n: usize| if pts.len() < n { Err((pts.len(), n)) } else { Ok(()) };
    let v = match f {
        HistoryFn::Samples => return Ok(Stat::Int(pts.len() as i64)),
        HistoryFn::Avg => {
            need(1)?;
            mean(pts)
        }
        HistoryFn::MinOver => {
            need(1)?;
            pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
        }
        HistoryFn::MaxOver => {
            need(1)?;
            pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max)
        }
        HistoryFn::Rate => {
            need(2)?;
            let (a, b) = (pts[0], pts[pts.len() - 1]);
            if b.0 <= a.0 { 0.0 } else { (b.1 - a.1) / (secs(b.0) - secs(a.0)) }
        }
        HistoryFn::Trend => {
            need(2)?;
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
        HistoryFn::Zscore => {
            need(1)?;
            let m = mean(pts);
            let var = pts.iter().map(|p| (p.1 - m) * (p.1 - m)).sum::<f64>() / pts.len() as f64;
            let sd = var.sqrt();
            if sd == 0.0 { 0.0 } else { (current - m) / sd }
        }
    };
    Ok(Stat::Double(v))
}

// ---------------------------------------------------------------------------------------
// Execution

fn is_masked(v: &cel::Value) -> bool {
    match v {
        cel::Value::Map(m) => matches!(m.map.get(&Key::from("masked")), Some(cel::Value::Bool(true))),
        _ => false,
    }
}

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

fn history_fn(f: HistoryFn) -> impl Fn(Arc<String>) -> Result<cel::Value, ExecutionError> + Send + Sync {
    move |d: Arc<String>| {
        let name = f.name();
        let ms = parse_duration_ms(&d).map_err(|e| fn_err(name, e))?;
        HISTORY.with(|h| {
            let h = h.borrow();
            if !h.active {
                return Err(fn_err(name, "no resource history here (only in rules with target.resource)"));
            }
            match history_stat(f, ms, h.now_ms, &h.samples) {
                Ok(Stat::Double(v)) => Ok(cel::Value::Float(v)),
                Ok(Stat::Int(i)) => Ok(cel::Value::Int(i)),
                Err((have, need)) => {
                    Err(fn_err(name, format!("{have} sample(s) in the last {d}, need at least {need}")))
                }
            }
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
    for f in HistoryFn::ALL {
        let _ = ctx.add_function(f.name(), history_fn(f));
    }
    ctx
}

/// Make `samples` (ending at `now_ms`) the history seen by the history functions while
/// `f` runs; outside it the functions report an error.
fn with_history<R>(now_ms: i64, samples: &[(i64, f64)], f: impl FnOnce() -> R) -> R {
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

/// Run the program with the variables `vars` resolves, and `history` in scope for the
/// history functions.
pub(crate) fn execute_value(
    compiled: &Compiled,
    vars: &dyn VariableResolver,
    history: Option<(i64, &[(i64, f64)])>,
) -> Result<cel::Value, ExecutionError> {
    let run = || {
        BASE.with(|base| {
            let mut ctx = base.new_inner_scope();
            ctx.set_variable_resolver(vars);
            compiled.program.execute(&ctx)
        })
    };
    match history {
        Some((now_ms, samples)) if compiled.history => with_history(now_ms, samples, run),
        _ => run(),
    }
}

/// [`execute_value`] for a rule: the boolean result, or an error message.
pub(crate) fn execute(
    compiled: &Compiled,
    vars: &dyn VariableResolver,
    history: Option<(i64, &[(i64, f64)])>,
) -> Result<bool, String> {
    match execute_value(compiled, vars, history) {
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
