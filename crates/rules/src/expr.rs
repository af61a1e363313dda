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
//!
//! Compiling checks the expression (`check`) and builds its fast form (`fast`); running it
//! binds the history of one evaluation for the history functions.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{Context, ExecutionError, FunctionContext, Program};
use driftwatch_proto::duration::parse_ms as parse_duration_ms;

use crate::check::{self, ExprError, ExprKind};
use crate::history::{HistoryFn, Stat, history_stat};

/// A compiled, checked expression.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub program: Program,
    /// The variables the expression reads (bits over [`VARIABLES`](crate::scope::VARIABLES)):
    /// only these are built for CEL (turning the file into a CEL map is the expensive part
    /// of an evaluation).
    pub uses: u16,
    /// Whether it calls a history function (CEL then needs the history in scope).
    pub history: bool,
    /// The longest window its history functions are given as a literal (ms, 0 when none).
    pub window_ms: i64,
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
    let checked = check::check(&program, source, kind)?;
    let fast = crate::fast::compile(program.expression());
    Ok(Compiled { program, uses: checked.uses, history: checked.history, window_ms: checked.window_ms, fast })
}

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
