//! The rules loader (`RuleSet::from_text`), and the loaded rules evaluated: a rule file
//! that loads must never make the rule engine panic.

use std::collections::BTreeMap;
use std::path::Path;

use driftwatch_proto::v1::Value;
use driftwatch_rules::{AgentInput, FileInput, FileMeta, HostInfo, ResourceInput, RuleSet, Target};

/// No such directory: a `target.schema` a rule names is not found (no I/O depends on the input).
const PATH: &str = "/nonexistent-driftwatch-fuzz/rules.yaml";

/// Input: the rule file's text (invalid UTF-8 replaced).
pub fn load(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(PATH);
    let loaded = RuleSet::from_text(path, &text);
    let again = RuleSet::from_text(path, &text);
    match (&loaded, &again) {
        (Ok(a), Ok(b)) => assert_eq!(summary(a), summary(b), "loading is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a, b, "loading is not deterministic"),
        _ => panic!("loading is not deterministic"),
    }
    match loaded {
        Err(errors) => check_errors(&errors, &text),
        Ok(rules) => check_rules(&rules),
    }
}

fn summary(rules: &RuleSet) -> Vec<(String, String, String)> {
    rules.rules().iter().map(|r| (r.group.clone(), r.name.clone(), r.expr.clone())).collect()
}

fn check_errors(errors: &[driftwatch_rules::RuleError], text: &str) {
    assert!(!errors.is_empty(), "a refused file without a reason");
    // The YAML parser's end-of-stream position is the line after the last one.
    let lines = crate::formats::line_count(driftwatch_formats::Format::Yaml, text);
    for e in errors {
        assert_eq!(e.file, Path::new(PATH));
        assert!(!e.message.is_empty());
        assert!(e.line <= lines + 1, "error on line {} of a {lines}-line file: {}", e.line, e.message);
    }
    assert!(errors.windows(2).all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)), "errors out of order");
}

fn check_rules(rules: &RuleSet) {
    let mut names = std::collections::HashSet::new();
    let mut labels = BTreeMap::new();
    let mut paths = vec!["/etc/app/config.yaml".to_string(), "/etc/app/.env".to_string()];
    for r in rules.rules() {
        assert!(names.insert((r.group.as_str(), r.name.as_str())), "rule {}/{} loaded twice", r.group, r.name);
        assert!(r.history_window_ms() >= 60_000);
        assert_eq!(r.source, Path::new(PATH));
        labels.extend(r.selector.clone());
        if let Target::File { file, .. } = &r.target {
            paths.push(format!("/etc/{}", file.as_str().trim_start_matches('/')));
        }
    }
    assert!(rules.history_window_ms() >= 0);
    // Evaluation of what loaded: file, resource and agent rules, on a small fixed input.
    let host = HostInfo { id: "fuzz-host".into(), labels };
    let keys: BTreeMap<String, Value> = [
        ("port", Value::int(8080)),
        ("ratio", Value::float(0.5)),
        ("name", Value::string("web")),
        ("debug", Value::bool(true)),
        ("empty", Value::null()),
        ("list[0]", Value::string("a")),
        ("db.password", Value::masked_by("k", "f", "key name")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let meta = FileMeta { mode: 0o100644, size: 10, format: "yaml".into(), exists: true, ..Default::default() };
    for path in &paths {
        let file = FileInput { path, keys: &keys, meta: &meta, baseline: Some(&keys), previous: None };
        let out = rules.evaluate_file(&host, &file);
        assert_eq!(out.len(), rules.evaluate_file(&host, &file).len(), "evaluation is not deterministic");
        assert!(out.iter().all(|o| o.rule < rules.len()));
    }
    let samples = [(1_000, 10.0), (61_000, 20.0), (121_000, f64::NAN)];
    for metric in driftwatch_rules::RESOURCE_METRICS {
        for n in 1..=samples.len() {
            let input = ResourceInput { metric, samples: &samples[..n], baseline: Some(1.0), now_ms: samples[n - 1].0 };
            let _ = rules.evaluate_resource(&host, &input);
        }
    }
    for connected in [true, false] {
        let _ = rules.evaluate_agent(&host, &AgentInput { connected, last_seen_ms: 0, now_ms: 3_600_000 });
    }
}
