//! Evaluating a fast-path [`Node`] tree over a borrowed [`Scope`], with cel-rust 0.15's
//! semantics operation by operation; `None` wherever CEL must answer instead.

use std::cmp::Ordering;

use super::node::{Arith, Cmp, Lit, MetaField, Node, StrTest, Var};
use crate::history::{HistoryFn, Stat, history_stat};
use crate::scope::{FVal, Scope};

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
pub(super) fn eval<'a>(n: &'a Node, s: &Scope<'a>) -> Option<FVal<'a>> {
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
