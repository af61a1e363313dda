//! A direct evaluator for the common subset of rule expressions.
//!
//! cel-rust costs about 1–2 µs per evaluation whatever the expression (context scopes,
//! boxed values, overload lookup), which is most of a rule's cost. Rules are mostly
//! comparisons of a variable with a literal, `is_number`/`double` guards, `&&`/`||`, `in`
//! over a literal list, string tests, a few `file[...]`, `meta.*`, `host.*` lookups and the
//! history functions. This module compiles that subset from the checked CEL AST at load and
//! evaluates it over borrowed inputs without allocating.
//!
//! It never decides anything CEL would not: every operation mirrors cel-rust 0.15 (numeric
//! comparison across int/uint/double, equality that is false across types, checked integer
//! arithmetic, ...). Wherever CEL would report an error, or a case is not covered, the
//! evaluator answers `None` and the caller runs CEL, so errors and their messages always come
//! from CEL. `fast_path_agrees_with_cel` in the tests checks this on random expressions and
//! values.

use std::cmp::Ordering;

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};
use driftwatch_proto::v1::MaskedValue;
use driftwatch_proto::v1::value::Kind;

use crate::eval::Scope;
use crate::expr::{HistoryFn, Stat, history_stat};
use driftwatch_proto::duration::parse_ms as parse_duration_ms;

/// A value as the fast path sees it: borrowed from the inputs or from the compiled tree.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FVal<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    Masked(&'a MaskedValue),
    /// `schema_errors`: only `size()` and `is_number()` are answered here.
    List(&'a [String]),
}

impl<'a> FVal<'a> {
    pub(crate) fn of(v: Option<&'a driftwatch_proto::v1::Value>) -> Self {
        match v.and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::NullValue(_)) => FVal::Null,
            Some(Kind::BoolValue(b)) => FVal::Bool(*b),
            Some(Kind::IntValue(i)) => FVal::Int(*i),
            Some(Kind::FloatValue(f)) => FVal::Double(*f),
            Some(Kind::StringValue(s)) => FVal::Str(s),
            Some(Kind::Masked(m)) => FVal::Masked(m),
        }
    }

    pub(crate) fn of_str(v: Option<&'a str>) -> Self {
        v.map(FVal::Str).unwrap_or(FVal::Null)
    }

    pub(crate) fn opt_double(v: Option<f64>) -> Self {
        v.map(FVal::Double).unwrap_or(FVal::Null)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Value,
    Baseline,
    Previous,
    Key,
    Path,
    Metric,
    Connected,
    LastSeen,
    SchemaErrors,
    /// The variable of `file.exists(k, ...)` / `file.all(k, ...)`: a key.
    Iter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaField {
    Mode,
    DirMode,
    Uid,
    Gid,
    Size,
    Format,
    Exists,
    ParseError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

/// A compiled expression of the subset.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Lit(Lit),
    Var(Var),
    Meta(MetaField),
    HostId,
    HostLabel(String),
    FileKey(String),
    /// `file[k]` with a computed key.
    FileAt(Box<Node>),
    /// `file.exists(k, p)`, `file.all(k, p)` (`k` is [`Var::Iter`] in `p`).
    FileExists(Box<Node>),
    FileAll(Box<Node>),
    /// `has(file.K)`, `'K' in file`.
    FileHas(Box<Node>),
    /// `size(file)`.
    FileSize,
    History(HistoryFn, i64),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<[Node; 3]>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    IsNumber(Box<Node>),
    IsMasked(Box<Node>),
    ToDouble(Box<Node>),
    ToInt(Box<Node>),
    ToString(Box<Node>),
    Size(Box<Node>),
    StrTest(StrTest, Box<Node>, Box<Node>),
    Matches(Box<Node>, regex::Regex),
    InList(Box<Node>, Vec<Node>),
}

// ---------------------------------------------------------------------------------------
// Compile

/// The fast form of a checked expression, or `None` when any part of it is outside the
/// subset (then CEL runs it).
pub(crate) fn compile(e: &IdedExpr) -> Option<Node> {
    compile_in(e, None)
}

/// `iter`: the variable of the enclosing `file.exists`/`file.all`, if any (one level only).
fn compile_in(e: &IdedExpr, iter: Option<&str>) -> Option<Node> {
    let compile = |e: &IdedExpr| compile_in(e, iter);
    let b = |e: &IdedExpr| compile_in(e, iter).map(Box::new);
    Some(match &e.expr {
        Expr::Ident(name) if Some(name.as_str()) == iter => Node::Var(Var::Iter),
        Expr::Comprehension(c) if iter.is_none() => comprehension(c)?,
        Expr::Literal(l) => Node::Lit(match l {
            LiteralValue::Null => Lit::Null,
            LiteralValue::Boolean(v) => Lit::Bool(*v.inner()),
            LiteralValue::Int(v) => Lit::Int(*v.inner()),
            LiteralValue::UInt(v) => Lit::UInt(*v.inner()),
            LiteralValue::Double(v) => Lit::Double(*v.inner()),
            LiteralValue::String(v) => Lit::Str(v.inner().to_string()),
            LiteralValue::Bytes(_) => return None,
        }),
        Expr::Ident(name) => Node::Var(match name.as_str() {
            "value" => Var::Value,
            "baseline" => Var::Baseline,
            "previous" => Var::Previous,
            "key" => Var::Key,
            "path" => Var::Path,
            "metric" => Var::Metric,
            "connected" => Var::Connected,
            "last_seen" => Var::LastSeen,
            "schema_errors" => Var::SchemaErrors,
            _ => return None,
        }),
        Expr::Select(sel) if !sel.test && ident(&sel.operand).is_some_and(|n| Some(n) == iter) => return None,
        Expr::Select(sel) if !sel.test => select(&sel.operand, &sel.field)?,
        Expr::Select(sel) if ident(&sel.operand) == Some("file") => {
            Node::FileHas(Box::new(Node::Lit(Lit::Str(sel.field.clone()))))
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let args = &call.args;
            match (call.target.as_deref(), args.len()) {
                (None, 1) => match name {
                    "!_" => Node::Not(b(&args[0])?),
                    "-_" => Node::Neg(b(&args[0])?),
                    "is_number" => Node::IsNumber(b(&args[0])?),
                    "is_masked" => Node::IsMasked(b(&args[0])?),
                    "double" => Node::ToDouble(b(&args[0])?),
                    "int" => Node::ToInt(b(&args[0])?),
                    "string" => Node::ToString(b(&args[0])?),
                    "size" if ident(&args[0]) == Some("file") => Node::FileSize,
                    "size" => Node::Size(b(&args[0])?),
                    "seconds" => {
                        let ms = parse_duration_ms(string_literal(&args[0])?).ok()?;
                        Node::Lit(Lit::Double(ms as f64 / 1000.0))
                    }
                    "octal" => Node::Lit(Lit::Int(i64::from_str_radix(string_literal(&args[0])?, 8).ok()?)),
                    _ => {
                        let f = HistoryFn::parse(name)?;
                        Node::History(f, parse_duration_ms(string_literal(&args[0])?).ok()?)
                    }
                },
                (None, 2) => {
                    let (l, r) = (&args[0], &args[1]);
                    let cmp = |op| Some(Node::Cmp(op, b(l)?, b(r)?));
                    let arith = |op| Some(Node::Arith(op, b(l)?, b(r)?));
                    match name {
                        "_&&_" => Node::And(b(l)?, b(r)?),
                        "_||_" => Node::Or(b(l)?, b(r)?),
                        "_==_" => cmp(Cmp::Eq)?,
                        "_!=_" => cmp(Cmp::Ne)?,
                        "_<_" => cmp(Cmp::Lt)?,
                        "_<=_" => cmp(Cmp::Le)?,
                        "_>_" => cmp(Cmp::Gt)?,
                        "_>=_" => cmp(Cmp::Ge)?,
                        "_+_" => arith(Arith::Add)?,
                        "_-_" => arith(Arith::Sub)?,
                        "_*_" => arith(Arith::Mul)?,
                        "_/_" => arith(Arith::Div)?,
                        "_%_" => arith(Arith::Rem)?,
                        "_[_]" if ident(l) == Some("file") && string_literal(r).is_none() => Node::FileAt(b(r)?),
                        "_[_]" => index(l, r)?,
                        "matches" => Node::Matches(b(l)?, regex::Regex::new(string_literal(r)?).ok()?),
                        "@in" if ident(r) == Some("file") => Node::FileHas(b(l)?),
                        "@in" => match &r.expr {
                            Expr::List(list) if list.optional_indices.is_empty() => {
                                Node::InList(b(l)?, list.elements.iter().map(compile).collect::<Option<_>>()?)
                            }
                            _ => return None,
                        },
                        _ => return None,
                    }
                }
                (None, 3) if name == "_?_:_" => {
                    Node::Cond(Box::new([compile(&args[0])?, compile(&args[1])?, compile(&args[2])?]))
                }
                (Some(t), 0) if name == "size" && ident(t) == Some("file") => Node::FileSize,
                (Some(t), 0) if name == "size" => Node::Size(b(t)?),
                (Some(t), 1) => match name {
                    "startsWith" => Node::StrTest(StrTest::StartsWith, b(t)?, b(&args[0])?),
                    "endsWith" => Node::StrTest(StrTest::EndsWith, b(t)?, b(&args[0])?),
                    "contains" => Node::StrTest(StrTest::Contains, b(t)?, b(&args[0])?),
                    "matches" => Node::Matches(b(t)?, regex::Regex::new(string_literal(&args[0])?).ok()?),
                    _ => return None,
                },
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// `file.exists(k, p)` and `file.all(k, p)` as the parser expands them (the accumulator
/// starts false / true, folds with || / &&, and the loop stops once it is decided).
fn comprehension(c: &cel::common::ast::ComprehensionExpr) -> Option<Node> {
    let accu = c.accu_var.as_str();
    let is_accu = |e: &IdedExpr| ident(e) == Some(accu);
    // A loop variable that shadows a rule variable (`file.exists(file, ...)`) is left to CEL.
    let shadows = crate::expr::VARIABLES.contains(&c.iter_var.as_str());
    if shadows || c.iter_var2.is_some() || ident(&c.iter_range) != Some("file") || !is_accu(&c.result) {
        return None;
    }
    let Expr::Call(step) = &c.loop_step.expr else { return None };
    let Expr::Call(cond) = &c.loop_cond.expr else { return None };
    if step.target.is_some()
        || step.args.len() != 2
        || !is_accu(&step.args[0])
        || cond.func_name != "@not_strictly_false"
    {
        return None;
    }
    let cond_arg = cond.args.first()?;
    let negated_accu =
        matches!(&cond_arg.expr, Expr::Call(n) if n.func_name == "!_" && n.args.len() == 1 && is_accu(&n.args[0]));
    let pred = || compile_in(&step.args[1], Some(&c.iter_var)).map(Box::new);
    match (&c.accu_init.expr, step.func_name.as_str()) {
        (Expr::Literal(LiteralValue::Boolean(b)), "_||_") if !*b.inner() && negated_accu => {
            Some(Node::FileExists(pred()?))
        }
        (Expr::Literal(LiteralValue::Boolean(b)), "_&&_") if *b.inner() && is_accu(cond_arg) => {
            Some(Node::FileAll(pred()?))
        }
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn ident(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(n) => Some(n),
        _ => None,
    }
}

/// `meta.mode`, `host.id`, `host.labels.env`, `file.WORKERS`.
fn select(operand: &IdedExpr, field: &str) -> Option<Node> {
    match &operand.expr {
        Expr::Ident(n) if n == "meta" => Some(Node::Meta(match field {
            "mode" => MetaField::Mode,
            "dir_mode" => MetaField::DirMode,
            "uid" => MetaField::Uid,
            "gid" => MetaField::Gid,
            "size" => MetaField::Size,
            "format" => MetaField::Format,
            "exists" => MetaField::Exists,
            "parse_error" => MetaField::ParseError,
            _ => return None,
        })),
        Expr::Ident(n) if n == "host" && field == "id" => Some(Node::HostId),
        Expr::Ident(n) if n == "file" => Some(Node::FileKey(field.to_string())),
        Expr::Select(inner) if !inner.test && inner.field == "labels" && ident(&inner.operand) == Some("host") => {
            Some(Node::HostLabel(field.to_string()))
        }
        _ => None,
    }
}

/// `file['a.b']`, `host.labels['env']`.
fn index(target: &IdedExpr, at: &IdedExpr) -> Option<Node> {
    let key = string_literal(at)?;
    match &target.expr {
        Expr::Ident(n) if n == "file" => Some(Node::FileKey(key.to_string())),
        Expr::Select(sel) if !sel.test && sel.field == "labels" && ident(&sel.operand) == Some("host") => {
            Some(Node::HostLabel(key.to_string()))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Evaluate

/// The expression's result when the fast path can tell; `None`: run CEL.
pub(crate) fn eval_bool(n: &Node, s: &Scope<'_>) -> Option<bool> {
    match eval(n, s)? {
        FVal::Bool(b) => Some(b),
        _ => None,
    }
}

/// Leaves inline, the rest in [`eval_node`]: most operands are literals and variables, and a
/// call per leaf was a third of the cost.
#[inline(always)]
fn eval<'a>(n: &'a Node, s: &Scope<'a>) -> Option<FVal<'a>> {
    use FVal::{Bool, Double, Int, Str};
    Some(match n {
        Node::Lit(l) => match l {
            Lit::Null => FVal::Null,
            Lit::Bool(b) => Bool(*b),
            Lit::Int(i) => Int(*i),
            Lit::UInt(u) => FVal::UInt(*u),
            Lit::Double(d) => Double(*d),
            Lit::Str(v) => Str(v),
        },
        Node::Var(v) => match v {
            Var::Value => s.value,
            Var::Baseline => s.baseline,
            Var::Previous => s.previous,
            Var::Key => s.key.map(Str).unwrap_or(FVal::Null),
            Var::Path => Str(s.path),
            Var::Metric => Str(s.metric),
            Var::Connected => Bool(s.connected),
            Var::LastSeen => Int(s.last_seen),
            Var::SchemaErrors => FVal::List(s.schema_errors?),
            Var::Iter => s.iter,
        },
        _ => return eval_node(n, s),
    })
}

fn eval_node<'a>(n: &'a Node, s: &Scope<'a>) -> Option<FVal<'a>> {
    use FVal::{Bool, Double, Int, Str};
    Some(match n {
        Node::Lit(_) | Node::Var(_) => return eval(n, s),
        Node::Meta(f) => {
            let m = s.meta?;
            match f {
                MetaField::Mode => Int(i64::from(m.mode & 0o7777)),
                MetaField::DirMode => Int(i64::from(m.dir_mode & 0o7777)),
                MetaField::Uid => Int(i64::from(m.uid)),
                MetaField::Gid => Int(i64::from(m.gid)),
                MetaField::Size => Int(i64::try_from(m.size).unwrap_or(i64::MAX)),
                MetaField::Format => Str(&m.format),
                MetaField::Exists => Bool(m.exists),
                MetaField::ParseError => m.parse_error.as_deref().map(Str).unwrap_or(FVal::Null),
            }
        }
        Node::HostId => Str(&s.host.id),
        Node::HostLabel(l) => Str(s.host.labels.get(l)?),
        // A missing key is an error in CEL ("no such key").
        Node::FileKey(k) => FVal::of(Some(s.file?.get(k)?)),
        Node::FileAt(k) => match eval(k, s)? {
            Str(k) => FVal::of(Some(s.file?.get(k)?)),
            _ => return None,
        },
        // CEL: any true decides exists (any false decides all) whatever errors other keys give;
        // otherwise an error anywhere is the result, which CEL reports.
        Node::FileExists(p) | Node::FileAll(p) => {
            let decisive = matches!(n, Node::FileExists(_));
            let mut unknown = false;
            for k in s.file?.keys() {
                match eval(p, &Scope { iter: Str(k), ..*s }) {
                    Some(Bool(b)) if b == decisive => return Some(Bool(decisive)),
                    Some(Bool(_)) => {}
                    _ => unknown = true,
                }
            }
            if unknown {
                return None;
            }
            Bool(!decisive)
        }
        Node::FileHas(k) => match eval(k, s)? {
            Str(k) => Bool(s.file?.contains_key(k)),
            _ => return None,
        },
        Node::FileSize => Int(s.file?.len() as i64),
        Node::History(f, ms) => history(*f, *ms, s)?,
        Node::Not(a) => match eval(a, s)? {
            Bool(b) => Bool(!b),
            _ => return None,
        },
        Node::Neg(a) => match eval(a, s)? {
            Int(i) => Int(i.checked_neg()?),
            Double(d) => Double(-d),
            _ => return None,
        },
        // CEL's && and || are commutative over errors: `false && error` and `error && false`
        // are both false. So a known false (true for ||) on either side decides, even when
        // the other side is beyond the fast path.
        Node::And(a, b) => {
            let l = eval(a, s);
            if let Some(Bool(false)) = l {
                return Some(Bool(false));
            }
            match (l, eval(b, s)) {
                (_, Some(Bool(false))) => Bool(false),
                (Some(Bool(true)), Some(Bool(true))) => Bool(true),
                _ => return None,
            }
        }
        Node::Or(a, b) => {
            let l = eval(a, s);
            if let Some(Bool(true)) = l {
                return Some(Bool(true));
            }
            match (l, eval(b, s)) {
                (_, Some(Bool(true))) => Bool(true),
                (Some(Bool(false)), Some(Bool(false))) => Bool(false),
                _ => return None,
            }
        }
        Node::Cond(parts) => match eval(&parts[0], s)? {
            Bool(true) => eval(&parts[1], s)?,
            Bool(false) => eval(&parts[2], s)?,
            _ => return None,
        },
        Node::Cmp(op, a, b) => {
            let (l, r) = (eval(a, s)?, eval(b, s)?);
            Bool(match op {
                Cmp::Eq => equals(l, r)?,
                Cmp::Ne => !equals(l, r)?,
                Cmp::Lt => compare(l, r)? == Ordering::Less,
                Cmp::Le => compare(l, r)? != Ordering::Greater,
                Cmp::Gt => compare(l, r)? == Ordering::Greater,
                Cmp::Ge => compare(l, r)? != Ordering::Less,
            })
        }
        Node::Arith(op, a, b) => arith(*op, eval(a, s)?, eval(b, s)?)?,
        Node::IsNumber(a) => Bool(matches!(eval(a, s)?, Int(_) | FVal::UInt(_) | Double(_))),
        Node::IsMasked(a) => match eval(a, s)? {
            FVal::Masked(_) => Bool(true),
            FVal::List(_) => return None,
            _ => Bool(false),
        },
        Node::ToDouble(a) => match eval(a, s)? {
            Int(i) => Double(i as f64),
            FVal::UInt(u) => Double(u as f64),
            Double(d) => Double(d),
            Str(v) => Double(v.parse::<f64>().ok()?),
            _ => return None,
        },
        Node::ToInt(a) => match eval(a, s)? {
            Int(i) => Int(i),
            FVal::UInt(u) => Int(i64::try_from(u).ok()?),
            // cel-rust: (i64::MIN, i64::MAX) exclusive, truncating; NaN and infinities fail.
            Double(d) if d > i64::MIN as f64 && d < i64::MAX as f64 => Int(d as i64),
            Str(v) => Int(v.parse::<i64>().ok()?),
            _ => return None,
        },
        Node::ToString(a) => match eval(a, s)? {
            Str(v) => Str(v),
            Bool(true) => Str("true"),
            Bool(false) => Str("false"),
            _ => return None,
        },
        Node::Size(a) => match eval(a, s)? {
            Str(v) => Int(v.chars().count() as i64),
            FVal::List(l) => Int(l.len() as i64),
            _ => return None,
        },
        Node::StrTest(t, a, b) => match (eval(a, s)?, eval(b, s)?) {
            (Str(x), Str(y)) => Bool(match t {
                StrTest::StartsWith => x.starts_with(y),
                StrTest::EndsWith => x.ends_with(y),
                StrTest::Contains => x.contains(y),
            }),
            _ => return None,
        },
        Node::Matches(a, re) => match eval(a, s)? {
            Str(x) => Bool(re.is_match(x)),
            _ => return None,
        },
        Node::InList(a, items) => {
            let needle = eval(a, s)?;
            // CEL builds the whole list before looking: any element it cannot build is an error.
            let mut found = false;
            for item in items {
                found |= equals(eval(item, s)?, needle)?;
            }
            Bool(found)
        }
    })
}

#[inline(never)]
fn history<'a>(f: HistoryFn, ms: i64, s: &Scope<'a>) -> Option<FVal<'a>> {
    let (now_ms, samples) = s.history?;
    let stat = match s.memo {
        Some(memo) => memo.get_or_insert(f, ms, || history_stat(f, ms, now_ms, samples).ok()),
        None => history_stat(f, ms, now_ms, samples).ok(),
    };
    Some(match stat? {
        Stat::Double(d) => FVal::Double(d),
        Stat::Int(i) => FVal::Int(i),
    })
}

/// History results of one call: rules on a metric often share a statistic (`avg('15m')`
/// at two thresholds), and it is the same pure function of the same samples.
#[derive(Default)]
pub(crate) struct HistoryMemo {
    entries: std::cell::RefCell<([MemoEntry; 16], usize)>,
}

/// (function, window ms, result; `None` for an error).
type MemoEntry = (Option<HistoryFn>, i64, Option<Stat>);

impl HistoryMemo {
    fn get_or_insert(&self, f: HistoryFn, ms: i64, compute: impl FnOnce() -> Option<Stat>) -> Option<Stat> {
        let mut e = self.entries.borrow_mut();
        let (items, len) = &mut *e;
        if let Some((_, _, stat)) = items[..*len].iter().find(|(g, w, _)| *g == Some(f) && *w == ms) {
            return *stat;
        }
        let stat = compute();
        if *len < items.len() {
            items[*len] = (Some(f), ms, stat);
            *len += 1;
        }
        stat
    }
}

/// cel-rust's `Comparer`: numbers across int/uint/double, strings, bools; else an error
/// (`None`), as is NaN.
#[inline(always)]
fn compare(a: FVal<'_>, b: FVal<'_>) -> Option<Ordering> {
    use FVal::{Bool, Double, Int, Str, UInt};
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(&y)),
        (Int(x), UInt(y)) => Some(u64::try_from(x).map(|x| x.cmp(&y)).unwrap_or(Ordering::Less)),
        (Int(x), Double(y)) => (x as f64).partial_cmp(&y),
        (UInt(x), UInt(y)) => Some(x.cmp(&y)),
        (UInt(x), Int(y)) => Some(i64::try_from(x).map(|x| x.cmp(&y)).unwrap_or(Ordering::Greater)),
        (UInt(x), Double(y)) => (x as f64).partial_cmp(&y),
        (Double(x), Double(y)) => x.partial_cmp(&y),
        (Double(x), Int(y)) => x.partial_cmp(&(y as f64)),
        (Double(x), UInt(y)) => x.partial_cmp(&(y as f64)),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

/// cel-rust's `equals`: never an error; false across types (numbers compare by value, NaN
/// equals nothing); masked values are maps equal when fingerprint and reason are.
#[inline(always)]
fn equals(a: FVal<'_>, b: FVal<'_>) -> Option<bool> {
    use FVal::{Bool, Double, Int, Masked, Null, Str, UInt};
    Some(match (a, b) {
        (FVal::List(_), _) | (_, FVal::List(_)) => return None,
        (Null, Null) => true,
        (Masked(x), Masked(y)) => x.fingerprint == y.fingerprint && x.reason == y.reason,
        (Int(_) | UInt(_) | Double(_), Int(_) | UInt(_) | Double(_)) | (Str(_), Str(_)) | (Bool(_), Bool(_)) => {
            compare(a, b) == Some(Ordering::Equal)
        }
        _ => false,
    })
}

/// Same-type arithmetic only, as in cel-rust; integer overflow and division by zero are errors.
#[inline(always)]
fn arith<'a>(op: Arith, a: FVal<'a>, b: FVal<'a>) -> Option<FVal<'a>> {
    use FVal::{Double, Int};
    Some(match (a, b) {
        (Int(x), Int(y)) => Int(match op {
            Arith::Add => x.checked_add(y)?,
            Arith::Sub => x.checked_sub(y)?,
            Arith::Mul => x.checked_mul(y)?,
            Arith::Div => x.checked_div(y)?,
            Arith::Rem => x.checked_rem(y)?,
        }),
        (Double(x), Double(y)) => Double(match op {
            Arith::Add => x + y,
            Arith::Sub => x - y,
            Arith::Mul => x * y,
            Arith::Div => x / y,
            Arith::Rem => return None,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
