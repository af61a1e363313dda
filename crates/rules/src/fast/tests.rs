//! The fast path against CEL: wherever the fast path answers, CEL gives the same answer.

use std::collections::BTreeMap;

use driftwatch_proto::v1::Value;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::exec::{eval, eval_bool};
use crate::check::ExprKind;
use crate::eval::{CelCache, run_cel, run_cel_value};
use crate::expr::{Compiled, compile};
use crate::history::HistoryMemo;
use crate::input::{FileMeta, HostInfo};
use crate::scope::{FVal, Scope};

fn host() -> HostInfo {
    HostInfo { id: "h1".into(), labels: [("env".to_string(), "production".to_string())].into() }
}

/// Inputs of one evaluation, owned; [`Inputs::scope`] borrows them as rules see them.
#[derive(Debug, Clone)]
struct Inputs {
    value: Value,
    baseline: Value,
    previous: Value,
    key: Option<String>,
    file: BTreeMap<String, Value>,
    meta: FileMeta,
    samples: Vec<(i64, f64)>,
}

impl Inputs {
    fn scope<'a>(&'a self, host: &'a HostInfo, kind: ExprKind) -> Scope<'a> {
        let mut s = Scope::new(host);
        match kind {
            ExprKind::Resource => {
                let num = |v: &Value| match v.kind {
                    Some(driftwatch_proto::v1::value::Kind::FloatValue(f)) => FVal::Double(f),
                    _ => FVal::Null,
                };
                s.value = FVal::Double(self.samples.last().map(|p| p.1).unwrap_or(0.0));
                s.baseline = num(&self.baseline);
                s.previous = num(&self.previous);
                s.metric = "cpu_percent";
                s.history = Some((self.samples.last().map(|p| p.0).unwrap_or(0), &self.samples));
            }
            _ => {
                s.value = FVal::of(Some(&self.value));
                s.baseline = FVal::of(Some(&self.baseline));
                s.previous = FVal::of(Some(&self.previous));
                s.key = self.key.as_deref();
                s.path = "/etc/app/.env";
                s.file = Some(&self.file);
                s.meta = Some(&self.meta);
            }
        }
        s
    }
}

/// Values of every kind a key can hold, with the edges of CEL's numeric comparisons.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::null()),
        any::<bool>().prop_map(Value::bool),
        prop::sample::select(vec![0i64, 1, -1, 5, 20, 600, i64::MAX, i64::MIN, (1 << 53) + 1]).prop_map(Value::int),
        any::<i64>().prop_map(Value::int),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.5,
            5.0,
            20.0,
            20.5,
            1e300,
            -1e300,
            9007199254740993.0,
            9.3e18,
            -9.3e18,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ])
        .prop_map(Value::float),
        any::<f64>().prop_map(Value::float),
        prop::sample::select(vec!["", "a", "5", "-7", "1.5", "1e3", "info", "debug", "http://x/", "DEBUG_X", "é✓"])
            .prop_map(Value::string),
        prop::sample::select(vec![("ab", "key name"), ("cd", "token shape")]).prop_map(|(f, r)| Value::masked(f, r)),
    ]
}

fn inputs() -> impl Strategy<Value = Inputs> {
    let file = prop::collection::btree_map(
        prop::sample::select(vec!["K1", "K2", "DEBUG_X", "A.B", "list[0]"]).prop_map(str::to_string),
        value(),
        0..5,
    );
    // 0 (unknown) and the usual modes often; the type bits must not show through.
    let dir_mode = prop_oneof![Just(0u32), Just(0o040700), Just(0o040755), (0u32..0o10000).prop_map(|m| 0o040000 | m)];
    let meta = (0u32..0o10000, dir_mode, 0u32..3, any::<bool>(), prop::option::of(Just("bad".to_string()))).prop_map(
        |(mode, dir_mode, uid, exists, parse_error)| FileMeta {
            mode: 0o100000 | mode,
            dir_mode,
            uid,
            gid: uid,
            size: 1234,
            format: "env".into(),
            exists,
            parse_error,
        },
    );
    let samples = prop::collection::vec(prop::sample::select(vec![0.0, 1.0, 2.5, 50.0, 99.0, f64::NAN]), 0..8)
        .prop_map(|vs| vs.into_iter().enumerate().map(|(i, v)| (i as i64 * 60_000, v)).collect::<Vec<_>>());
    (value(), value(), value(), prop::option::of(Just("K1".to_string())), file, meta, samples).prop_map(
        |(value, baseline, previous, key, file, meta, samples)| Inputs {
            value,
            baseline,
            previous,
            key,
            file,
            meta,
            samples,
        },
    )
}

/// Operands: variables, field lookups, literals, conversions and arithmetic.
fn operand(kind: ExprKind) -> BoxedStrategy<String> {
    let mut leaves = vec![
        "value",
        "baseline",
        "previous",
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "5",
        "20",
        "9223372036854775807",
        "-9223372036854775808",
        "5u",
        "0u",
        "18446744073709551615u",
        "0.0",
        "-0.0",
        "0.5",
        "20.0",
        "1e300",
        "'a'",
        "''",
        "'5'",
        "'1.5'",
        "'info'",
        "seconds('5m')",
        "octal('644')",
        "host.id",
        "host.labels.env",
        "host.labels['env']",
        "host.labels.missing",
    ];
    if kind == ExprKind::Resource {
        leaves.extend([
            "metric",
            "avg('1h')",
            "avg('2m')",
            "min_over('1h')",
            "max_over('5m')",
            "rate('1h')",
            "rate('1m')",
            "trend('1h')",
            "zscore('1h')",
            "samples('1h')",
            "samples('1m')",
        ]);
    } else {
        leaves.extend([
            "key",
            "path",
            "meta.mode",
            "meta.dir_mode",
            "meta.uid",
            "meta.size",
            "meta.format",
            "meta.exists",
            "meta.parse_error",
            "file.K1",
            "file['K2']",
            "file['A.B']",
            "file.MISSING",
            "size(file)",
            "file.size()",
        ]);
    }
    // Variables and numbers most of the time: random pairs of anything are mostly type
    // errors, which say little about agreement.
    let vars = if kind == ExprKind::Resource {
        vec!["value", "previous", "baseline", "avg('1h')", "samples('1h')"]
    } else {
        vec!["value", "baseline", "previous", "file.K1", "file['DEBUG_X']", "key"]
    };
    let numbers = vec!["0", "1", "5", "20", "-1", "5u", "0.5", "20.0", "-0.0", "1e300", "9223372036854775807"];
    let leaf = prop_oneof![
        3 => prop::sample::select(vars),
        2 => prop::sample::select(numbers),
        2 => prop::sample::select(leaves),
    ]
    .prop_map(str::to_string);
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            prop::sample::select(vec!["double", "int", "string", "size", "-"]).prop_flat_map({
                let inner = inner.clone();
                move |f| inner.clone().prop_map(move |a| format!("{f}({a})"))
            }),
            (inner.clone(), prop::sample::select(vec!["+", "-", "*", "/", "%"]), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("{a}.size()")),
        ]
    })
    .boxed()
}

/// Whole expressions, mostly boolean (a few are not: "not a bool" must stay CEL's answer).
fn expression(kind: ExprKind) -> BoxedStrategy<String> {
    let a = operand(kind);
    let cmp = (a.clone(), prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]), a.clone())
        .prop_map(|(l, op, r)| format!("{l} {op} {r}"));
    let mut atoms: Vec<BoxedStrategy<String>> = vec![
        cmp.boxed(),
        a.clone().prop_map(|x| format!("is_number({x})")).boxed(),
        a.clone().prop_map(|x| format!("is_masked({x})")).boxed(),
        (a.clone(), a.clone(), a.clone()).prop_map(|(x, y, z)| format!("{x} in [{y}, {z}]")).boxed(),
        (a.clone(), a.clone(), prop::sample::select(vec!["startsWith", "endsWith", "contains"]))
            .prop_map(|(x, y, f)| format!("{x}.{f}({y})"))
            .boxed(),
        (a.clone(), prop::sample::select(vec!["'^a'", "'b$'", "'[0-9]'", "''"]))
            .prop_map(|(x, re)| format!("{x}.matches({re})"))
            .boxed(),
        (a.clone(), prop::sample::select(vec!["'^i'", "'5'"]))
            .prop_map(|(x, re)| format!("matches({x}, {re})"))
            .boxed(),
        a.clone(),
        Just("true".to_string()).boxed(),
    ];
    if kind != ExprKind::Resource {
        atoms.extend([prop::sample::select(vec![
            "'K1' in file",
            "has(file.K1)",
            "has(file.MISSING)",
            "file.exists(k, k.startsWith('K'))",
            "file.exists(k, file[k] > 1)",
            "file.all(k, file[k] != null)",
            "file.all(k, is_number(file[k]) && file[k] > 0)",
            "file.exists(k, k == key)",
            "file.exists(value, value == 'K1')",
            "file.exists_one(k, k == 'K1')",
            "size(file) > 2",
        ])
        .prop_map(str::to_string)
        .boxed()]);
    }
    let atom = prop::strategy::Union::new_weighted(
        atoms.into_iter().enumerate().map(|(i, a)| (if i == 0 { 6 } else { 1 }, a)).collect(),
    );
    atom.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l} && {r})")),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l} || {r})")),
            inner.clone().prop_map(|x| format!("!({x})")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, t, e)| format!("({c} ? {t} : {e})")),
        ]
    })
    .boxed()
}

/// Fast path vs CEL on one compiled expression and inputs: (fast answered, CEL's answer).
fn both(c: &Compiled, inputs: &Inputs, kind: ExprKind) -> (Option<bool>, Result<bool, String>) {
    let host = host();
    let memo = HistoryMemo::default();
    let mut scope = inputs.scope(&host, kind);
    let (file, meta) = (scope.file, scope.meta);
    let cache = CelCache::new(&host, file, meta);
    let cel = run_cel(c, &scope, &cache);
    // Through the memo, twice: a memoised statistic must be the same as a computed one.
    scope.memo = Some(&memo);
    let fast = c.fast.as_ref().and_then(|n| eval_bool(n, &scope));
    let again = c.fast.as_ref().and_then(|n| eval_bool(n, &scope));
    assert_eq!(fast, again);
    (fast, cel)
}

fn check(source: &str, kind: ExprKind, cases: &[Inputs]) -> Result<(), TestCaseError> {
    // Expressions the load-time checker refuses (`'a' > 1`) never run.
    let Ok(c) = compile(source, kind) else { return Ok(()) };
    for inputs in cases {
        let (fast, cel) = both(&c, inputs, kind);
        if let Some(b) = fast {
            prop_assert_eq!(Ok(b), cel.clone(), "{} on {:?}", source, inputs);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_agrees_with_cel_on_file_rules(
        source in expression(ExprKind::File),
        cases in prop::collection::vec(inputs(), 8),
    ) {
        check(&source, ExprKind::File, &cases)?;
    }

    #[test]
    fn fast_path_agrees_with_cel_on_resource_rules(
        source in expression(ExprKind::Resource),
        cases in prop::collection::vec(inputs(), 8),
    ) {
        check(&source, ExprKind::Resource, &cases)?;
    }
}

/// The common rule shapes take the fast path whenever CEL has a boolean answer: the
/// agreement above is not vacuous, and these rules do not pay for CEL.
#[test]
fn common_shapes_always_take_the_fast_path() {
    let file_shapes = [
        "value > 20",
        "value >= 30000",
        "value != null",
        "value == null",
        "value == 'info'",
        "value != 'strict'",
        "value == true",
        "value != baseline",
        "value != previous",
        "is_number(value) && double(value) > 20.5",
        "is_number(value) && is_number(baseline) && double(value) > double(baseline) * 1.5",
        "baseline != null && value != baseline",
        "value in ['debug', 'trace']",
        "is_masked(value)",
        "!is_masked(value)",
        "value.startsWith('http://')",
        "value.matches('^https://')",
        "meta.mode != octal('600')",
        "meta.exists && meta.dir_mode != 0 && meta.dir_mode != octal('700')",
        "meta.exists && meta.parse_error == null",
        "int(file['K1']) > 0",
        "'K1' in file",
        "size(file) > 200",
        "file.exists(k, k.startsWith('DEBUG'))",
        "host.labels.env == 'production'",
    ];
    let resource_shapes =
        ["value > 90.0", "avg('5m') > 80.0", "previous != null && value - previous > 1e8", "samples('1h') < 300"];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let cases: Vec<Inputs> = (0..400).map(|_| inputs().new_tree(&mut runner).unwrap().current()).collect();
    for (shapes, kind) in [(&file_shapes[..], ExprKind::File), (&resource_shapes[..], ExprKind::Resource)] {
        for source in shapes {
            let c = compile(source, kind).unwrap_or_else(|e| panic!("{source}: {e:?}"));
            assert!(c.fast.is_some(), "{source} is not compiled for the fast path");
            for inputs in &cases {
                let (fast, cel) = both(&c, inputs, kind);
                match cel {
                    Ok(b) => assert_eq!(fast, Some(b), "{source} on {inputs:?}"),
                    Err(_) => assert_eq!(fast, None, "{source} on {inputs:?}"),
                }
            }
        }
    }
}

/// Values every operand can take in the grid below: each kind, and the edges of numeric
/// comparison (precision at 2^53, i64 bounds, NaN, infinities, -0.0), non-ASCII text.
fn grid_values() -> Vec<Value> {
    let mut v = vec![Value::null(), Value::bool(true), Value::bool(false)];
    v.extend([0, 1, -1, 3, 20, (1 << 53) + 1, i64::MAX, i64::MIN].map(Value::int));
    v.extend(
        [0.0, -0.0, 0.5, 3.0, 20.0, 2.5e-8, 9007199254740993.0, 9.223_372_036_854_776e18, f64::NAN, f64::INFINITY]
            .map(Value::float),
    );
    v.extend(["", "a", "3", "-1", "0.5", "info", "é✓x", "http://a/"].map(Value::string));
    v.extend([Value::masked("ab", "key name"), Value::masked("cd", "key name"), Value::masked("ab", "token shape")]);
    v
}

/// Literals on the other side: each kind, unsigned included (`5u`; no input holds one).
const GRID_LITERALS: [&str; 16] = [
    "null",
    "true",
    "0",
    "3",
    "-1",
    "9223372036854775807",
    "3u",
    "0u",
    "18446744073709551615u",
    "0.0",
    "3.0",
    "-0.0",
    "1e300",
    "'3'",
    "'a'",
    "''",
];

/// Whether the fast path's value is CEL's (NaN equals NaN here: same value, same bits).
fn same(fast: FVal<'_>, cel: &cel::Value) -> bool {
    match (fast, cel) {
        (FVal::Null, cel::Value::Null) => true,
        (FVal::Bool(a), cel::Value::Bool(b)) => a == *b,
        (FVal::Int(a), cel::Value::Int(b)) => a == *b,
        (FVal::UInt(a), cel::Value::UInt(b)) => a == *b,
        (FVal::Double(a), cel::Value::Float(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
        (FVal::Str(a), cel::Value::String(b)) => a == b.as_str(),
        _ => false,
    }
}

/// Every operator and function of the fast path on every pair of grid values: where the fast
/// path gives a value, CEL gives the same value; where CEL fails, the fast path gives none.
#[test]
fn every_operation_agrees_with_cel_on_a_grid_of_values() {
    let host = host();
    let values = grid_values();
    let binary = ["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in"];
    let mut sources: Vec<String> = Vec::new();
    for op in binary {
        let rhs = |r: &str| if op == "in" { format!("[{r}, 'x']") } else { r.to_string() };
        sources.push(format!("value {op} {}", rhs("baseline")));
        for lit in GRID_LITERALS {
            sources.push(format!("value {op} {}", rhs(lit)));
            sources.push(format!("{lit} {op} {}", rhs("value")));
        }
    }
    for f in ["double", "int", "string", "size", "-", "!", "is_number", "is_masked"] {
        sources.push(format!("{f}(value)"));
        sources.extend(GRID_LITERALS.map(|lit| format!("{f}({lit})")));
    }
    sources.push("value.size()".to_string());
    sources.push("value ? 1 : 2".to_string());
    for f in ["startsWith", "endsWith", "contains"] {
        sources.push(format!("value.{f}(baseline)"));
    }
    sources.push("value.matches('^[a-z]')".to_string());
    sources.push("matches(value, '✓')".to_string());
    for op in ["&&", "||"] {
        sources.push(format!("value {op} baseline"));
        sources.push(format!("(value > 1) {op} (baseline > 1)"));
    }
    let (mut compared, mut answered) = (0, 0);
    for source in &sources {
        let c = match compile(source, ExprKind::File) {
            Ok(c) => c,
            Err(_) => continue, // refused at load (`'a' > 1`): never evaluated
        };
        let node = c.fast.as_ref().unwrap_or_else(|| panic!("{source}: not on the fast path"));
        for a in &values {
            for b in &values {
                let inputs = Inputs {
                    value: a.clone(),
                    baseline: b.clone(),
                    previous: Value::null(),
                    key: None,
                    file: BTreeMap::new(),
                    meta: FileMeta::default(),
                    samples: Vec::new(),
                };
                let scope = inputs.scope(&host, ExprKind::File);
                let cache = CelCache::new(&host, scope.file, scope.meta);
                let cel = run_cel_value(&c, &scope, &cache);
                let fast = eval(node, &scope);
                compared += 1;
                match (fast, &cel) {
                    (Some(f), Ok(v)) => {
                        answered += 1;
                        assert!(same(f, v), "{source} with value={a:?} baseline={b:?}: fast {f:?}, CEL {v:?}");
                    }
                    (Some(f), Err(e)) => panic!("{source} with value={a:?} baseline={b:?}: fast {f:?}, CEL error {e}"),
                    (None, _) => {}
                }
            }
        }
    }
    // Not vacuous: most well-typed cases are answered.
    assert!(answered * 4 > compared, "{answered} of {compared}");
}
