use std::collections::BTreeMap;
use std::path::Path;

use driftwatch_proto::v1::Value;
use proptest::prelude::*;

use super::*;

fn load(text: &str) -> Result<RuleSet, Vec<RuleError>> {
    RuleSet::from_text(Path::new("r.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    load(text).err().unwrap_or_default().iter().map(|e| e.to_string()).collect()
}

fn one_rule(target: &str, expr: &str) -> String {
    format!("groups:\n  - name: g\n    rules:\n      - name: r\n        target: {target}\n        expr: {expr}\n")
}

fn host() -> HostInfo {
    HostInfo { id: "h1".into(), labels: [("env".to_string(), "production".to_string())].into() }
}

fn keys(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn eval_file(rs: &RuleSet, k: &BTreeMap<String, Value>, baseline: Option<&BTreeMap<String, Value>>) -> Vec<Outcome> {
    let meta = FileMeta { mode: 0o100644, format: "env".into(), exists: true, ..Default::default() };
    rs.evaluate_file(&host(), &FileInput { path: "/etc/app/.env", keys: k, meta: &meta, baseline, previous: None })
}

#[test]
fn rule_set_is_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<RuleSet>();
}

#[test]
fn loads_a_valid_file() {
    let rs = load(&one_rule("{file: \"**/.env*\", key: WORKERS}", "\"value > 12\"")).unwrap();
    assert_eq!(rs.len(), 1);
    let r = &rs.rules()[0];
    assert_eq!((r.group.as_str(), r.name.as_str(), r.severity), ("g", "r", Severity::Medium));
}

#[test]
fn yaml_syntax_error_has_position() {
    let errs = errors("groups:\n  - name: g\n    rules: [\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("r.yaml:"), "{errs:?}");
    assert!(!errs[0].starts_with("r.yaml:0:0"), "{errs:?}");
}

#[test]
fn unknown_field_is_an_error() {
    let errs = errors(
        "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {agent: offline}\n        expr: \"true\"\n        sevrity: high\n",
    );
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("unknown field `sevrity`"), "{errs:?}");
    assert!(errs[0].starts_with("r.yaml:7:"), "{errs:?}");
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let text = "\
groups:
  - name: g
    rules:
      - name: a
        target: {file: \"[x\", key: \"a b\"}
        expr: \"value >\"
        for: 5x
        keep_firing_for: soon
        severity: urgent
      - name: a
        target: {resource: no_such_metric}
        expr: \"frobnicate(value)\"
";
    let errs = errors(text);
    let want = [
        "r.yaml:5:9: target.file: invalid glob",
        "r.yaml:5:9: target.key: invalid key pattern",
        "r.yaml:6:23: expr: syntax error: mismatched input",
        "r.yaml:7:9: for: invalid duration",
        "r.yaml:8:9: keep_firing_for: invalid duration",
        "r.yaml:9:9: severity: unknown \"urgent\"",
        "r.yaml:10:9: duplicate rule name 'a' in group 'g'",
        "r.yaml:11:9: target.resource: unknown metric",
        "r.yaml:12:16: expr: unknown function 'frobnicate'",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
    }
}

#[test]
fn cel_error_position_includes_offset_inside_expression() {
    // The expression starts at column 16 (after the quote); `nope` is at offset 13.
    let errs = errors(&one_rule("{agent: offline}", "\"value > 1 && nope\""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("r.yaml:6:29: expr: unknown variable 'nope'"), "{errs:?}");
    // Block scalar: second line of the expression.
    let text = "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {agent: offline}\n        expr: |\n          value > 1 &&\n            bogus(1)\n";
    let errs = errors(text);
    assert!(errs[0].starts_with("r.yaml:8:"), "{errs:?}");
    assert!(errs[0].contains("unknown function 'bogus'"), "{errs:?}");
}

#[test]
fn unknown_function_and_variable() {
    let errs = errors(&one_rule("{file: \"*.env\", key: A}", "\"lenght(value) > 1 || foo\""));
    assert!(errs.iter().any(|e| e.contains("unknown function 'lenght'")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("unknown variable 'foo'")), "{errs:?}");
    // Comprehension variables are bound, not unknown.
    assert!(load(&one_rule("{file: \"*.env\"}", "\"file.exists(k, k.startsWith('A'))\"")).is_ok());
}

#[test]
fn bad_regex_in_matches_is_a_load_error() {
    let errs = errors(&one_rule("{file: \"*.env\", key: A}", "\"string(value).matches('(unclosed')\""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("invalid regex in matches()"), "{errs:?}");
    assert!(load(&one_rule("{file: \"*.env\", key: A}", "\"string(value).matches('^hf_')\"")).is_ok());
}

#[test]
fn string_compared_with_number_is_a_type_error_at_load() {
    let errs = errors(&one_rule("{resource: cpu_percent}", "\"value > '90'\""));
    assert!(errs.iter().any(|e| e.contains("type error: double > string")), "{errs:?}");
    let errs = errors(&one_rule("{file: \"*.env\"}", "\"meta.mode == '0600'\""));
    assert!(errs.iter().any(|e| e.contains("type error: int == string")), "{errs:?}");
}

#[test]
fn meta_dir_mode_is_the_directory_permission_bits() {
    let rs = load(&one_rule("{file: \"*.yaml\"}", "\"meta.dir_mode == octal('700')\"")).unwrap();
    let k = BTreeMap::new();
    let matched = |dir_mode| {
        let meta = FileMeta { mode: 0o100600, dir_mode, format: "yaml".into(), exists: true, ..Default::default() };
        let input = FileInput { path: "/etc/app/x.yaml", keys: &k, meta: &meta, baseline: None, previous: None };
        rs.evaluate_file(&host(), &input).iter().map(|o| o.matched).collect::<Vec<_>>()
    };
    assert_eq!(matched(0o040700), [true], "the file type bits do not show");
    assert_eq!(matched(0o040755), [false]);
    assert_eq!(matched(0), [false]);
    let errs = errors(&one_rule("{file: \"*.yaml\"}", "\"meta.dir_mode == '0700'\""));
    assert!(errs.iter().any(|e| e.contains("type error: int == string")), "{errs:?}");
}

#[test]
fn history_functions_only_in_resource_rules_and_durations_checked() {
    let errs = errors(&one_rule("{file: \"*.env\", key: A}", "\"avg('1h') > 1.0\""));
    assert!(errs.iter().any(|e| e.contains("needs a resource history")), "{errs:?}");
    let errs = errors(&one_rule("{resource: cpu_percent}", "\"avg('1 hour') > 1.0\""));
    assert!(errs.iter().any(|e| e.contains("invalid duration")), "{errs:?}");
}

#[test]
fn history_window_covers_for_and_every_duration_in_the_expression() {
    let rules = load(
        "groups:\n  - name: g\n    rules:\n      - name: trend\n        target: {resource: memory_used_bytes}\n        expr: \"samples('1h') >= 30 && min_over(\\\"10m\\\") > avg('2h')\"\n      - name: for\n        target: {resource: cpu_cores_used}\n        expr: \"value > 12.0\"\n        for: 5m\n",
    )
    .unwrap();
    assert_eq!(rules.rules()[0].history_window_ms(), 2 * 3_600_000 + 60_000);
    assert_eq!(rules.rules()[1].history_window_ms(), 5 * 60_000 + 60_000);
    assert_eq!(rules.history_window_ms(), 2 * 3_600_000 + 60_000);
}

#[test]
fn history_window_counts_only_what_history_functions_are_given() {
    let window = |expr: &str| load(&one_rule("{resource: cpu_percent}", expr)).unwrap().rules()[0].history_window_ms();
    // Either side of a computed window could be the one used.
    assert_eq!(window("\"avg(value > 1.0 ? '3h' : '20m') > 1.0\""), 3 * 3_600_000 + 60_000);
    // A duration outside a history function reads no history.
    assert_eq!(window("\"value > seconds('5h') && avg('30m') > 1.0\""), 30 * 60_000 + 60_000);
    assert_eq!(window("\"metric != '2h' && value > 1.0\""), 60_000);
    // The longer of `for` and the windows.
    let rules =
        load("groups:\n  - name: g\n    rules:\n      - name: r\n        target: {resource: cpu_percent}\n        expr: \"avg('10m') > 1.0\"\n        for: 2h\n")
            .unwrap();
    assert_eq!(rules.rules()[0].history_window_ms(), 2 * 3_600_000 + 60_000);
}

#[test]
fn rule_set_history_window_is_within_an_hour_and_a_day() {
    let set = |target: &str, expr: &str| load(&one_rule(target, expr)).unwrap().history_window_ms();
    assert_eq!(RuleSet::default().history_window_ms(), RuleSet::MIN_HISTORY_MS);
    assert_eq!(set("{resource: cpu_percent}", "\"avg('5m') > 1.0\""), 3_600_000);
    assert_eq!(set("{resource: cpu_percent}", "\"avg('3h') > 1.0\""), 3 * 3_600_000 + 60_000);
    assert_eq!(set("{resource: cpu_percent}", "\"avg('2d') > 1.0\""), RuleSet::MAX_HISTORY_MS);
    assert_eq!(RuleSet::MAX_HISTORY_MS, 86_400_000);
    // Only resource rules keep history.
    assert_eq!(set("{agent: offline}", "\"value > seconds('3h')\""), 3_600_000);
}

#[test]
fn target_must_be_exactly_one_kind() {
    let errs = errors(&one_rule("{file: \"*.env\", resource: cpu_percent}", "\"true\""));
    assert!(errs.iter().any(|e| e.contains("give exactly one of")), "{errs:?}");
    let errs = errors(&one_rule("{agent: sleeping}", "\"true\""));
    assert!(errs.iter().any(|e| e.contains("target.agent")), "{errs:?}");
}

#[test]
fn annotation_template_unknown_variable() {
    let text = "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {agent: offline}\n        expr: \"true\"\n        annotations: {summary: \"{{ valeu }}\"}\n";
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.starts_with("r.yaml:7:9: annotations.summary: unknown template variable")),
        "{errs:?}"
    );
}

#[test]
fn duplicate_group_across_files_and_load_dir() {
    let dir = tempfile::tempdir().unwrap();
    let body = one_rule("{agent: offline}", "\"value > seconds('5m')\"");
    std::fs::write(dir.path().join("a.yaml"), &body).unwrap();
    std::fs::write(dir.path().join("b.yml"), &body).unwrap();
    std::fs::write(dir.path().join("c.yaml"), "groups: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let errs = RuleSet::check_dir(dir.path());
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].message.contains("duplicate group name 'g'"), "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (2, 5), "{errs:?}");
    assert!(errs[1].file.ends_with("c.yaml"));
    std::fs::remove_file(dir.path().join("b.yml")).unwrap();
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    assert_eq!(RuleSet::load_dir(dir.path()).unwrap().len(), 1);
    assert!(RuleSet::check_dir(&dir.path().join("missing")).len() == 1);
}

#[test]
fn evaluation_type_error_is_an_outcome_and_others_still_run() {
    let text = "groups:\n  - name: g\n    rules:\n      - name: typed\n        target: {file: \"*.env\", key: A}\n        expr: \"value > 5\"\n      - name: other\n        target: {file: \"*.env\", key: A}\n        expr: \"value != null\"\n      - name: not-bool\n        target: {file: \"*.env\", key: A}\n        expr: \"value\"\n";
    let rs = load(text).unwrap();
    let out = eval_file(&rs, &keys(&[("A", Value::string("many"))]), None);
    assert_eq!(out.len(), 3);
    assert!(!out[0].matched && out[0].error.is_some(), "{out:?}");
    assert!(out[1].matched && out[1].error.is_none());
    assert!(out[2].error.as_deref().unwrap().contains("not a bool"), "{out:?}");
}

/// Values of the wrong type, over many rules in one call: each affected rule reports its own
/// error (CEL's message, whichever path ran), and every other rule and key still runs.
#[test]
fn wrong_types_are_per_rule_errors_across_many_rules() {
    let text = "\
groups:
  - name: g
    rules:
      - name: num
        target: {file: \"*.env\", key: A}
        expr: \"value > 5\"
      - name: guarded
        target: {file: \"*.env\", key: A}
        expr: \"is_number(value) && value > 5\"
      - name: each
        target: {file: \"*.env\", key: \"*\"}
        expr: \"value * 2 > 10\"
      - name: masked-arith
        target: {file: \"*.env\", key: S}
        expr: \"value + 1 > 0\"
      - name: cross
        target: {file: \"*.env\"}
        expr: \"int(file.A) > 0\"
      - name: missing-key
        target: {file: \"*.env\"}
        expr: \"file.NOPE == 1\"
      - name: comprehension
        target: {file: \"*.env\"}
        expr: \"file.all(k, file[k] > 0)\"
      - name: fine
        target: {file: \"*.env\", key: B}
        expr: \"value == 7\"
";
    let rs = load(text).unwrap();
    let k = keys(&[("A", Value::string("many")), ("B", Value::int(7)), ("S", Value::masked("ab", "key name"))]);
    let out = eval_file(&rs, &k, None);
    let by = |name: &str, key: Option<&str>| {
        out.iter()
            .find(|o| rs.rules()[o.rule].name == name && o.key.as_deref() == key)
            .unwrap_or_else(|| panic!("no outcome for {name} {key:?} in {out:#?}"))
    };
    let err = |name: &str, key: Option<&str>| {
        let o = by(name, key);
        assert!(!o.matched, "{name} {key:?}: {o:?}");
        o.error.clone().unwrap_or_else(|| panic!("{name} {key:?}: no error: {o:?}"))
    };
    assert!(err("num", Some("A")).contains("_>_"), "{out:#?}");
    assert!(err("each", Some("A")).contains("_*_") || err("each", Some("A")).contains("mul"), "{out:#?}");
    err("each", Some("S"));
    err("masked-arith", Some("S"));
    err("cross", None);
    assert!(err("missing-key", None).contains("NOPE"), "{out:#?}");
    err("comprehension", None);
    // Unaffected: the guard, the wildcard on a number, the other rule.
    assert_eq!((by("guarded", Some("A")).matched, &by("guarded", Some("A")).error), (false, &None));
    assert_eq!((by("each", Some("B")).matched, &by("each", Some("B")).error), (true, &None));
    assert_eq!((by("fine", Some("B")).matched, &by("fine", Some("B")).error), (true, &None));
    assert_eq!(out.len(), 10);

    // Resource rules: a function without enough history fails alone.
    let text = "groups:\n  - name: r\n    rules:\n      - {name: short, target: {resource: cpu_percent}, expr: \"rate('1m') > 0.0\"}\n      - {name: ok, target: {resource: cpu_percent}, expr: \"value > 1.0\"}\n      - {name: bad-type, target: {resource: cpu_percent}, expr: \"metric > 1.0 || value > 1.0\"}\n";
    let errs = load(text).err().unwrap_or_default();
    assert!(errs.iter().any(|e| e.message.contains("type error: string > double")), "{errs:?}");
    let text = text.replace("metric > 1.0 || ", "baseline > 1.0 && ");
    let rs = load(&text).unwrap();
    let out = eval_res(&rs, "cpu_percent", &series(&[5.0], 60_000));
    assert_eq!(out.len(), 3);
    assert!(out[0].error.as_deref().unwrap().contains("need at least 2"), "{out:?}");
    assert_eq!((out[1].matched, &out[1].error), (true, &None));
    assert!(out[2].error.as_deref().unwrap().contains("_>_"), "{out:?}");
}

#[test]
fn file_variables_masked_values_and_patterns() {
    let text = "\
groups:
  - name: g
    rules:
      - name: masked
        target: {file: \"**/.env*\", key: \"*\"}
        expr: \"is_masked(value)\"
      - name: cross
        target: {file: \".env\"}
        expr: \"int(file.MIN) > int(file['MAX']) && meta.mode == octal('644') && host.labels.env == 'production'\"
      - name: required
        target: {file: \"*.env\", key: NEEDED}
        expr: \"value == null\"
      - name: up-50
        target: {file: \"/etc/**\", key: \"*\"}
        expr: \"is_number(value) && is_number(baseline) && baseline > 0 && double(value) > double(baseline) * 1.5\"
";
    let rs = load(text).unwrap();
    let k = keys(&[("MIN", Value::int(5)), ("MAX", Value::int(3)), ("SECRET", Value::masked("ab", "key name"))]);
    let b = keys(&[("MIN", Value::int(2)), ("MAX", Value::int(3)), ("GONE", Value::int(1))]);
    let out = eval_file(&rs, &k, Some(&b));
    let fired: Vec<(String, Option<String>)> =
        out.iter().filter(|o| o.matched).map(|o| (rs.rules()[o.rule].name.clone(), o.key.clone())).collect();
    assert!(out.iter().all(|o| o.error.is_none()), "{out:?}");
    assert_eq!(
        fired,
        vec![
            ("masked".into(), Some("SECRET".into())),
            ("cross".into(), None),
            ("required".into(), Some("NEEDED".into())),
            ("up-50".into(), Some("MIN".into())),
        ]
    );
    // Wildcards see baseline-only keys too (value null there).
    assert!(out.iter().any(|o| o.key.as_deref() == Some("GONE") && o.value == Value::null()));
}

#[test]
fn selector_and_glob_filter() {
    let text = "groups:\n  - name: g\n    rules:\n      - name: r\n        selector: {env: staging}\n        target: {file: \"*.env\"}\n        expr: \"true\"\n      - name: s\n        target: {file: \"/srv/**/*.yaml\"}\n        expr: \"true\"\n";
    let rs = load(text).unwrap();
    assert!(eval_file(&rs, &BTreeMap::new(), None).is_empty());
}

#[test]
fn key_patterns() {
    let p = KeyPattern::new("rate_limiting.*").unwrap();
    assert!(p.is_match("rate_limiting.requests_per_second"));
    assert!(!p.is_match("rate_limiting"));
    assert!(KeyPattern::new("*").unwrap().is_match("a.b[0]"));
    assert!(KeyPattern::new("a[0]").unwrap().is_match("a[0]"));
    assert!(KeyPattern::new("*_SIZE").unwrap().is_match("BROWSER_POOL_MAX_SIZE"));
    assert!(!KeyPattern::new("*_SIZE").unwrap().is_match("WORKERS"));
    assert!(KeyPattern::new("a*b*c").unwrap().is_match("aXbYc"));
    assert!(!KeyPattern::new("a*b*c").unwrap().is_match("aXcYb"));
    assert!(KeyPattern::new("").is_err());
    let g = FileGlob::new("**/.env*").unwrap();
    assert!(g.is_match("/etc/web2img/.env.production"));
    assert!(!g.is_match("/etc/web2img/app.yaml"));
    assert!(FileGlob::new("*.yaml").unwrap().is_match("/etc/x/sync-config.yaml"));
}

fn series(values: &[f64], step_ms: i64) -> Vec<(i64, f64)> {
    values.iter().enumerate().map(|(i, v)| (i as i64 * step_ms, *v)).collect()
}

fn eval_res(rs: &RuleSet, metric: &str, samples: &[(i64, f64)]) -> Vec<Outcome> {
    let now_ms = samples.last().map(|s| s.0).unwrap_or(0);
    rs.evaluate_resource(&host(), &ResourceInput { metric, samples, baseline: None, now_ms })
}

#[test]
fn history_functions() {
    let rule = |e: &str| load(&one_rule("{resource: memory_used_bytes}", &format!("\"{e}\""))).unwrap();
    let s = series(&[1.0, 2.0, 3.0, 4.0, 10.0], 60_000); // one per minute, last at 4 min
    let check = |e: &str| {
        let out = eval_res(&rule(e), "memory_used_bytes", &s);
        assert_eq!(out.len(), 1);
        assert!(out[0].error.is_none(), "{e}: {:?}", out[0].error);
        out[0].matched
    };
    assert!(check("avg('1h') == 4.0"));
    assert!(check("avg('2m') == 7.0")); // (now-2m, now]: 4 and 10
    assert!(check("min_over('1h') == 1.0 && max_over('1h') == 10.0"));
    assert!(check("samples('1h') == 5 && samples('1m') == 1"));
    assert!(check("rate('1h') == 9.0 / 240.0"));
    assert!(check("trend('1h') > 0.0 && trend('1h') < 1.0"));
    assert!(check("zscore('1h') > 1.5"));
    assert!(check("value == 10.0 && previous == 4.0 && baseline == null && metric == 'memory_used_bytes'"));
    // Not enough samples: an evaluation error, not a panic.
    let out = eval_res(&rule("rate('1m') > 0.0"), "memory_used_bytes", &s);
    assert!(out[0].error.as_deref().unwrap().contains("need at least 2"), "{out:?}");
    // Another metric: no outcome.
    assert!(eval_res(&rule("true"), "cpu_percent", &s).is_empty());
    assert!(eval_res(&rule("true"), "memory_used_bytes", &[]).is_empty());
}

#[test]
fn least_squares_trend_is_exact_on_a_line() {
    let rs =
        load(&one_rule("{resource: memory_used_bytes}", "\"trend('1h') > 1.999 && trend('1h') < 2.001\"")).unwrap();
    let s: Vec<(i64, f64)> = (0..60).map(|i| (i * 10_000, 5.0 + 2.0 * (i as f64 * 10.0))).collect();
    assert!(eval_res(&rs, "memory_used_bytes", &s)[0].matched);
}

#[test]
fn agent_offline() {
    let rs = load(&one_rule("{agent: offline}", "\"value > seconds('10m')\"")).unwrap();
    let at = |connected, last_seen_ms, now_ms| {
        rs.evaluate_agent(&host(), &AgentInput { connected, last_seen_ms, now_ms })[0].matched
    };
    assert!(!at(true, 0, 3_600_000));
    assert!(!at(false, 0, 600_000));
    assert!(at(false, 0, 600_001));
}

#[test]
fn annotations_render() {
    let text = "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {file: \"*.env\", key: A}\n        expr: \"value > 1\"\n        annotations: {summary: \"A={{ value }} (baseline {{ baseline }}) on {{host}} {{ labels.env }}\"}\n";
    let rs = load(text).unwrap();
    let k = keys(&[("A", Value::int(5))]);
    let b = keys(&[("A", Value::int(2))]);
    let out = eval_file(&rs, &k, Some(&b));
    let ann = rs.rules()[0].render_annotations(&out[0], &host());
    assert_eq!(ann["summary"], "A=5 (baseline 2) on h1 production");
}

#[test]
fn fingerprint_ignores_value() {
    let rs = load(&one_rule("{file: \"*.env\", key: A}", "\"value > 1\"")).unwrap();
    let a = eval_file(&rs, &keys(&[("A", Value::int(5))]), None);
    let b = eval_file(&rs, &keys(&[("A", Value::int(7))]), None);
    assert_eq!(a[0].fingerprint(&rs), b[0].fingerprint(&rs));
    assert_eq!(a[0].fingerprint(&rs).len(), 32);
    assert_ne!(fingerprint("g", "r", "h", Some("f"), Some("k")), fingerprint("g", "r", "h", Some("fk"), None));
}

#[test]
fn severities_are_ordered() {
    assert!(Severity::Info < Severity::Low && Severity::Low < Severity::Medium);
    assert!(Severity::Medium < Severity::High && Severity::High < Severity::Critical);
    assert_eq!(Severity::parse("critical"), Some(Severity::Critical));
    assert_eq!(Severity::parse("CRITICAL"), None);
}

// ------------------------------------------------------------------ state machine

const M: Observation = Observation::Matched;
const N: Observation = Observation::NotMatched;
const E: Observation = Observation::Error;

/// Run observations at the given times; return the states after each step and all transitions.
fn run(timing: Timing, obs: &[(i64, Observation)]) -> (Vec<AlertState>, Vec<(AlertState, AlertState, i64)>) {
    let mut s: Option<AlertStatus> = None;
    let mut states = Vec::new();
    let mut trans = Vec::new();
    for &(t, o) in obs {
        let (ns, tr) = step(s.as_ref(), timing, o, t);
        trans.extend(tr.iter().map(|x| (x.from, x.to, x.at_ms)));
        states.push(ns.state);
        s = Some(ns);
    }
    (states, trans)
}

use AlertState::{Firing as F, Inactive as I, Pending as P, Resolved as R};

#[test]
fn for_zero_fires_at_once_and_resolves_at_once() {
    let t = Timing::default();
    let (states, trans) = run(t, &[(0, N), (1, M), (2, M), (3, N), (4, N), (5, M)]);
    assert_eq!(states, vec![I, F, F, R, R, F]);
    assert_eq!(trans, vec![(I, F, 1), (F, R, 3), (R, F, 5)]);
}

#[test]
fn for_holds_pending_until_elapsed_inclusive() {
    let t = Timing { for_ms: 100, keep_firing_for_ms: 0 };
    let (states, trans) = run(t, &[(0, M), (50, M), (99, M), (100, M), (150, M)]);
    assert_eq!(states, vec![P, P, P, F, F]);
    assert_eq!(trans, vec![(I, P, 0), (P, F, 100)]);
}

#[test]
fn pending_drops_to_inactive_and_restarts_the_clock() {
    let t = Timing { for_ms: 100, keep_firing_for_ms: 0 };
    let (states, trans) = run(t, &[(0, M), (90, N), (95, M), (180, M), (195, M)]);
    assert_eq!(states, vec![P, I, P, P, F]);
    assert_eq!(trans, vec![(I, P, 0), (P, I, 90), (I, P, 95), (P, F, 195)]);
}

#[test]
fn keep_firing_for_holds_then_resolves() {
    let t = Timing { for_ms: 0, keep_firing_for_ms: 100 };
    let (states, trans) = run(t, &[(0, M), (10, N), (50, N), (109, N), (110, N), (120, N)]);
    assert_eq!(states, vec![F, F, F, F, R, R]);
    assert_eq!(trans, vec![(I, F, 0), (F, R, 110)]);
}

#[test]
fn keep_firing_for_clock_resets_on_a_new_match() {
    let t = Timing { for_ms: 0, keep_firing_for_ms: 100 };
    let (states, trans) = run(t, &[(0, M), (10, N), (90, M), (150, N), (249, N), (250, N)]);
    assert_eq!(states, vec![F, F, F, F, F, R]);
    assert_eq!(trans, vec![(I, F, 0), (F, R, 250)]);
}

#[test]
fn resolved_then_match_with_for_goes_pending_again() {
    let t = Timing { for_ms: 10, keep_firing_for_ms: 0 };
    let (states, _) = run(t, &[(0, M), (10, M), (20, N), (30, M), (35, N), (40, M), (50, M)]);
    assert_eq!(states, vec![P, F, R, P, I, P, F]);
}

#[test]
fn errors_hold_every_state() {
    let t = Timing { for_ms: 10, keep_firing_for_ms: 0 };
    let (states, trans) = run(t, &[(0, E), (1, M), (5, E), (11, M), (12, E), (13, E), (14, N), (15, E)]);
    assert_eq!(states, vec![I, P, P, F, F, F, R, R]);
    assert_eq!(trans, vec![(I, P, 1), (P, F, 11), (F, R, 14)]);
}

#[test]
fn alert_status_records_times() {
    let t = Timing { for_ms: 10, keep_firing_for_ms: 5 };
    let (s, _) = step(None, t, M, 100);
    assert_eq!((s.active_since_ms, s.fired_at_ms), (Some(100), None));
    let (s, _) = step(Some(&s), t, M, 110);
    assert_eq!((s.state, s.fired_at_ms, s.last_matched_ms), (F, Some(110), Some(110)));
    let (s, _) = step(Some(&s), t, N, 120);
    assert_eq!((s.state, s.keep_since_ms), (F, Some(120)));
    let (s, _) = step(Some(&s), t, N, 125);
    assert_eq!((s.state, s.resolved_at_ms, s.keep_since_ms), (R, Some(125), None));
}

fn obs_strategy() -> impl Strategy<Value = Vec<(i64, Observation)>> {
    prop::collection::vec((1i64..50, prop::sample::select(vec![M, N, E])), 1..60).prop_map(|v| {
        let mut t = 0;
        v.into_iter()
            .map(|(d, o)| {
                t += d;
                (t, o)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn zero_timings_fire_iff_last_observation_matched(obs in obs_strategy()) {
        let (states, trans) = run(Timing::default(), &obs);
        let mut last: Option<Observation> = None;
        for (i, &(_, o)) in obs.iter().enumerate() {
            if o != E { last = Some(o); }
            prop_assert_eq!(states[i] == F, last == Some(M));
            prop_assert!(states[i] != P);
        }
        // Every transition changes state.
        prop_assert!(trans.iter().all(|(a, b, _)| a != b));
    }

    #[test]
    fn never_fires_before_for_has_elapsed(obs in obs_strategy(), for_ms in 0i64..200, keep in 0i64..200) {
        let timing = Timing { for_ms, keep_firing_for_ms: keep };
        let (states, trans) = run(timing, &obs);
        // Model: start of the current run of matches (errors do not break a run).
        let mut run_start: Option<i64> = None;
        let mut was_firing = false;
        let mut last_match: Option<i64> = None;
        for (i, &(t, o)) in obs.iter().enumerate() {
            match o {
                M => { run_start.get_or_insert(t); last_match = Some(t); }
                N => run_start = None,
                E => {}
            }
            if states[i] == F && !was_firing {
                // Became firing now: must be a match whose run lasted at least `for`.
                prop_assert_eq!(o, M);
                prop_assert!(t - run_start.unwrap() >= for_ms);
            }
            if states[i] == F {
                // Firing only within keep_firing_for of the last match.
                prop_assert!(t - last_match.unwrap() <= keep || o == M || o == E || keep > 0);
            }
            if states[i] == R { prop_assert!(was_firing || i > 0 && states[i - 1] == R); }
            was_firing = states[i] == F;
        }
        for (a, b, _) in trans {
            prop_assert!(matches!((a, b), (I, P) | (I, F) | (R, P) | (R, F) | (P, I) | (P, F) | (F, R)));
        }
    }
}

#[test]
fn numeric_comparisons_across_int_and_double() {
    let rs = load(&one_rule("{file: \"*.env\", key: A}", "\"value > 20 && value < 20.6 && value != null\"")).unwrap();
    let out = eval_file(&rs, &keys(&[("A", Value::float(20.5))]), None);
    assert_eq!((out[0].matched, &out[0].error), (true, &None));
    let out = eval_file(&rs, &keys(&[("A", Value::int(20))]), None);
    assert_eq!((out[0].matched, &out[0].error), (false, &None));
}

// ------------------------------------------------------------------ schema rules

fn fixture(name: &str) -> std::path::PathBuf {
    // The repository's copy of the shared fixture (identical; builds without shared/).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/configs/swarm").join(name)
}

/// A rules directory with `schema.json` (the swarm fixture's) and `r.yaml` = `rules`.
fn schema_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("unified_config.schema.json"), dir.path().join("schema.json")).unwrap();
    std::fs::write(dir.path().join("r.yaml"), rules).unwrap();
    dir
}

fn swarm_keys(yaml: &str) -> BTreeMap<String, Value> {
    use driftwatch_formats::{Format, Limits, Masker, analyze};
    let a = analyze(yaml.as_bytes(), Format::Yaml, &Masker::new(b"test fleet key"), &Limits::default());
    assert!(a.error.is_none(), "{:?}", a.error);
    a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect()
}

fn eval_swarm(rs: &RuleSet, keys: &BTreeMap<String, Value>) -> Vec<Outcome> {
    let meta = FileMeta { mode: 0o100644, format: "yaml".into(), exists: true, ..Default::default() };
    let input = FileInput { path: "/srv/swarm/unified_config.yaml", keys, meta: &meta, baseline: None, previous: None };
    rs.evaluate_file(&host(), &input)
}

const SCHEMA_RULE: &str = "groups:\n  - name: swarm\n    rules:\n      - name: unified-config-schema\n        target: {file: \"**/unified_config.yaml\", schema: schema.json}\n        severity: high\n        annotations: {summary: \"{{ value }}\"}\n";

#[test]
fn schema_rule_on_the_swarm_fixture() {
    let dir = schema_dir(SCHEMA_RULE);
    let rs = RuleSet::load_dir(dir.path()).unwrap();
    assert_eq!(rs.rules()[0].expr, "size(schema_errors) > 0");
    assert_eq!(rs.rules()[0].schema_path(), Some(dir.path().join("schema.json").as_path()));
    let good = std::fs::read_to_string(fixture("unified_config.yaml")).unwrap();
    let out = eval_swarm(&rs, &swarm_keys(&good));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].matched, &out[0].error, &out[0].value), (false, &None, &Value::null()), "{out:?}");
    // Broken: too many agents, a log level out of the enum, a required key gone.
    let bad = good.replace("max_agents: 8", "max_agents: 100").replace("log_level: INFO", "log_level: LOUD");
    let bad = bad.replace("  interval_seconds: 30\n", "");
    let out = eval_swarm(&rs, &swarm_keys(&bad));
    assert!(out[0].matched && out[0].error.is_none(), "{out:?}");
    let text = out[0].value.display();
    assert!(text.contains("/system/max_agents: 100 is greater than the maximum of 64"), "{text}");
    assert!(text.contains("/system/log_level: \"LOUD\" is not one of"), "{text}");
    assert!(text.contains("/monitoring: \"interval_seconds\" is a required property"), "{text}");
    let ann = rs.rules()[0].render_annotations(&out[0], &host());
    assert_eq!(ann["summary"], text);
}

#[test]
fn schema_errors_variable_and_masked_values() {
    let rules = "groups:\n  - name: swarm\n    rules:\n      - name: few\n        target:\n          file: \"*.yaml\"\n          schema: schema.json\n        expr: \"size(schema_errors) > 1 || schema_errors.exists(e, e.startsWith('/system/name'))\"\n";
    let dir = schema_dir(rules);
    let rs = RuleSet::load_dir(dir.path()).unwrap();
    let good = std::fs::read_to_string(fixture("unified_config.yaml")).unwrap();
    // A secret where a string of at least one character is expected: still valid, still masked.
    let secret = good.replace("name: agent-swarm", "name: ghp_0123456789abcdefghijklmnopqrstuvwxyzAB");
    let keys = swarm_keys(&secret);
    assert!(matches!(keys["system.name"].kind, Some(driftwatch_proto::v1::value::Kind::Masked(_))));
    assert!(!eval_swarm(&rs, &keys)[0].matched);
    // Where a number is expected the message quotes the masked form only.
    let mut keys = swarm_keys(&good);
    keys.insert("system.max_agents".into(), Value::masked("0123456789abcdef0123", "key name"));
    let out = eval_swarm(&rs, &keys);
    let text = out[0].value.display();
    assert!(text.contains("/system/max_agents: \"masked:0123456789abcdef\" is not of type \"integer\""), "{text}");
    assert!(!out[0].matched, "one error, not about /system/name: {text}");
    keys.insert("system.name".into(), Value::string(""));
    assert!(eval_swarm(&rs, &keys)[0].matched);
}

#[test]
fn schema_problems_are_load_errors_at_the_schema_value() {
    let rule = |target: &str| {
        format!("groups:\n  - name: g\n    rules:\n      - name: r\n        target: {target}\n        severity: low\n")
    };
    let dir = schema_dir("");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("bad.json", "{\"type\": \"object\",\n \"properties\": }");
    write("invalid.json", "{\"type\": \"objekt\"}");
    write("remote.json", "{\"$ref\": \"https://example.invalid/s.json\"}");
    for (target, col, want) in [
        ("{file: \"*.yaml\", schema: missing.json}", 42, "target.schema: cannot read"),
        (
            "{file: \"*.yaml\", schema: \"bad.json\"}",
            43,
            "bad.json is not valid JSON: expected value at line 2 column 16",
        ),
        ("{file: \"*.yaml\", schema: invalid.json}", 42, "invalid.json is not a usable JSON Schema"),
        ("{file: \"*.yaml\", schema: remote.json}", 42, "remote.json is not a usable JSON Schema"),
        ("{file: \"*.yaml\", key: A, schema: schema.json}", 50, "target.schema: validates the whole file"),
    ] {
        write("r.yaml", &rule(target));
        let errs = RuleSet::check_dir(dir.path());
        assert_eq!(errs.len(), 1, "{target}: {errs:?}");
        let e = &errs[0];
        assert_eq!((e.line, e.column), (5, col), "{target}: {e}");
        assert!(e.message.contains(want), "{target}: {e}");
    }
    // Block style: the value's own line and column.
    write(
        "r.yaml",
        "groups:\n  - name: g\n    rules:\n      - name: r\n        target:\n          file: \"*.yaml\"\n          schema: invalid.json\n",
    );
    let errs = RuleSet::check_dir(dir.path());
    assert_eq!((errs[0].line, errs[0].column), (7, 19), "{errs:?}");
    // Without a schema, `expr` is required; a schema variable is only for schema rules.
    write("r.yaml", &rule("{file: \"*.yaml\"}"));
    let errs = RuleSet::check_dir(dir.path());
    assert!(errs[0].message.starts_with("expr: missing"), "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (4, 9), "{errs:?}");
    write("r.yaml", &format!("{}        expr: \"size(schema_errors) > 0\"\n", rule("{file: \"*.yaml\"}")));
    let errs = RuleSet::check_dir(dir.path());
    assert!(errs[0].message.contains("unknown variable 'schema_errors'"), "{errs:?}");
}
