//! Compile-time checks of a rule expression: known variables and functions for its rule
//! kind, argument forms (durations, octal, regexes), types that can never compare, and what
//! the expression reads (variables, history windows).
//!
//! Errors carry a 1-based (line, column) inside the expression, so the loader can point at
//! the rule file.

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::{IdedExpr, Program};
use driftwatch_proto::duration::parse_ms as parse_duration_ms;

use crate::history::HistoryFn;
use crate::scope::var_bit;

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

/// when the crate gives one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExprError {
    pub pos: Option<(usize, usize)>,
    pub message: String,
}

/// What the checks learned about an expression that passed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The variables it reads, as bits over [`VARIABLES`](crate::scope::VARIABLES).
    pub uses: u16,
    /// Whether it calls a history function.
    pub history: bool,
    /// The longest window its history functions are given as a literal, in ms (0 when
    /// none): the history a resource rule needs besides its `for`.
    pub window_ms: i64,
}

/// Check a parsed expression of a rule of `kind` (`source` is its text, for positions).
pub(crate) fn check(program: &Program, source: &str, kind: ExprKind) -> Result<Checked, Vec<ExprError>> {
    let mut checker = Checker {
        kind,
        program,
        source,
        errors: Vec::new(),
        bound: Vec::new(),
        uses: Vec::new(),
        history: false,
        in_history: 0,
        window_ms: 0,
    };
    checker.walk(program.expression());
    if !checker.errors.is_empty() {
        return Err(checker.errors);
    }
    let uses = checker.uses.iter().fold(0, |acc, name| acc | var_bit(name));
    Ok(Checked { uses, history: checker.history, window_ms: checker.window_ms })
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
    /// How many history calls the walk is inside the arguments of.
    in_history: usize,
    /// The longest duration literal seen inside a history call's arguments.
    window_ms: i64,
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
                let history = HistoryFn::parse(name).is_some();
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
                self.in_history += usize::from(history);
                for a in &call.args {
                    self.walk(a);
                }
                self.in_history -= usize::from(history);
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
            // A window a history function is given: `avg('1h')`, or a literal within a
            // computed argument (`avg(c ? '1h' : '2h')`), which could be either.
            Expr::Literal(LiteralValue::String(s)) if self.in_history > 0 => {
                if let Ok(ms) = parse_duration_ms(s.inner()) {
                    self.window_ms = self.window_ms.max(ms);
                }
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
