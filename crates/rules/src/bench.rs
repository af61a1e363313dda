//! Evaluation cost: realistic rule sets, timings and allocation counts.
//!
//! The timings are ignored tests that print their figures:
//! `cargo test -p driftwatch-rules --release -- --ignored --nocapture`. The allocation test
//! runs with the unit suite.
//!
//! The rule sets are meant to look like a fleet's, not to be fast: the file rules cover
//! several files (most of them match the evaluated one), exact keys that are present and
//! absent, selectors that match and that do not, wildcard patterns (one over every key), whole
//! file rules on `meta`, across keys and over all keys (a comprehension). The resource rules
//! spread over eight metrics and use every history function over 5 m to 1 h windows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use driftwatch_proto::v1::Value;

use crate::{FileInput, FileMeta, HostInfo, Outcome, ResourceInput, RuleSet};

// ------------------------------------------------------------------ allocation counting

/// Counts allocations per thread, so tests running in parallel do not disturb each other.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every call to `System`; the counter is a const-initialized thread-local
// without destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

// ------------------------------------------------------------------ fixtures

/// Key families of the evaluated `.env` file: (name prefix, value for instance `i`).
const FAMILIES: [&str; 10] = [
    "POOL_SIZE",
    "TIMEOUT_MS",
    "LOG_LEVEL",
    "API_URL",
    "FEATURE_FLAG",
    "RATE_LIMIT",
    "CACHE_TTL",
    "DB_PASSWORD",
    "RATIO",
    "MODE",
];

fn family_value(family: usize, i: usize, drift: bool) -> Value {
    let n = i as i64 + if drift { 3 } else { 0 };
    match FAMILIES[family] {
        "POOL_SIZE" => Value::int(8 + n),
        "TIMEOUT_MS" => Value::int(1_000 * (n + 1)),
        "LOG_LEVEL" => Value::string(if drift && i == 2 { "debug" } else { "info" }),
        "API_URL" => Value::string(format!("https://api-{i}.internal:8443/v1")),
        "FEATURE_FLAG" => Value::bool(drift == i.is_multiple_of(2)),
        "RATE_LIMIT" => Value::int(100 * (n + 1)),
        "CACHE_TTL" => Value::int(300 + n),
        "DB_PASSWORD" => Value::masked(format!("{:064x}", i + usize::from(drift)), "key name"),
        "RATIO" => Value::float(0.5 + n as f64 / 100.0),
        _ => Value::string(if drift { "lenient" } else { "strict" }),
    }
}

/// 50 keys (`FAMILY_i`, five of each family); `drift` changes some values (the current file
/// against its baseline).
fn env_keys(drift: bool) -> BTreeMap<String, Value> {
    (0..50).map(|k| (format!("{}_{}", FAMILIES[k % 10], k / 10), family_value(k % 10, k / 10, drift))).collect()
}

/// Exact-key expressions by family, rotated by `j`.
fn key_expr(family: usize, j: usize) -> &'static str {
    let options: &[&str] = match FAMILIES[family] {
        "POOL_SIZE" | "CACHE_TTL" => &[
            "value > 12",
            "is_number(value) && double(value) > 20.5",
            "value != null && value < 4",
            "is_number(value) && is_number(baseline) && double(value) > double(baseline) * 1.5",
        ],
        "TIMEOUT_MS" | "RATE_LIMIT" => &["value >= 30000", "value == null", "value != baseline"],
        "LOG_LEVEL" => &["value in ['debug', 'trace']", "value != 'info'"],
        "API_URL" => &[
            "value != null && string(value).startsWith('http://')",
            "value != null && !string(value).matches('^https://[a-z0-9.-]+(:[0-9]+)?/')",
        ],
        "FEATURE_FLAG" => &["value == true", "value != previous"],
        "DB_PASSWORD" => &["!is_masked(value)", "value == null"],
        "RATIO" => &["is_number(value) && double(value) > 0.9"],
        _ => &["value != null && value != 'strict'"],
    };
    options[j % options.len()]
}

fn rule(out: &mut String, name: &str, selector: Option<&str>, target: &str, expr: &str) {
    out.push_str(&format!("      - name: {name}\n"));
    if let Some(s) = selector {
        out.push_str(&format!("        selector: {s}\n"));
    }
    out.push_str(&format!("        target: {target}\n        expr: \"{expr}\"\n"));
}

/// 200 file rules, of which 160 apply to `/etc/web2img/.env.production` on a production host.
pub(crate) fn file_rules_text() -> String {
    let mut t = String::from("groups:\n  - name: files\n    rules:\n");
    let globs = ["\"**/.env*\"", "\"/etc/web2img/**\"", "\"*.production\""];
    // 128 exact-key rules over 70 keys: 50 present in the file, 20 absent (required/forbidden).
    for j in 0..128 {
        let k = j % 70;
        let key = format!("{}_{}", FAMILIES[k % 10], k / 10);
        let target = format!("{{file: {}, key: {key}}}", globs[j % 3]);
        let expr = match k {
            0..50 => key_expr(k % 10, j / 70 + k),
            _ if j % 2 == 0 => "value == null",
            _ => "value != null",
        };
        rule(&mut t, &format!("key-{j}"), None, &target, expr);
    }
    // 30 rules on other files.
    for j in 0..30 {
        let glob = ["\"**/sync-config.yaml\"", "\"*.toml\"", "\"/etc/nginx/**\""][j % 3];
        rule(&mut t, &format!("other-{j}"), None, &format!("{{file: {glob}, key: K{j}}}"), "value > 1");
    }
    // 20 selector rules: half for this host's environment.
    for j in 0..20 {
        let env = if j % 2 == 0 { "production" } else { "staging" };
        let key = format!("{}_{}", FAMILIES[j % 10], j % 5);
        let target = format!("{{file: \"**/.env*\", key: {key}}}");
        rule(&mut t, &format!("sel-{j}"), Some(&format!("{{env: {env}}}")), &target, key_expr(j % 10, j));
    }
    // 12 wildcard rules; the first runs on every key of the file and of the baseline.
    let wildcards = [
        ("*", "baseline != null && value != baseline"),
        ("POOL_SIZE_*", "is_number(value) && double(value) > 64.0"),
        ("TIMEOUT_MS_*", "is_number(value) && (double(value) < 100.0 || double(value) > 60000.0)"),
        ("API_URL_*", "value != null && string(value).matches('^http://')"),
        ("LOG_LEVEL_*", "value in ['debug', 'trace']"),
        ("FEATURE_FLAG_*", "value != previous"),
        ("RATE_LIMIT_*", "is_number(value) && is_number(baseline) && double(value) > double(baseline) * 2.0"),
        ("CACHE_*", "value == 0"),
        ("DB_PASSWORD_*", "!is_masked(value)"),
        ("RATIO_*", "is_number(value) && (double(value) < 0.0 || double(value) > 1.0)"),
        ("MODE_*", "value != 'strict'"),
        ("*_4", "value == null"),
    ];
    for (j, (pattern, expr)) in wildcards.iter().enumerate() {
        rule(&mut t, &format!("wild-{j}"), None, &format!("{{file: \"**/.env*\", key: \"{pattern}\"}}"), expr);
    }
    // 10 whole-file rules: metadata, cross-key checks, the size of the file, a comprehension.
    let whole = [
        "meta.mode != octal('600')",
        "meta.uid != 0",
        "!meta.exists",
        "meta.parse_error != null",
        "meta.size > 1048576",
        "int(file.POOL_SIZE_0) > int(file['POOL_SIZE_1'])",
        "file['LOG_LEVEL_2'] == 'debug' && host.labels.env == 'production'",
        "is_number(file.TIMEOUT_MS_0) && file.TIMEOUT_MS_0 > file.TIMEOUT_MS_1",
        "file.exists(k, k.startsWith('DEBUG'))",
        "size(file) > 200",
    ];
    for (j, expr) in whole.iter().enumerate() {
        rule(&mut t, &format!("whole-{j}"), None, "{file: \"**/.env*\"}", expr);
    }
    t
}

/// Resource metrics of the benchmark host and their rules (50 in all).
pub(crate) const RESOURCE_RULES: &[(&str, &[&str])] = &[
    (
        "cpu_percent",
        &[
            "value > 90.0",
            "avg('5m') > 80.0",
            "avg('15m') > 70.0 && value > 75.0",
            "max_over('1h') > 99.0",
            "zscore('1h') > 3.0",
            "samples('5m') < 5",
            "min_over('15m') > 50.0",
            "trend('15m') > 0.05",
        ],
    ),
    (
        "memory_used_bytes",
        &[
            "value > 6442450944.0",
            "trend('1h') > 1048576.0",
            "avg('15m') > 5e9",
            "rate('5m') > 1e6",
            "baseline != null && value > baseline * 1.5",
            "zscore('1h') > 3.0",
            "max_over('1h') - min_over('1h') > 1e9",
            "previous != null && value - previous > 1e8",
        ],
    ),
    (
        "cpu_cores_used",
        &["value > 3.5", "avg('15m') > 3.0", "zscore('1h') > 4.0", "max_over('5m') > 3.9", "trend('1h') > 0.001"],
    ),
    (
        "load_1",
        &["value > 8.0", "avg('5m') > 6.0", "min_over('15m') > 4.0", "zscore('15m') > 3.0", "rate('15m') > 0.01"],
    ),
    (
        "disk./.used_percent",
        &[
            "value > 90.0",
            "trend('1h') * 3600.0 > 5.0",
            "rate('1h') > 0.001",
            "max_over('1h') > 95.0",
            "avg('1h') > 85.0",
        ],
    ),
    (
        "disk_used_percent",
        &["value > 90.0", "trend('1h') * 86400.0 > 10.0", "samples('1h') < 300", "avg('15m') > 80.0"],
    ),
    (
        "process_group.web2img.rss_bytes",
        &[
            "value > 2147483648.0",
            "trend('1h') > 524288.0",
            "zscore('1h') > 3.0",
            "avg('5m') > 1.5 * avg('1h')",
            "max_over('15m') > 3e9",
            "previous != null && value > previous * 2.0",
        ],
    ),
    (
        "process_group.web2img.count",
        &[
            "value < 1.0",
            "previous != null && value != previous",
            "min_over('5m') < 1.0",
            "max_over('1h') > 64.0",
            "samples('15m') < 80",
            "avg('15m') < 2.0",
            "value < 4.0",
            "max_over('5m') - min_over('5m') > 8.0",
            "zscore('1h') > 3.0",
        ],
    ),
];

pub(crate) fn resource_rules_text() -> String {
    let mut t = String::from("groups:\n  - name: resources\n    rules:\n");
    let mut n = 0;
    for (metric, exprs) in RESOURCE_RULES {
        for expr in *exprs {
            // Every seventh rule is for staging hosts only.
            let selector = (n % 7 == 6).then_some("{env: staging}");
            rule(&mut t, &format!("res-{n}"), selector, &format!("{{resource: \"{metric}\"}}"), expr);
            n += 1;
        }
    }
    t
}

pub(crate) fn bench_host() -> HostInfo {
    HostInfo {
        id: "web2img-production-1".into(),
        labels: [("env".to_string(), "production".to_string()), ("service".to_string(), "web2img".to_string())].into(),
    }
}

/// One hour of 10 s samples per metric, ending at `now_ms`.
pub(crate) fn histories(now_ms: i64) -> Vec<(&'static str, Vec<(i64, f64)>)> {
    RESOURCE_RULES
        .iter()
        .enumerate()
        .map(|(m, (metric, _))| {
            let scale = [50.0, 4e9, 2.0, 3.0, 70.0, 70.0, 1e9, 8.0][m];
            let samples = (0..360)
                .map(|i| {
                    let t = now_ms - (359 - i) * 10_000;
                    let x = i as f64;
                    (t, scale * (1.0 + 0.1 * (x / 17.0).sin() + 0.0005 * x + 0.02 * ((x * 7.3).sin())))
                })
                .collect();
            (*metric, samples)
        })
        .collect()
}

struct FileFixture {
    rules: RuleSet,
    host: HostInfo,
    keys: BTreeMap<String, Value>,
    baseline: BTreeMap<String, Value>,
    meta: FileMeta,
}

impl FileFixture {
    fn new() -> Self {
        let rules = RuleSet::from_text(Path::new("bench.yaml"), &file_rules_text()).expect("benchmark rules load");
        let mut baseline = env_keys(false);
        baseline.insert("REMOVED_SETTING".into(), Value::int(1));
        baseline.insert("OLD_FLAG".into(), Value::bool(true));
        let meta = FileMeta {
            mode: 0o100600,
            uid: 1000,
            gid: 1000,
            size: 1800,
            format: "env".into(),
            exists: true,
            ..Default::default()
        };
        Self { rules, host: bench_host(), keys: env_keys(true), baseline, meta }
    }

    fn input(&self) -> FileInput<'_> {
        FileInput {
            path: "/etc/web2img/.env.production",
            keys: &self.keys,
            meta: &self.meta,
            baseline: Some(&self.baseline),
            previous: Some(&self.baseline),
        }
    }

    fn eval(&self) -> Vec<Outcome> {
        self.rules.evaluate_file(&self.host, &self.input())
    }

    /// The borrowing form: (outcomes, matched).
    fn visit(&self) -> (usize, usize) {
        let (mut n, mut matched) = (0, 0);
        self.rules.evaluate_file_with(&self.host, &self.input(), |o| {
            n += 1;
            matched += usize::from(o.matched);
        });
        (n, matched)
    }
}

struct ResourceFixture {
    rules: RuleSet,
    host: HostInfo,
    histories: Vec<(&'static str, Vec<(i64, f64)>)>,
    now_ms: i64,
}

impl ResourceFixture {
    fn new() -> Self {
        let rules = RuleSet::from_text(Path::new("bench.yaml"), &resource_rules_text()).expect("benchmark rules load");
        let now_ms = 1_800_000_000_000;
        Self { rules, host: bench_host(), histories: histories(now_ms), now_ms }
    }

    /// One sample: every metric of the host, each with its hour of history.
    fn eval(&self) -> usize {
        let mut n = 0;
        for (metric, samples) in &self.histories {
            let baseline = (*metric == "memory_used_bytes").then_some(4e9);
            let input = ResourceInput { metric, samples, baseline, now_ms: self.now_ms };
            n += self.rules.evaluate_resource(&self.host, &input).len();
        }
        n
    }

    fn visit(&self) -> usize {
        let mut n = 0;
        for (metric, samples) in &self.histories {
            let baseline = (*metric == "memory_used_bytes").then_some(4e9);
            let input = ResourceInput { metric, samples, baseline, now_ms: self.now_ms };
            self.rules.evaluate_resource_with(&self.host, &input, |_| n += 1);
        }
        n
    }
}

#[test]
fn benchmark_rule_sets_are_what_they_claim() {
    let f = FileFixture::new();
    assert_eq!(f.rules.len(), 200);
    let out = f.eval();
    assert!(out.len() > 250, "{}", out.len());
    let errors: Vec<_> = out.iter().filter(|o| o.error.is_some()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(out.iter().filter(|o| o.matched).count() > 20);
    assert_eq!(f.visit(), (out.len(), out.iter().filter(|o| o.matched).count()));
    let r = ResourceFixture::new();
    assert_eq!(r.rules.len(), 50);
    assert_eq!(r.eval(), 50 - 50 / 7);
    assert_eq!(r.visit(), r.eval());
}

/// Memory does not grow with use: after warm-up, every evaluation of the same input makes
/// the same number of allocations; the borrowing forms make none per outcome.
#[test]
fn allocations_per_evaluation_stay_constant() {
    let f = FileFixture::new();
    let r = ResourceFixture::new();
    let round = || {
        [
            allocations(|| f.eval()).0,
            allocations(|| f.visit()).0,
            allocations(|| r.eval()).0,
            allocations(|| r.visit()).0,
        ]
    };
    for _ in 0..3 {
        round();
    }
    let first = round();
    for _ in 0..200 {
        round();
    }
    assert_eq!(first, round());
    // Per call, not per outcome: the key table and the glob memo; nothing for resources.
    assert!(first[1] < 16, "{first:?}");
    assert_eq!(first[3], 0, "{first:?}");
}

/// Median of `runs` timings of `n` calls each, in µs per call.
fn time_per_call(runs: usize, n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

#[test]
#[ignore = "benchmark: prints timings (cargo test -p driftwatch-rules --release -- --ignored --nocapture)"]
fn evaluation_cost() {
    let f = FileFixture::new();
    let outcomes = f.eval().len();
    let file_vec = time_per_call(11, 300, || {
        std::hint::black_box(f.eval());
    });
    let file_with = time_per_call(11, 300, || {
        std::hint::black_box(f.visit());
    });
    let (vec_allocs, _) = allocations(|| f.eval());
    let (with_allocs, _) = allocations(|| f.visit());
    println!(
        "evaluation: file of 50 keys x 200 rules ({outcomes} outcomes): evaluate_file_with {file_with:.1} us ({with_allocs} allocations), evaluate_file {file_vec:.1} us ({vec_allocs} allocations)"
    );
    let r = ResourceFixture::new();
    let res_outcomes = r.eval();
    let res_vec = time_per_call(11, 300, || {
        std::hint::black_box(r.eval());
    });
    let res_with = time_per_call(11, 300, || {
        std::hint::black_box(r.visit());
    });
    let (vec_allocs, _) = allocations(|| r.eval());
    let (with_allocs, _) = allocations(|| r.visit());
    println!(
        "evaluation: sample of 8 metrics x 50 resource rules, 1 h of 10 s history ({res_outcomes} outcomes): evaluate_resource_with {res_with:.1} us ({with_allocs} allocations), evaluate_resource {res_vec:.1} us ({vec_allocs} allocations)"
    );
}

/// What one evaluation costs on each path, for three shapes of rule: the fast path against
/// cel-rust (whose cost does not depend much on the expression).
#[test]
#[ignore = "benchmark: prints timings (cargo test -p driftwatch-rules --release -- --ignored --nocapture)"]
fn evaluation_cost_per_rule() {
    use crate::check::ExprKind;
    use crate::eval::{CelCache, run_cel};
    use crate::expr::compile;
    use crate::fast::eval_bool;
    use crate::scope::{FVal, Scope};
    let host = bench_host();
    let samples = &histories(1_800_000_000_000)[0].1;
    for source in ["true", "value > 1.0", "is_number(value) && double(value) > 20.5", "avg('1h') > 0.0"] {
        let c = compile(source, ExprKind::Resource).unwrap();
        let node = c.fast.as_ref().unwrap();
        let scope =
            Scope { value: FVal::Double(42.0), history: Some((1_800_000_000_000, samples)), ..Scope::new(&host) };
        let cache = CelCache::new(&host, None, None);
        assert_eq!(eval_bool(node, &scope), run_cel(&c, &scope, &cache).ok());
        let fast = time_per_call(11, 20_000, || {
            std::hint::black_box(eval_bool(node, std::hint::black_box(&scope)));
        });
        let cel = time_per_call(11, 2_000, || {
            let _ = std::hint::black_box(run_cel(&c, std::hint::black_box(&scope), &cache));
        });
        println!("per evaluation: {source}: fast path {:.0} ns, CEL {:.0} ns", fast * 1000.0, cel * 1000.0);
    }
}
