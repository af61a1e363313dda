//! The runner on small test files next to a small rule file, and on the example rules'
//! own tests.

use std::collections::BTreeSet;
use std::path::Path;

use driftwatch_proto::duration::format_ms;

use super::case::{ExpAlert, Expect};
use super::prepare::prepare;
use super::{TestReport, parse_series, run_test_file};

const RULES: &str = r#"groups:
  - name: g
    rules:
      - name: workers-high
        selector: {env: production}
        target: {file: "**/.env*", key: WORKERS}
        expr: "is_number(value) && double(value) > 12.0"
        for: 5m
        keep_firing_for: 2m
        severity: high
        annotations: {summary: "WORKERS {{ value }} (baseline {{ baseline }})"}
      - name: token-set
        target: {file: "**/.env*", key: "*TOKEN*"}
        expr: "is_masked(value)"
        severity: critical
      - name: offline
        target: {agent: offline}
        expr: "value > seconds('10m')"
        severity: medium
      - name: cpu-high
        target: {resource: cpu_cores_used}
        expr: "value > 12.0"
        for: 2m
"#;

/// Run `test` (YAML) next to a rule file `r.yaml` holding `RULES`.
fn run(test: &str) -> TestReport {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), RULES).unwrap();
    let path = dir.path().join("t.test.yaml");
    std::fs::write(&path, test).unwrap();
    run_test_file(&path)
}

fn case(body: &str) -> String {
    format!("rule_files: [r.yaml]\ntests:\n  - name: c\n    hosts: [{{id: h1, labels: {{env: production}}}}]\n{body}")
}

fn failures(r: &TestReport) -> String {
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    r.tests.iter().flat_map(|t| t.failures.iter().map(|f| format!("{}\n", f))).collect()
}

fn errors(r: &TestReport) -> Vec<String> {
    r.errors.iter().map(|e| e.to_string()).collect()
}

const WORKERS_16: &str = "    baselines: [{path: /etc/app/.env, content: \"WORKERS=8\\n\"}]
    files:
      - {at: 30s, path: /etc/app/.env, content: \"WORKERS=16\\n\"}
      - {at: 10m, path: /etc/app/.env, set: {WORKERS: 8}}
";

#[test]
fn example_test_files_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/rules/tests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".test.yaml") {
            continue;
        }
        n += 1;
        let r = run_test_file(&path);
        let why: Vec<String> = r
            .errors
            .iter()
            .map(|e| e.to_string())
            .chain(
                r.tests
                    .iter()
                    .flat_map(|t| t.failures.iter().chain(t.notes.iter()).map(move |f| format!("{}: {f}", t.name))),
            )
            .collect();
        assert!(r.passed(), "{}:\n{}", path.display(), why.join("\n"));
        assert!(!r.tests.is_empty());
    }
    assert!(n >= 2, "example test files found: {n}");
}

/// The examples are the rules' own tests: each rule must be seen firing and resolved.
#[test]
fn example_test_files_cover_every_rule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/rules/tests");
    for name in ["web2img.test.yaml", "gguf-sync.test.yaml"] {
        let path = dir.join(name);
        let Ok((rules, cases)) = prepare(&path, &std::fs::read_to_string(&path).unwrap()) else { panic!("{name}") };
        let seen = |pick: fn(&Expect) -> &Vec<ExpAlert>| -> BTreeSet<&str> {
            let idx = cases.iter().flat_map(|c| c.expects.iter().flat_map(|e| pick(e).iter().map(|x| x.rule)));
            idx.map(|i| rules.rules()[i].name.as_str()).collect()
        };
        let all: BTreeSet<&str> = rules.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(seen(|e| &e.firing), all, "{name}: rules never expected firing");
        assert_eq!(seen(|e| &e.resolved), all, "{name}: rules never expected resolved");
    }
}

#[test]
fn for_and_keep_firing_for_are_honoured_off_the_grid() {
    let r = run(&case(&format!(
        "{WORKERS_16}    expect:
      - {{at: 30s, pending: [{{rule: workers-high, severity: high}}]}}
      - {{at: 5m29s, pending: [{{rule: workers-high}}]}}
      - at: 5m30s
        firing: [{{rule: workers-high, annotations: {{summary: \"WORKERS 16 (baseline 8)\"}}}}]
      - {{at: 11m59s, firing: [{{rule: workers-high}}]}}
      - {{at: 12m, resolved: [{{rule: workers-high}}]}}
"
    )));
    assert_eq!(failures(&r), "");
    assert!(r.passed());
}

#[test]
fn a_failing_expectation_is_reported_with_expected_and_got() {
    let r = run(&case(&format!(
        "{WORKERS_16}    expect:
      - {{at: 4m, firing: [{{rule: workers-high}}]}}
      - at: 6m
        firing: [{{rule: workers-high, severity: low, annotations: {{summary: \"WORKERS 17 (baseline 8)\"}}}}]
      - {{at: 7m, resolved: [{{rule: workers-high}}]}}
"
    )));
    let f = failures(&r);
    assert!(!r.passed());
    assert_eq!(r.tests[0].failures.len(), 4, "{f}");
    assert!(
        f.contains("at 4m: firing alerts differ")
            && f.contains("- workers-high{host=h1, file=/etc/app/.env, key=WORKERS} (pending since 30s)"),
        "{f}"
    );
    assert!(f.contains("severity: expected low, got high"), "{f}");
    assert!(
        f.contains("expected \"WORKERS 17 (baseline 8)\"") && f.contains("got      \"WORKERS 16 (baseline 8)\""),
        "{f}"
    );
    let want =
        "at 7m: expected resolved workers-high{host=h1, file=/etc/app/.env, key=WORKERS}, got firing since 5m30s";
    assert!(f.contains(want), "{f}");
}

#[test]
fn an_unexpected_alert_is_reported() {
    let r = run(&case(
        "    files:
      - {at: 0s, path: /etc/app/.env, content: \"API_TOKEN=sk_live_abcdefghijklmnopqrstuvwx\\n\"}
    expect:
      - {at: 1m, firing: []}
",
    ));
    let f = failures(&r);
    assert!(f.contains("+ token-set{host=h1, file=/etc/app/.env, key=API_TOKEN} severity=critical"), "{f}");
    // Listing it makes the test pass: the content was masked as the agent would.
    let r = run(&case(
        "    files:
      - {at: 0s, path: /etc/app/.env, content: \"API_TOKEN=sk_live_abcdefghijklmnopqrstuvwx\\n\"}
    expect:
      - {at: 1m, firing: [{rule: token-set, key: API_TOKEN}]}
",
    ));
    assert_eq!(failures(&r), "");
}

#[test]
fn a_key_that_disappears_stops_matching() {
    let r = run(&case(
        "    files:
      - {at: 0s, path: /etc/app/.env, keys: {API_TOKEN: sk_live_abcdefghijklmnopqrstuvwx, WORKERS: 4}}
      - {at: 1m, path: /etc/app/.env, unset: [API_TOKEN]}
      - {at: 2m, path: /etc/app/.env, set: {GITHUB_TOKEN: ghp_abcdefghijklmnopqrstuvwxyz0123456789}}
      - {at: 3m, path: /etc/app/.env, missing: true}
    expect:
      - {at: 0s, firing: [{rule: token-set, key: API_TOKEN}]}
      - {at: 1m, resolved: [{rule: token-set, key: API_TOKEN}]}
      - {at: 2m, firing: [{rule: token-set, key: GITHUB_TOKEN}]}
      - {at: 3m, resolved: [{rule: token-set, key: GITHUB_TOKEN}]}
",
    ));
    assert_eq!(failures(&r), "");
}

#[test]
fn agent_offline_and_resource_series() {
    let r = run(&case(
        "    evaluation_interval: 1m
    agents: [{offline_since: 5m, online_at: 30m}]
    resources: [{interval: 1m, series: {cpu_cores_used: \"10 13x3 _ 10\"}}]
    expect:
      - {at: 1m, pending: [{rule: cpu-high}]}
      - {at: 3m, firing: [{rule: cpu-high}]}
      - {at: 5m, firing: [{rule: cpu-high}]}
      - {at: 6m, resolved: [{rule: cpu-high}]}
      - {at: 15m, firing: []}
      - {at: 16m, firing: [{rule: offline, severity: medium}]}
      - {at: 30m, resolved: [{rule: offline}]}
",
    ));
    assert_eq!(failures(&r), "");
}

#[test]
fn bad_test_files_are_errors_with_positions() {
    let e = errors(&run("rule_files: [r.yaml]\ntests:\n  - name: c\n    hosts: [{id: h1}]\n    bogus: 1\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("t.test.yaml:5:5: ") && e[0].contains("unknown field `bogus`"), "{e:?}");

    let e = errors(&run(&case("    expect:\n      - {at: 5x}\n")));
    assert!(e[0].contains("t.test.yaml:6:") && e[0].contains("invalid duration"), "{e:?}");

    let e = errors(&run(&case("    expect:\n      - at: 1m\n        firing: [{rule: nope}]\n")));
    assert!(e[0].contains("t.test.yaml:7:") && e[0].contains("unknown rule \"nope\""), "{e:?}");

    let e = errors(&run(&case(
        "    files: [{at: 0s, path: /a/.env, content: \"A=1\"}, {at: 0s, path: /b/.env, content: \"A=1\"}]
    expect:
      - at: 1m
        firing: [{rule: token-set, key: A_TOKEN}]
",
    )));
    assert!(e[0].contains("file: needed"), "{e:?}");

    let e = errors(&run(&case("    resources: [{series: {cpu_cores_used: \"1 2 x\"}}]\n    expect: [{at: 0s}]\n")));
    assert!(e[0].contains(":5:") && e[0].contains("invalid series item \"x\""), "{e:?}");

    let e = errors(&run("rule_files: [missing.yaml]\ntests: []\n"));
    assert!(e[0].contains("t.test.yaml:1:") && e[0].contains("missing.yaml"), "{e:?}");

    // A broken rule file reports its own positions.
    let dir = tempfile::tempdir().unwrap();
    let bad = "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {agent: offline}\n\
                   \x20       expr: \"value >\"\n";
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    std::fs::write(dir.path().join("t.yaml"), "rule_files: [bad.yaml]\ntests: []\n").unwrap();
    let r = run_test_file(&dir.path().join("t.yaml"));
    assert!(r.errors[0].to_string().contains("bad.yaml:6:"), "{:?}", r.errors);
    assert!(!r.passed());
}

#[test]
fn dir_mode_defaults_to_0755_and_carries_over() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "groups:\n  - name: g\n    rules:\n      - name: dir-open\n        target: {file: \"*.env\"}\n\
                     \x20       expr: \"meta.exists && meta.dir_mode != octal('700')\"\n";
    std::fs::write(dir.path().join("r.yaml"), rules).unwrap();
    let test = "rule_files: [r.yaml]
tests:
  - name: c
    hosts: [{id: h1}]
    files:
      - {at: 0s, path: /etc/app/a.env, content: \"A=1\\n\"}
      - {at: 1m, path: /etc/app/a.env, content: \"A=1\\n\", dir_mode: \"0700\"}
      - {at: 2m, path: /etc/app/a.env, set: {A: 2}}
      - {at: 3m, path: /etc/app/a.env, missing: true}
      - {at: 4m, path: /etc/app/a.env, content: \"A=1\\n\"}
    expect:
      - {at: 0s, firing: [{rule: dir-open}]}
      - {at: 1m, resolved: [{rule: dir-open}]}
      - {at: 2m, firing: []}
      - {at: 3m, firing: []}
      - {at: 4m, firing: [{rule: dir-open}]}
";
    std::fs::write(dir.path().join("t.yaml"), test).unwrap();
    let r = run_test_file(&dir.path().join("t.yaml"));
    assert_eq!(failures(&r), "");
    assert!(r.passed());
}

#[test]
fn series_notation() {
    assert_eq!(parse_series("1 2").unwrap(), vec![Some(1.0), Some(2.0)]);
    assert_eq!(parse_series("4e9+1e8x2").unwrap(), vec![Some(4e9), Some(4.1e9), Some(4.2e9)]);
    assert_eq!(
        parse_series("5-1x2 _x2 7x1").unwrap(),
        vec![Some(5.0), Some(4.0), Some(3.0), None, None, Some(7.0), Some(7.0)]
    );
    assert_eq!(parse_series("-1e-3").unwrap(), vec![Some(-0.001)]);
    assert!(parse_series("").is_err() && parse_series("1x").is_err() && parse_series("a").is_err());
    assert_eq!(format_ms(5_430_500), "1h30m30s500ms");
}
