//! Every policy line of shared/fixtures/{gguf-sync,web2img}/rules.md, as expressed in
//! deploy/examples/rules/, fires on a violating input and stays quiet on a compliant one.
//! Config inputs are the example configs and scenarios, parsed with driftwatch-formats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use driftwatch_formats::{Format, Limits, Masker, analyze};
use driftwatch_proto::v1::Value;
use driftwatch_rules::{
    AlertState, AlertStatus, FileInput, FileMeta, HostInfo, Observation, Outcome, ResourceInput, RuleSet, step,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules() -> RuleSet {
    match RuleSet::load_dir(&root().join("deploy/examples/rules")) {
        Ok(rs) => rs,
        Err(errs) => {
            panic!("example rules do not load:\n{}", errs.iter().map(|e| format!("{e}\n")).collect::<String>())
        }
    }
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn parse(text: &str, format: Format) -> BTreeMap<String, Value> {
    let a = analyze(text.as_bytes(), format, &Masker::new(b"test fleet key"), &Limits::default());
    assert!(a.error.is_none(), "parse error: {:?}", a.error);
    a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect()
}

fn host(service: &str, env: &str) -> HostInfo {
    HostInfo {
        id: format!("{service}-{env}-1"),
        labels: [("service".to_string(), service.to_string()), ("env".to_string(), env.to_string())].into(),
    }
}

struct Snap<'a> {
    path: &'a str,
    keys: BTreeMap<String, Value>,
    mode: u32,
    dir_mode: u32,
    baseline: Option<BTreeMap<String, Value>>,
}

fn eval(rs: &RuleSet, h: &HostInfo, s: &Snap<'_>) -> Vec<Outcome> {
    let meta = FileMeta {
        mode: s.mode,
        dir_mode: s.dir_mode,
        size: 1,
        format: "x".into(),
        exists: true,
        ..Default::default()
    };
    let out = rs.evaluate_file(
        h,
        &FileInput { path: s.path, keys: &s.keys, meta: &meta, baseline: s.baseline.as_ref(), previous: None },
    );
    for o in &out {
        assert!(o.error.is_none(), "rule {} on {:?}: {:?}", rs.rules()[o.rule].name, o.key, o.error);
    }
    out
}

/// Names of the rules that matched (with the key, when there is one).
fn fired(rs: &RuleSet, out: &[Outcome]) -> Vec<String> {
    let mut v: Vec<String> = out
        .iter()
        .filter(|o| o.matched)
        .map(|o| match &o.key {
            Some(k) => format!("{}:{k}", rs.rules()[o.rule].name),
            None => rs.rules()[o.rule].name.clone(),
        })
        .collect();
    v.sort();
    v
}

fn has(fired: &[String], name: &str) -> bool {
    fired.iter().any(|f| f == name || f.starts_with(&format!("{name}:")))
}

const GGUF_PATH: &str = "/etc/gguf-sync/sync-config.yaml";

fn gguf(text: &str, mode: u32) -> Snap<'static> {
    Snap { path: GGUF_PATH, keys: parse(text, Format::Yaml), mode, dir_mode: 0o040700, baseline: None }
}

// ----------------------------------------------------------------- gguf-sync

#[test]
fn gguf_compliant_configs_fire_nothing() {
    let rs = rules();
    let prod = read("deploy/examples/configs/gguf-sync/sync-config-production.yaml");
    let mut s = gguf(&prod, 0o100600);
    s.baseline = Some(s.keys.clone());
    assert_eq!(fired(&rs, &eval(&rs, &host("gguf-sync", "production"), &s)), Vec::<String>::new());
    // Development has DEBUG and debug_mode on, which only production forbids.
    for env in ["staging", "development"] {
        let text = read(&format!("deploy/examples/configs/gguf-sync/sync-config-{env}.yaml"));
        let mut s = gguf(&text, 0o100644);
        s.dir_mode = 0o040755;
        assert_eq!(fired(&rs, &eval(&rs, &host("gguf-sync", env), &s)), Vec::<String>::new(), "{env}");
    }
}

#[test]
fn gguf_broken_scenario_fires_its_lines() {
    let rs = rules();
    let broken = read("deploy/examples/scenarios/sync-config-broken.yaml");
    let mut s = gguf(&broken, 0o100644);
    s.dir_mode = 0o040755;
    let out = eval(&rs, &host("gguf-sync", "production"), &s);
    let f = fired(&rs, &out);
    for name in [
        "requests-per-second-out-of-range",     // 0
        "max-concurrent-requests-out-of-range", // -1
        "min-completeness-score-out-of-range",  // 1.5
        "debug-mode-on",                        // true
        "log-level-debug",                      // DEBUG
        "file-verification-off",                // false
        "huggingface-token-in-file",            // hf_...
        "secret-in-config-file",                // the token, masked by the parser
        "config-file-mode-not-0600",            // 0644
        "config-dir-mode-not-0700",             // 0755
        "preserve-data-on-failure-off",         // missing
    ] {
        assert!(has(&f, name), "{name} did not fire; fired: {f:?}");
    }
    // The token reached the rules masked, never in clear.
    let tok = out.iter().find(|o| o.key.as_deref() == Some("huggingface_token")).unwrap();
    assert_eq!(tok.value.type_name(), "masked");
}

/// Lines the broken scenario does not cover: one edit of the compliant production file each.
#[test]
fn gguf_each_line_fires_on_a_single_violation() {
    let rs = rules();
    let prod = read("deploy/examples/configs/gguf-sync/sync-config-production.yaml");
    let baseline = parse(&prod, Format::Yaml);
    let cases: &[(&str, &str, &str)] = &[
        ("requests_per_second: 1.2", "requests_per_second: 2.5", "requests-per-second-out-of-range"),
        ("requests_per_second: 1.2", "requests_per_second: 0", "requests-per-second-out-of-range"),
        ("requests_per_hour: 4800", "requests_per_hour: 4801", "requests-per-hour-above-4800"),
        ("max_concurrent_requests: 50", "max_concurrent_requests: 101", "max-concurrent-requests-out-of-range"),
        ("max_concurrent_requests: 50", "max_concurrent_requests: 0", "max-concurrent-requests-out-of-range"),
        ("min_completeness_score: 0.95", "min_completeness_score: -0.1", "min-completeness-score-out-of-range"),
        ("min_completeness_score: 0.95", "min_completeness_score: 0.9", "min-completeness-score-below-0.95"),
        ("debug_mode: false", "debug_mode: true", "debug-mode-on"),
        ("log_level: INFO", "log_level: DEBUG", "log-level-debug"),
        ("enable_file_verification: true", "enable_file_verification: false", "file-verification-off"),
        ("preserve_data_on_failure: true", "preserve_data_on_failure: false", "preserve-data-on-failure-off"),
        (
            "huggingface_token: null",
            "huggingface_token: \"hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\"",
            "huggingface-token-in-file",
        ),
        (
            "huggingface_token: null",
            "huggingface_token: \"hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\"",
            "secret-in-config-file",
        ),
        ("memory_limit_mb: 2048", "memory_limit_mb: 4096", "drift-from-reviewed-baseline"),
    ];
    for (from, to, rule) in cases {
        assert!(prod.contains(from), "{from}");
        let text = prod.replacen(from, to, 1);
        let mut s = gguf(&text, 0o100600);
        s.baseline = Some(baseline.clone());
        let f = fired(&rs, &eval(&rs, &host("gguf-sync", "production"), &s));
        assert!(has(&f, rule), "{rule} did not fire for {to:?}; fired: {f:?}");
    }
    // Mode: 0600 is fine, 0640 is not.
    let mut s = gguf(&prod, 0o100640);
    s.baseline = Some(baseline.clone());
    assert_eq!(fired(&rs, &eval(&rs, &host("gguf-sync", "production"), &s)), vec!["config-file-mode-not-0600"]);
    // Directory: 0700 is fine, 0750 is not, unknown (0: an older agent) is not a violation.
    let mut s = gguf(&prod, 0o100600);
    s.baseline = Some(baseline.clone());
    s.dir_mode = 0o040750;
    assert_eq!(fired(&rs, &eval(&rs, &host("gguf-sync", "production"), &s)), vec!["config-dir-mode-not-0700"]);
    s.dir_mode = 0;
    assert_eq!(fired(&rs, &eval(&rs, &host("gguf-sync", "production"), &s)), Vec::<String>::new());
}

// ----------------------------------------------------------------- web2img

const ENV_PATH: &str = "/etc/web2img/.env.production";

fn web(text: &str, baseline: Option<BTreeMap<String, Value>>) -> Snap<'static> {
    Snap { path: ENV_PATH, keys: parse(text, Format::Env), mode: 0o100600, dir_mode: 0o040700, baseline }
}

#[test]
fn web2img_tuned_settings_fire_nothing() {
    let rs = rules();
    let tuned = read("deploy/examples/configs/web2img/.env.production");
    let s = web(&tuned, Some(parse(&tuned, Format::Env)));
    assert_eq!(fired(&rs, &eval(&rs, &host("web2img", "production"), &s)), Vec::<String>::new());
    // The same regressed file on a staging host: production-only policy.
    let regressed = read("deploy/examples/scenarios/web2img.env.regressed");
    let s = web(&regressed, Some(parse(&tuned, Format::Env)));
    assert_eq!(fired(&rs, &eval(&rs, &host("web2img", "staging"), &s)), Vec::<String>::new());
}

#[test]
fn web2img_regressed_scenario_fires_every_setting_row() {
    let rs = rules();
    let tuned = read("deploy/examples/configs/web2img/.env.production");
    let regressed = read("deploy/examples/scenarios/web2img.env.regressed");
    let out = eval(&rs, &host("web2img", "production"), &web(&regressed, Some(parse(&tuned, Format::Env))));
    let f = fired(&rs, &out);
    for name in [
        "browser-pool-max-size-above-20:BROWSER_POOL_MAX_SIZE",
        "max-concurrent-screenshots-above-100:MAX_CONCURRENT_SCREENSHOTS",
        "browser-cache-max-size-above-500:BROWSER_CACHE_MAX_SIZE_MB",
        "workers-above-12:WORKERS",
        "memory-cleanup-threshold-above-95:MEMORY_CLEANUP_THRESHOLD",
        // 12 → 50, 32 → 128, 64 → 256, 200 → 1000, 8 → 16: all more than +50%.
        "numeric-setting-up-50-percent:BROWSER_POOL_MAX_SIZE",
        "numeric-setting-up-50-percent:MAX_CONCURRENT_SCREENSHOTS",
        "numeric-setting-up-50-percent:MAX_CONCURRENT_CONTEXTS",
        "numeric-setting-up-50-percent:BROWSER_CACHE_MAX_SIZE_MB",
        "numeric-setting-up-50-percent:WORKERS",
    ] {
        assert!(f.iter().any(|x| x == name), "{name} did not fire; fired: {f:?}");
    }
    // Not above +50%: 80 → 97 (+21%), and unchanged keys; min 1 < max 50.
    assert!(!f.iter().any(|x| x == "numeric-setting-up-50-percent:MEMORY_CLEANUP_THRESHOLD"), "{f:?}");
    assert!(!f.iter().any(|x| x == "numeric-setting-up-50-percent:CACHE_MAX_ITEMS"), "{f:?}");
    assert!(!has(&f, "browser-pool-min-above-max"), "{f:?}");
    // Annotations explain themselves with value and baseline.
    let o = out.iter().find(|o| o.matched && rs.rules()[o.rule].name == "workers-above-12").unwrap();
    let ann = rs.rules()[o.rule].render_annotations(o, &host("web2img", "production"));
    assert_eq!(ann["summary"], "WORKERS 16 above 12 (baseline 8)");
}

#[test]
fn web2img_min_above_max_fires_and_each_threshold_is_exclusive() {
    let rs = rules();
    let tuned = read("deploy/examples/configs/web2img/.env.production");
    let h = host("web2img", "production");
    let bad = tuned.replacen("BROWSER_POOL_MIN_SIZE=4", "BROWSER_POOL_MIN_SIZE=13", 1);
    let f = fired(&rs, &eval(&rs, &h, &web(&bad, None)));
    assert_eq!(f, vec!["browser-pool-min-above-max"]);
    // At the limit is compliant; one above fires.
    for (key, from, limit, rule) in [
        ("BROWSER_POOL_MAX_SIZE", "12", 20, "browser-pool-max-size-above-20"),
        ("MAX_CONCURRENT_SCREENSHOTS", "32", 100, "max-concurrent-screenshots-above-100"),
        ("BROWSER_CACHE_MAX_SIZE_MB", "200", 500, "browser-cache-max-size-above-500"),
        ("WORKERS", "8", 12, "workers-above-12"),
        ("MEMORY_CLEANUP_THRESHOLD", "80", 95, "memory-cleanup-threshold-above-95"),
    ] {
        let at = tuned.replacen(&format!("{key}={from}"), &format!("{key}={limit}"), 1);
        assert!(!has(&fired(&rs, &eval(&rs, &h, &web(&at, None))), rule), "{key}={limit}");
        let over = tuned.replacen(&format!("{key}={from}"), &format!("{key}={}", limit + 1), 1);
        assert!(has(&fired(&rs, &eval(&rs, &h, &web(&over, None))), rule), "{key}={}", limit + 1);
    }
}

// ----------------------------------------------------------------- resources

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const STEP_MS: i64 = 10_000;

/// Feed samples one at a time (as the server would on each sample) through the rules and
/// the state machine; return the state of `rule` after each sample.
fn drive(rs: &RuleSet, metric: &str, rule: &str, values: &[f64]) -> Vec<AlertState> {
    let h = host("web2img", "production");
    let idx = rs.rules().iter().position(|r| r.name == rule).unwrap();
    let timing = rs.rules()[idx].timing;
    let samples: Vec<(i64, f64)> = values.iter().enumerate().map(|(i, v)| (i as i64 * STEP_MS, *v)).collect();
    let mut status: Option<AlertStatus> = None;
    let mut states = Vec::new();
    for i in 0..samples.len() {
        let now_ms = samples[i].0;
        let window = &samples[..=i];
        let out = rs.evaluate_resource(&h, &ResourceInput { metric, samples: window, baseline: None, now_ms });
        let o = out.iter().find(|o| o.rule == idx).unwrap();
        let obs: Observation = o.observation();
        if samples.len() > 360 && i >= 359 {
            assert!(o.error.is_none(), "{rule}: {:?}", o.error);
        }
        let (s, _) = step(status.as_ref(), timing, obs, now_ms);
        states.push(s.state);
        status = Some(s);
    }
    states
}

/// First index where the state is `Firing`.
fn first_firing(states: &[AlertState]) -> Option<usize> {
    states.iter().position(|s| *s == AlertState::Firing)
}

#[test]
fn memory_above_6gib_for_5_minutes() {
    let rs = rules();
    // 4.8 GB for 10 minutes, then 7 GiB for 6 minutes, then back to 4.8 GB.
    let mut v = vec![4.8e9; 60];
    v.extend(vec![7.0 * GIB; 36]);
    v.extend(vec![4.8e9; 6]);
    let states = drive(&rs, "memory_used_bytes", "memory-above-6gib", &v);
    // Above from sample 60 (t = 600 s): fires at t = 900 s (sample 90), not before.
    assert_eq!(first_firing(&states), Some(90));
    assert_eq!(states[89], AlertState::Pending);
    assert_eq!(states[96], AlertState::Resolved);
    // A 4-minute spike never fires; the tuned 4.8 GB never does.
    let mut spike = vec![4.8e9; 30];
    spike.extend(vec![7.0 * GIB; 24]);
    spike.extend(vec![4.8e9; 30]);
    assert_eq!(first_firing(&drive(&rs, "memory_used_bytes", "memory-above-6gib", &spike)), None);
}

#[test]
fn cpu_above_12_cores_for_5_minutes() {
    let rs = rules();
    let mut v = vec![10.4; 10];
    v.extend(vec![13.0; 31]);
    let states = drive(&rs, "cpu_cores_used", "cpu-above-12-cores", &v);
    assert_eq!(first_firing(&states), Some(40));
    assert_eq!(first_firing(&drive(&rs, "cpu_cores_used", "cpu-above-12-cores", &[10.4; 60])), None);
    assert_eq!(first_firing(&drive(&rs, "cpu_cores_used", "cpu-above-12-cores", &[12.0; 60])), None);
}

#[test]
fn memory_trend_alert() {
    let rs = rules();
    // One hour at 10 s: rising steadily from 4.0 GB to 5.5 GB (still below the 6 GiB limit).
    let rising: Vec<f64> = (0..361).map(|i| 4.0e9 + 1.5e9 * i as f64 / 360.0 + ((i % 7) as f64 - 3.0) * 1e7).collect();
    let states = drive(&rs, "memory_used_bytes", "memory-trend-rising", &rising);
    assert_eq!(states.last(), Some(&AlertState::Firing));
    assert_eq!(first_firing(&drive(&rs, "memory_used_bytes", "memory-above-6gib", &rising)), None);
    // Flat with noise: no trend alert.
    let flat: Vec<f64> = (0..361).map(|i| 4.8e9 + ((i * 37 % 11) as f64 - 5.0) * 2e7).collect();
    assert_eq!(first_firing(&drive(&rs, "memory_used_bytes", "memory-trend-rising", &flat)), None);
    // A sawtooth (cleanup working) with a slight upward drift but a dip at the end: quiet.
    let mut saw: Vec<f64> = (0..361).map(|i| 4.0e9 + (i % 60) as f64 * 1e7).collect();
    for v in saw.iter_mut().skip(300) {
        *v = 3.9e9;
    }
    assert_eq!(first_firing(&drive(&rs, "memory_used_bytes", "memory-trend-rising", &saw)), None);
}
