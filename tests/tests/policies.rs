//! Every line of the fixtures' regression policies (`shared/fixtures/*/rules.md`),
//! as expressed in `deploy/examples/rules/`, fires and resolves end to end.
//!
//! Config lines: a real agent watches a copy of the fixture file; the test edits the
//! file past the line's limit, waits for the alert to fire, puts the file back and
//! waits for the resolution. Resource lines: the host's memory and CPU cannot be
//! driven to 6 GiB / 12 cores on a test machine, so a protocol-level agent streams
//! the samples a real agent would send (same gRPC stream, same messages), with
//! sample times spread over the minutes the rule needs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_proto::v1::{self, alerts_client::AlertsClient, baselines_client::BaselinesClient};
use driftwatch_server::RunningServer;
use driftwatch_tests::*;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn rules_dir() -> PathBuf {
    example_configs().join("../rules")
}

async fn channel(server: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap()
}

fn all_states() -> Vec<i32> {
    vec![v1::AlertState::Pending as i32, v1::AlertState::Firing as i32, v1::AlertState::Resolved as i32]
}

/// The alerts of `rule` on `host` in `state` (any subject).
async fn alerts_of(c: &mut AlertsClient<Channel>, host: &str, rule: &str, state: v1::AlertState) -> Vec<v1::Alert> {
    c.list_alerts(v1::ListAlertsRequest {
        states: vec![state as i32],
        host_id: host.into(),
        rule: rule.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .alerts
}

async fn wait_alert(
    c: &mut AlertsClient<Channel>,
    host: &str,
    rule: &str,
    key: Option<&str>,
    state: v1::AlertState,
) -> v1::Alert {
    let what = format!("{rule} on {host} ({key:?}) to be {state:?}");
    let mut c2 = c.clone();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let list = alerts_of(c, host, rule, state).await;
            if let Some(a) = list.into_iter().find(|a| key.is_none_or(|k| a.key == k)) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match found {
        Ok(a) => a,
        Err(_) => {
            let all = c2
                .list_alerts(v1::ListAlertsRequest { states: all_states(), host_id: host.into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .alerts;
            let seen: Vec<String> =
                all.iter().map(|a| format!("{} {} {} state={}", a.rule, a.path, a.key, a.state)).collect();
            panic!("timed out waiting for {what}; alerts on the host: {seen:#?}");
        }
    }
}

/// The event kinds recorded for one alert, in id order.
async fn event_kinds(c: &mut AlertsClient<Channel>, fingerprint: &str) -> Vec<v1::AlertEventKind> {
    let events = c.list_events(v1::ListEventsRequest { after_id: 0, limit: 10_000 }).await.unwrap().into_inner().events;
    let mut last = 0;
    for e in &events {
        assert!(e.id > last, "event ids strictly increase: {} after {last}", e.id);
        last = e.id;
    }
    events
        .iter()
        .filter(|e| e.alert.as_ref().is_some_and(|a| a.fingerprint == fingerprint))
        .map(|e| v1::AlertEventKind::try_from(e.kind).unwrap())
        .collect()
}

struct FileSetup {
    _dir: tempfile::TempDir,
    server: RunningServer,
    agent: driftwatch_agent::RunningAgent,
    alerts: AlertsClient<Channel>,
    file: PathBuf,
    host: &'static str,
}

/// A server with the example rules and a real agent watching one fixture file.
async fn file_setup(fixture: &str, labels: &[(&str, &str)], pin_baseline: bool) -> FileSetup {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    copy_fixtures(&configs);
    let file = configs.join(fixture);
    // Production config files are mode 0600 (gguf-sync policy); start compliant.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules_dir());
    let server = start_server_with(cfg).await;
    let host = "policy-host";
    let mut acfg = agent_config(&server, host, &dir.path().join("agent"), &[file.display().to_string()]);
    acfg.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let agent = start_agent(acfg).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, host, &file, "parsed", |s| !s.keys.is_empty()).await;
    let ch = channel(&server).await;
    if pin_baseline {
        BaselinesClient::new(ch.clone())
            .pin_baseline(v1::PinBaselineRequest {
                host_id: host.into(),
                name: "reviewed".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server.engine.flush().await.unwrap();
    FileSetup { _dir: dir, server, agent, alerts: AlertsClient::new(ch), file, host }
}

/// Break the file, see `rule` fire (on `key`), restore it, see it resolve.
async fn fires_and_resolves(
    fixture: &str,
    labels: &[(&str, &str)],
    pin_baseline: bool,
    rule: &str,
    key: Option<&str>,
    break_it: impl FnOnce(&Path),
) {
    let mut s = file_setup(fixture, labels, pin_baseline).await;
    let original = std::fs::read(&s.file).unwrap();
    s.server.engine.flush().await.unwrap();
    let firing = alerts_of(&mut s.alerts, s.host, rule, v1::AlertState::Firing).await;
    assert!(firing.is_empty(), "{rule} fires on the untouched fixture: {firing:#?}");

    break_it(&s.file);
    let a = wait_alert(&mut s.alerts, s.host, rule, key, v1::AlertState::Firing).await;
    assert_eq!(a.path, s.file.display().to_string());
    assert!(a.fired_at.is_some() && a.labels.get("alertname").map(String::as_str) == Some(rule), "{a:#?}");

    // Put the file back as it was (bytes and mode).
    replace_0600(&s.file, &original);
    let r = wait_alert(&mut s.alerts, s.host, rule, key, v1::AlertState::Resolved).await;
    assert_eq!(r.fingerprint, a.fingerprint, "identity does not depend on the value");
    assert!(r.resolved_at.is_some());
    // The alert list is the engine's memory; events are read from the store: wait until durable.
    s.server.engine.flush().await.unwrap();
    let kinds = event_kinds(&mut s.alerts, &a.fingerprint).await;
    assert_eq!(kinds, vec![v1::AlertEventKind::Fired, v1::AlertEventKind::Resolved], "events of {rule}");
    s.agent.stop().await.unwrap();
    s.server.stop().await.unwrap();
}

fn edit(from: &'static str, to: &'static str) -> impl FnOnce(&Path) {
    move |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.contains(from), "fixture {} has no {from:?}", p.display());
        replace_0600(p, text.replacen(from, to, 1).as_bytes());
    }
}

/// Replace a file the way editors do (temp + rename), mode 0600 from the start so
/// no intermediate state has another mode.
fn replace_0600(p: &Path, content: &[u8]) {
    let tmp = p.with_extension("dwtmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

const WEB: &[(&str, &str)] = &[("env", "production"), ("service", "web2img")];
const WEB_ENV: &str = "web2img/.env.production";
const GGUF: &[(&str, &str)] = &[("env", "production"), ("service", "gguf-sync")];
const GGUF_PROD: &str = "gguf-sync/sync-config-production.yaml";

macro_rules! policy {
    ($name:ident, $fixture:expr, $labels:expr, $pin:expr, $rule:expr, $key:expr, $break:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            fires_and_resolves($fixture, $labels, $pin, $rule, $key, $break).await;
        }
    };
}

// web2img/rules.md, one test per table row.
policy!(
    web2img_pool_max_above_20,
    WEB_ENV,
    WEB,
    false,
    "browser-pool-max-size-above-20",
    Some("BROWSER_POOL_MAX_SIZE"),
    edit("BROWSER_POOL_MAX_SIZE=12", "BROWSER_POOL_MAX_SIZE=30")
);
policy!(
    web2img_screenshots_above_100,
    WEB_ENV,
    WEB,
    false,
    "max-concurrent-screenshots-above-100",
    Some("MAX_CONCURRENT_SCREENSHOTS"),
    edit("MAX_CONCURRENT_SCREENSHOTS=32", "MAX_CONCURRENT_SCREENSHOTS=128")
);
policy!(
    web2img_cache_above_500,
    WEB_ENV,
    WEB,
    false,
    "browser-cache-max-size-above-500",
    Some("BROWSER_CACHE_MAX_SIZE_MB"),
    edit("BROWSER_CACHE_MAX_SIZE_MB=200", "BROWSER_CACHE_MAX_SIZE_MB=1000")
);
policy!(
    web2img_workers_above_12,
    WEB_ENV,
    WEB,
    false,
    "workers-above-12",
    Some("WORKERS"),
    edit("WORKERS=8", "WORKERS=16")
);
policy!(
    web2img_cleanup_threshold_above_95,
    WEB_ENV,
    WEB,
    false,
    "memory-cleanup-threshold-above-95",
    Some("MEMORY_CLEANUP_THRESHOLD"),
    edit("MEMORY_CLEANUP_THRESHOLD=80", "MEMORY_CLEANUP_THRESHOLD=97")
);
// 64 → 100 is +56% and under every absolute limit: only the baseline rule sees it.
policy!(
    web2img_numeric_up_50_percent,
    WEB_ENV,
    WEB,
    true,
    "numeric-setting-up-50-percent",
    Some("MAX_CONCURRENT_CONTEXTS"),
    edit("MAX_CONCURRENT_CONTEXTS=64", "MAX_CONCURRENT_CONTEXTS=100")
);
policy!(
    web2img_pool_min_above_max,
    WEB_ENV,
    WEB,
    false,
    "browser-pool-min-above-max",
    None,
    edit("BROWSER_POOL_MIN_SIZE=4", "BROWSER_POOL_MIN_SIZE=15")
);

// gguf-sync/rules.md, one test per line (lines with several settings: one per setting).
policy!(
    gguf_requests_per_second_range,
    GGUF_PROD,
    GGUF,
    false,
    "requests-per-second-out-of-range",
    Some("rate_limiting.requests_per_second"),
    edit("requests_per_second: 1.2", "requests_per_second: 5.0")
);
policy!(
    gguf_requests_per_hour_4800,
    GGUF_PROD,
    GGUF,
    false,
    "requests-per-hour-above-4800",
    Some("rate_limiting.requests_per_hour"),
    edit("requests_per_hour: 4800", "requests_per_hour: 5000")
);
policy!(
    gguf_max_concurrent_range,
    GGUF_PROD,
    GGUF,
    false,
    "max-concurrent-requests-out-of-range",
    Some("rate_limiting.max_concurrent_requests"),
    edit("max_concurrent_requests: 50", "max_concurrent_requests: 0")
);
policy!(
    gguf_completeness_within_0_1,
    GGUF_PROD,
    GGUF,
    false,
    "min-completeness-score-out-of-range",
    Some("validation.min_completeness_score"),
    edit("min_completeness_score: 0.95", "min_completeness_score: 1.5")
);
policy!(
    gguf_production_completeness_0_95,
    GGUF_PROD,
    GGUF,
    false,
    "min-completeness-score-below-0.95",
    Some("validation.min_completeness_score"),
    edit("min_completeness_score: 0.95", "min_completeness_score: 0.9")
);
policy!(
    gguf_production_debug_mode,
    GGUF_PROD,
    GGUF,
    false,
    "debug-mode-on",
    Some("debug_mode"),
    edit("debug_mode: false", "debug_mode: true")
);
policy!(
    gguf_production_log_level,
    GGUF_PROD,
    GGUF,
    false,
    "log-level-debug",
    Some("log_level"),
    edit("log_level: INFO", "log_level: DEBUG")
);
policy!(
    gguf_production_file_verification,
    GGUF_PROD,
    GGUF,
    false,
    "file-verification-off",
    Some("validation.enable_file_verification"),
    edit("enable_file_verification: true", "enable_file_verification: false")
);
policy!(
    gguf_no_token_in_file,
    GGUF_PROD,
    GGUF,
    false,
    "huggingface-token-in-file",
    Some("huggingface_token"),
    edit("huggingface_token: null", "huggingface_token: hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789")
);
policy!(
    gguf_no_secret_in_file,
    GGUF_PROD,
    GGUF,
    false,
    "secret-in-config-file",
    Some("huggingface_token"),
    edit("huggingface_token: null", "huggingface_token: hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789")
);
policy!(gguf_production_mode_0600, GGUF_PROD, GGUF, false, "config-file-mode-not-0600", None, |p: &Path| {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
});
policy!(
    gguf_staging_production_reviewed,
    GGUF_PROD,
    GGUF,
    true,
    "drift-from-reviewed-baseline",
    Some("performance.chunk_size"),
    edit("chunk_size: 100", "chunk_size: 250")
);
policy!(
    gguf_preserve_data_on_failure,
    GGUF_PROD,
    GGUF,
    false,
    "preserve-data-on-failure-off",
    Some("error_handling.preserve_data_on_failure"),
    edit("preserve_data_on_failure: true", "preserve_data_on_failure: false")
);

const GIB: f64 = (1u64 << 30) as f64;

/// Samples every `step` ms from `start`, `n` of them, with memory/cpu from `f(i)`.
fn series(start: i64, step: i64, n: usize, f: impl Fn(usize) -> (f64, f64)) -> Vec<(i64, f64, f64)> {
    (0..n).map(|i| (start + step * i as i64, f(i).0, f(i).1)).collect()
}

async fn resource_setup() -> (tempfile::TempDir, RunningServer, SampleAgent, AlertsClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules_dir());
    let server = start_server_with(cfg).await;
    let agent = SampleAgent::connect(&format!("http://{}", server.grpc_addr), "web-prod-1", WEB).await;
    let alerts = AlertsClient::new(channel(&server).await);
    (dir, server, agent, alerts)
}

// "host memory used | above 6 GiB for 5 minutes | high"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web2img_memory_above_6gib_for_5_minutes() {
    let (_dir, server, mut agent, mut alerts) = resource_setup().await;
    let start = driftwatch_proto::now_millis() - 40 * 60_000;
    let rule = "memory-above-6gib";
    // 5 minutes at 4.8 GiB (the tuned state), then above 6 GiB.
    agent.send(&series(start, 30_000, 10, |_| (4.8 * GIB, 10.0))).await;
    agent.send(&series(start + 300_000, 30_000, 4, |_| (7.0 * GIB, 10.0))).await;
    // Above for 1.5 minutes: pending, not firing.
    let p = wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Pending).await;
    assert_eq!(p.metric, "memory_used_bytes");
    server.engine.flush().await.unwrap();
    assert!(alerts_of(&mut alerts, "web-prod-1", rule, v1::AlertState::Firing).await.is_empty());
    // Still above past the 5 minutes: firing.
    agent.send(&series(start + 420_000, 30_000, 8, |_| (7.0 * GIB, 10.0))).await;
    let f = wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Firing).await;
    assert_eq!(f.severity, v1::Severity::High as i32);
    // A dip ends it.
    agent.send(&series(start + 660_000, 30_000, 2, |_| (4.5 * GIB, 10.0))).await;
    let r = wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Resolved).await;
    assert_eq!(r.fingerprint, f.fingerprint);
    server.engine.flush().await.unwrap();
    let kinds = event_kinds(&mut alerts, &f.fingerprint).await;
    assert_eq!(kinds, [v1::AlertEventKind::Pending, v1::AlertEventKind::Fired, v1::AlertEventKind::Resolved]);
    server.stop().await.unwrap();
}

// "host CPU | above 12 cores' worth for 5 minutes | medium"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web2img_cpu_above_12_cores_for_5_minutes() {
    let (_dir, server, mut agent, mut alerts) = resource_setup().await;
    let start = driftwatch_proto::now_millis() - 40 * 60_000;
    let rule = "cpu-above-12-cores";
    // A 4-minute burst is not enough.
    agent.send(&series(start, 30_000, 8, |_| (4.0 * GIB, 14.0))).await;
    agent.send(&series(start + 240_000, 30_000, 2, |_| (4.0 * GIB, 9.0))).await;
    server.engine.flush().await.unwrap();
    assert!(alerts_of(&mut alerts, "web-prod-1", rule, v1::AlertState::Firing).await.is_empty());
    // Six minutes is.
    agent.send(&series(start + 300_000, 30_000, 13, |_| (4.0 * GIB, 14.0))).await;
    let f = wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Firing).await;
    assert_eq!(f.severity, v1::Severity::Medium as i32);
    agent.send(&series(start + 700_000, 30_000, 1, |_| (4.0 * GIB, 10.4))).await;
    wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Resolved).await;
    server.stop().await.unwrap();
}

// "memory used | rising steadily (trend) over the last hour | low (trend alert)"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web2img_memory_trend_rising_over_the_hour() {
    let (_dir, server, mut agent, mut alerts) = resource_setup().await;
    let start = driftwatch_proto::now_millis() - 3 * 3_600_000;
    let rule = "memory-trend-rising";
    // A flat hour: no trend.
    agent.send(&series(start, 60_000, 61, |_| (4.0 * GIB, 10.0))).await;
    server.engine.flush().await.unwrap();
    assert!(alerts_of(&mut alerts, "web-prod-1", rule, v1::AlertState::Firing).await.is_empty());
    // Then 70 minutes rising from 4 to 5.5 GiB (a leak), never above the 6 GiB line.
    let rising = series(start + 61 * 60_000, 60_000, 70, |i| ((4.0 + 1.5 * i as f64 / 69.0) * GIB, 10.0));
    agent.send(&rising).await;
    let f = wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Firing).await;
    assert_eq!(f.severity, v1::Severity::Low as i32);
    assert_eq!(f.labels.get("kind").map(String::as_str), Some("trend"));
    assert!(alerts_of(&mut alerts, "web-prod-1", "memory-above-6gib", v1::AlertState::Firing).await.is_empty());
    // A restart of the service drops memory: the trend alert resolves.
    agent.send(&series(start + 131 * 60_000, 60_000, 1, |_| (3.0 * GIB, 10.0))).await;
    wait_alert(&mut alerts, "web-prod-1", rule, None, v1::AlertState::Resolved).await;
    server.stop().await.unwrap();
}

// swarm: the shipped JSON Schema of unified_config.yaml, as a rule.
const SWARM: &[(&str, &str)] = &[("env", "production"), ("service", "swarm")];
policy!(
    swarm_unified_config_schema,
    "swarm/unified_config.yaml",
    SWARM,
    false,
    "unified-config-matches-schema",
    None,
    edit("max_agents: 8", "max_agents: 100")
);

// gguf-sync: "production config files are mode 0600 and their directory 0700" (the
// directory half; the agent reports the mode of the directory holding each file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gguf_production_dir_mode_0700() {
    let mut s = file_setup(GGUF_PROD, GGUF, false).await;
    let dir = s.file.parent().unwrap().to_path_buf();
    let rule = "config-dir-mode-not-0700";
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("no dir-mode alert firing", WAIT, || {
        let mut c = s.alerts.clone();
        async move { alerts_of(&mut c, "policy-host", rule, v1::AlertState::Firing).await.is_empty().then_some(()) }
    })
    .await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = wait_alert(&mut s.alerts, s.host, rule, None, v1::AlertState::Firing).await;
    assert_eq!(a.path, s.file.display().to_string());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = wait_alert(&mut s.alerts, s.host, rule, None, v1::AlertState::Resolved).await;
    assert_eq!(r.fingerprint, a.fingerprint);
    s.agent.stop().await.unwrap();
    s.server.stop().await.unwrap();
}
