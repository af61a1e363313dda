//! Compiling the fast path's subset from the checked CEL AST into a [`Node`] tree, once at
//! load: literal regexes, `seconds`/`octal` of a literal and history windows are resolved
//! here so evaluation does none of it.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};
use driftwatch_proto::duration::parse_ms as parse_duration_ms;

use super::node::{Arith, Cmp, Lit, MetaField, Node, StrTest, Var};
use crate::history::HistoryFn;
use crate::scope::VARIABLES;

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
    let shadows = VARIABLES.contains(&c.iter_var.as_str());
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
