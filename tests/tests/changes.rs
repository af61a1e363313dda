//! Corrections and rollouts end to end: a real server, and real agents, each its own
//! process of the `driftwatch-agent` binary with its own directory (config, state dir,
//! watched file, log) and the fleet key they all share; the web2img fixture and its
//! regression policy.
//!
//! - remediation puts a regressed host back to its baseline, comments intact;
//! - a failing health command makes the agent restore the previous file;
//! - every refusal (allowlist, `..`, symlink out, stale hash, unparsable) writes nothing;
//! - rollouts: pre-flight refusal naming the rule, forced → first wave fires → rolled
//!   back to identical bytes; a resource breach during the bake rolls back; a harmless
//!   change completes and promotes the baseline; offline hosts (stopped agents) are
//!   skipped; pause, resume and abort; a host whose agent allows no writes fails the
//!   gate; a server restart resumes a rollout and finishes a rollback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_agent::AgentFile;
use driftwatch_agent::config::{FileCommandsFile, ProcessGroupFile};
use driftwatch_proto::v1::{
    self, alerts_client::AlertsClient, audit_client::AuditClient, baselines_client::BaselinesClient,
    changes_client::ChangesClient,
};
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::*;
use tonic::transport::Channel;

const WEB: &[(&str, &str)] = &[("env", "production"), ("service", "web2img")];
const T: Duration = Duration::from_secs(30);

/// The repository's copies of the web2img fixtures (the tests build without shared/).
fn fixture(name: &str) -> String {
    let path = match name {
        ".env.regressed" => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/scenarios/web2img.env.regressed")
        }
        other => example_configs().join("web2img").join(other),
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn examples_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/rules")
}

/// A server loading the example web2img rules (plus `extra` rule files).
async fn server_with_rules(dir: &Path, extra: &[(&str, &str)]) -> RunningServer {
    server_with(dir, extra, |_| {}).await
}

async fn server_with(dir: &Path, extra: &[(&str, &str)], tune: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::copy(examples_rules().join("web2img.yaml"), rules.join("web2img.yaml")).unwrap();
    for (name, text) in extra {
        std::fs::write(rules.join(name), text).unwrap();
    }
    let mut cfg = ServerConfig::for_tests(dir.join("server"));
    cfg.rules = Some(rules);
    cfg.remediation.min_interval = Duration::from_millis(200);
    tune(&mut cfg);
    start_server_with(cfg).await
}

struct Host {
    id: String,
    /// The host's own directory: its agent's config, state dir and log, and `etc/`.
    dir: PathBuf,
    file: PathBuf,
    config: AgentFile,
    agent: AgentProcess,
}

impl Host {
    /// Take the host offline (its agent process stopped) and wait until the server says so.
    async fn go_offline(&mut self, server: &RunningServer) {
        self.agent.stop().await;
        wait_for(&format!("{} offline", self.id), T, || {
            let s = server.state.clone();
            let id = self.id.clone();
            async move { s.hosts.get(&id).is_some_and(|h| h.connection.is_none()).then_some(()) }
        })
        .await;
    }

    /// Start its agent again with `config` and wait until the server holds its file.
    async fn come_back_with(&mut self, server: &RunningServer, config: AgentFile) {
        self.agent.start_again_with(&config);
        self.config = config;
        wait_for(&format!("{} online", self.id), T, || {
            let s = server.state.clone();
            let id = self.id.clone();
            async move { s.hosts.get(&id).is_some_and(|h| h.connection.is_some()).then_some(()) }
        })
        .await;
        server_file(server, &self.id, &self.file).await;
    }
}

/// The config of a web2img host's agent: labels env=production, service=web2img, the
/// fleet key shared by every host under `root`, the directory of `file` writable, and
/// `reload` / `health` commands for it.
fn web_agent(
    server: &RunningServer,
    root: &Path,
    id: &str,
    file: &Path,
    reload: &[&str],
    health: &[&str],
) -> AgentFile {
    let dir = root.join(id);
    let argv = |a: &[&str]| (!a.is_empty()).then(|| a.iter().map(|s| s.to_string()).collect());
    AgentFile {
        labels: WEB.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        writable: vec![file.parent().unwrap().display().to_string()],
        files: vec![FileCommandsFile {
            path: file.display().to_string(),
            reload: argv(reload),
            health: argv(health),
            timeout: Some("10s".into()),
        }],
        fleet_key_file: Some(fleet_key(root)),
        ..agent_file(&server_url(server), id, &dir.join("state"), &[file.display().to_string()])
    }
}

/// A web2img host: the production .env in its own directory, writable, with
/// reload and health commands of the test's choosing, watched by its own agent process.
async fn web_host(server: &RunningServer, root: &Path, id: &str, health: &[&str]) -> Host {
    web_host_with(server, root, id, &["sh", "-c", "echo reloaded"], health).await
}

async fn web_host_with(server: &RunningServer, root: &Path, id: &str, reload: &[&str], health: &[&str]) -> Host {
    let file = web_file(root, id);
    start_host(root, id, file.clone(), web_agent(server, root, id, &file, reload, health))
}

/// `<root>/<id>/etc/.env.production`, the production fixture.
fn web_file(root: &Path, id: &str) -> PathBuf {
    let app = root.join(id).join("etc");
    std::fs::create_dir_all(&app).unwrap();
    let file = app.join(".env.production");
    std::fs::write(&file, fixture(".env.production")).unwrap();
    file
}

fn start_host(root: &Path, id: &str, file: PathBuf, config: AgentFile) -> Host {
    let dir = root.join(id);
    let agent = AgentProcess::start(&dir, &config);
    Host { id: id.to_string(), dir, file, config, agent }
}

async fn channel(server: &RunningServer) -> Channel {
    connect(&server_url(server)).await
}

fn int_key(s: &v1::FileState, k: &str) -> Option<i64> {
    match key(s, k)?.kind {
        Some(v1::value::Kind::IntValue(i)) => Some(i),
        _ => None,
    }
}

async fn firing(alerts: &mut AlertsClient<Channel>, host: &str) -> Vec<v1::Alert> {
    alerts
        .list_alerts(v1::ListAlertsRequest {
            states: vec![v1::AlertState::Firing as i32],
            host_id: host.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts
}

async fn audit(server: &RunningServer, prefix: &str) -> Vec<v1::AuditEvent> {
    server.engine.flush().await.unwrap();
    AuditClient::new(channel(server).await)
        .list_audit_events(v1::ListAuditEventsRequest {
            action_prefix: prefix.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

fn backups(root: &Path, id: &str) -> usize {
    let dir = root.join(id).join("state").join("backups");
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remediation_restores_a_regressed_host_to_its_baseline_with_comments_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[]).await;
    let host = web_host(&server, dir.path(), "web-1", &["sh", "-c", "echo healthy"]).await;
    server_file(&server, "web-1", &host.file).await;
    let ch = channel(&server).await;
    BaselinesClient::new(ch.clone())
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "web-1".into(),
            name: "web2img-tuned".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The host regresses to the settings the tuning replaced.
    let regressed = fixture(".env.regressed");
    replace_file(&host.file, &regressed);
    let alerts = AlertsClient::new(ch.clone());
    // Remediation may restore the file before a poll sees every alert firing: the
    // event log is the witness that the high alerts fired, the audit log that the
    // server corrected the file.
    wait_for("a remediation applied", T, || {
        let server = &server;
        async move { audit(server, "correction.applied").await.iter().any(|e| e.actor == "driftwatch").then_some(()) }
    })
    .await;
    wait_for("the file restored to its baseline values", T, || {
        let server = &server;
        let file = host.file.clone();
        async move {
            let s = server_file(server, "web-1", &file).await;
            (int_key(&s, "BROWSER_POOL_MAX_SIZE") == Some(12)
                && int_key(&s, "MAX_CONCURRENT_SCREENSHOTS") == Some(32)
                && int_key(&s, "BROWSER_CACHE_MAX_SIZE_MB") == Some(200)
                && int_key(&s, "WORKERS") == Some(8)
                && int_key(&s, "MEMORY_CLEANUP_THRESHOLD") == Some(80))
            .then_some(())
        }
    })
    .await;
    let text = std::fs::read_to_string(&host.file).unwrap();
    for line in regressed.lines().filter(|l| l.starts_with('#')) {
        assert!(text.contains(line), "comment {line:?} survived the correction:\n{text}");
    }
    assert!(text.contains("MAX_CONCURRENT_CONTEXTS=256"), "a key without remediation is left alone:\n{text}");
    let expected: String = regressed
        .lines()
        .map(|l| match l.split_once('=') {
            Some(("BROWSER_POOL_MAX_SIZE", _)) => "BROWSER_POOL_MAX_SIZE=12".to_string(),
            Some(("MAX_CONCURRENT_SCREENSHOTS", _)) => "MAX_CONCURRENT_SCREENSHOTS=32".to_string(),
            Some(("BROWSER_CACHE_MAX_SIZE_MB", _)) => "BROWSER_CACHE_MAX_SIZE_MB=200".to_string(),
            Some(("WORKERS", _)) => "WORKERS=8".to_string(),
            Some(("MEMORY_CLEANUP_THRESHOLD", _)) => "MEMORY_CLEANUP_THRESHOLD=80".to_string(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    assert_eq!(text, expected, "only the five values changed, byte for byte");

    // The high alerts resolve.
    wait_for("no high alert firing", T, || {
        let mut a = alerts.clone();
        async move { firing(&mut a, "web-1").await.iter().all(|x| x.severity < v1::Severity::High as i32).then_some(()) }
    })
    .await;
    server.engine.flush().await.unwrap();
    let events = AlertsClient::new(ch.clone())
        .list_events(v1::ListEventsRequest { limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let fired = |rule: &str| {
        events
            .iter()
            .any(|e| e.kind == v1::AlertEventKind::Fired as i32 && e.alert.as_ref().is_some_and(|a| a.rule == rule))
    };
    for rule in ["browser-pool-max-size-above-20", "workers-above-12", "memory-cleanup-threshold-above-95"] {
        assert!(fired(rule), "{rule} fired before the remediation");
    }
    let corrections = audit(&server, "correction.").await;
    let applied: Vec<_> = corrections.iter().filter(|e| e.action == "correction.applied").collect();
    assert!(!applied.is_empty(), "{corrections:?}");
    assert!(applied.iter().all(|e| e.actor == "driftwatch" && e.detail.contains("remediation")));
    assert!(applied.iter().all(|e| !e.before_hash.is_empty() && e.before_hash != e.after_hash));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remediation_gives_up_on_a_file_another_writer_keeps_regressing() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), &[], |c| c.remediation.max_attempts = 2).await;
    let host = web_host(&server, dir.path(), "web-1", &[]).await;
    server_file(&server, "web-1", &host.file).await;
    let ch = channel(&server).await;
    BaselinesClient::new(ch.clone())
        .pin_baseline(v1::PinBaselineRequest { host_id: "web-1".into(), name: "tuned".into(), ..Default::default() })
        .await
        .unwrap();
    let production = fixture(".env.production");
    let bad = production.replace("WORKERS=8", "WORKERS=16");
    // Another writer (a config manager with the old value) puts the regression back
    // after every correction.
    for attempt in 1..=2 {
        replace_file(&host.file, &bad);
        wait_for(&format!("remediation {attempt}"), T, || {
            let server = &server;
            async move {
                let n = audit(server, "correction.applied").await.iter().filter(|e| e.actor == "driftwatch").count();
                (n >= attempt).then_some(())
            }
        })
        .await;
        wait_for("restored", T, || {
            let file = host.file.clone();
            async move { std::fs::read_to_string(&file).unwrap().contains("WORKERS=8\n").then_some(()) }
        })
        .await;
    }
    replace_file(&host.file, &bad);
    let mut alerts = AlertsClient::new(ch.clone());
    let gave_up = wait_for("the give-up alert", T, || {
        let mut a = alerts.clone();
        async move { firing(&mut a, "web-1").await.into_iter().find(|x| x.rule == "remediation_gave_up") }
    })
    .await;
    assert_eq!(gave_up.group, "driftwatch");
    assert_eq!(gave_up.severity, v1::Severity::High as i32);
    assert_eq!(gave_up.path, host.file.display().to_string());
    assert!(gave_up.annotations["summary"].contains("another writer"), "{:?}", gave_up.annotations);
    assert!(std::fs::read_to_string(&host.file).unwrap().contains("WORKERS=16\n"), "no third attempt");
    let given_up = audit(&server, "remediation.").await;
    assert_eq!(given_up.len(), 1, "{given_up:?}");
    assert_eq!(given_up[0].action, "remediation.gave_up");
    assert_eq!(audit(&server, "correction.applied").await.len(), 2);

    // The operator fixes the file: the rule resolves, and so does the give-up alert.
    replace_file(&host.file, &production);
    wait_for("the give-up alert resolved", T, || {
        let mut a = alerts.clone();
        async move { firing(&mut a, "web-1").await.is_empty().then_some(()) }
    })
    .await;
    let _ = &mut alerts;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_command_puts_the_previous_file_back_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[]).await;
    let host =
        web_host(&server, dir.path(), "web-1", &["sh", "-c", "echo 'health: 503 from /health' >&2; exit 3"]).await;
    server_file(&server, "web-1", &host.file).await;
    let before = std::fs::read(&host.file).unwrap();
    let mut changes = ChangesClient::new(channel(&server).await);
    let r = changes
        .correct(v1::CorrectRequest {
            host_id: "web-1".into(),
            path: host.file.display().to_string(),
            action: set_keys(&[("BROWSER_POOL_MAX_SIZE", "14")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let result = r.result.unwrap();
    assert_eq!(result.outcome, v1::ChangeOutcome::RolledBack as i32, "{result:?}");
    assert!(result.health_output.contains("503 from /health"), "{result:?}");
    assert!(result.reload_output.contains("reloaded"), "{result:?}");
    assert!(result.message.contains("health"), "{}", result.message);
    assert_eq!(std::fs::read(&host.file).unwrap(), before, "the previous bytes are back");
    assert_eq!(result.before_hash, result.after_hash);
    assert!(result.diff.contains("+BROWSER_POOL_MAX_SIZE=14"), "{}", result.diff);
    let events = audit(&server, "correction.rolled_back").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "insecure-local");
    // The server's view catches up with the rollback (the dry run's expected hash is that view).
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "web-1", &host.file, "the rolled-back file", |s| s.content_hash == result.before_hash).await;

    // A dry run shows the exact diff and writes nothing.
    let dry = changes
        .correct(v1::CorrectRequest {
            host_id: "web-1".into(),
            path: host.file.display().to_string(),
            action: set_keys(&[("WORKERS", "10")]),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(dry.outcome, v1::ChangeOutcome::DryRun as i32);
    assert!(dry.diff.contains("-WORKERS=8") && dry.diff.contains("+WORKERS=10"), "{}", dry.diff);
    assert_eq!(std::fs::read(&host.file).unwrap(), before);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let root = dir.path().join("h");
    let allowed = root.join("allowed");
    let outside = root.join("outside");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let ok = allowed.join("app.env");
    let other = outside.join("other.env");
    let target = outside.join("target.env");
    let link = allowed.join("link.env");
    let broken = allowed.join("broken.json");
    std::fs::write(&ok, "# app\nWORKERS=4\n").unwrap();
    std::fs::write(&other, "WORKERS=4\n").unwrap();
    std::fs::write(&target, "WORKERS=4\n").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::write(&broken, "{\"workers\": 4,").unwrap();
    let watch: Vec<String> = [&ok, &other, &link, &broken].iter().map(|p| p.display().to_string()).collect();
    let c = AgentFile {
        writable: vec![allowed.display().to_string()],
        ..agent_file(&server_url(&server), "h1", &root.join("state"), &watch)
    };
    let _agent = AgentProcess::start(&root, &c);
    for p in [&ok, &other, &link] {
        server_file(&server, "h1", p).await;
    }
    let snapshot = |p: &Path| (std::fs::read(p).unwrap(), std::fs::metadata(p).unwrap().modified().unwrap());
    let files = [&ok, &other, &target, &broken];
    let before: Vec<_> = files.iter().map(|p| snapshot(p)).collect();
    let state = |p: &Path| {
        let h = server.state.hosts.get("h1").unwrap();
        h.files.get(&p.display().to_string()).map(|f| f.state()).unwrap()
    };
    let apply = |path: String, expected: String, set: &[(&str, &str)]| v1::ApplyChange {
        change_id: format!("t-{path}-{expected}"),
        path,
        expected_hash: expected,
        set_text: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let send = |c: v1::ApplyChange| {
        let d = server.changes.dispatcher.clone();
        async move { d.apply("h1", c, Duration::from_secs(10)).await.unwrap() }
    };
    let cases = [
        ("outside the allowlist", apply(other.display().to_string(), state(&other).content_hash, &[("WORKERS", "5")])),
        (
            "a `..` path",
            apply(
                format!("{}/../outside/other.env", allowed.display()),
                state(&other).content_hash,
                &[("WORKERS", "5")],
            ),
        ),
        (
            "a symlink out of the root",
            apply(link.display().to_string(), state(&link).content_hash, &[("WORKERS", "5")]),
        ),
    ];
    for (what, change) in cases {
        let r = send(change).await;
        assert_eq!(r.outcome, v1::ChangeOutcome::Refused as i32, "{what}: {r:?}");
        assert!(!r.message.is_empty(), "{what}: says why");
    }
    let stale = send(apply(ok.display().to_string(), "0".repeat(64), &[("WORKERS", "5")])).await;
    assert_eq!(stale.outcome, v1::ChangeOutcome::Conflict as i32, "{stale:?}");
    let unparsable = send(apply(broken.display().to_string(), String::new(), &[("workers", "5")])).await;
    assert!(
        matches!(
            v1::ChangeOutcome::try_from(unparsable.outcome),
            Ok(v1::ChangeOutcome::Rejected | v1::ChangeOutcome::Refused)
        ),
        "{unparsable:?}"
    );
    let broken_hash = server
        .state
        .hosts
        .get("h1")
        .unwrap()
        .files
        .get(&broken.display().to_string())
        .map(|f| f.state().content_hash)
        .unwrap_or_default();
    let unparsable = send(apply(broken.display().to_string(), broken_hash, &[("workers", "5")])).await;
    assert_eq!(unparsable.outcome, v1::ChangeOutcome::Rejected as i32, "{unparsable:?}");
    let unknown = send(v1::ApplyChange {
        change_id: "t-unknown".into(),
        path: ok.display().to_string(),
        expected_hash: state(&ok).content_hash,
        remove_keys: vec!["NOPE".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(unknown.outcome, v1::ChangeOutcome::Rejected as i32, "{unknown:?}");
    let after: Vec<_> = files.iter().map(|p| snapshot(p)).collect();
    assert_eq!(before, after, "nothing was written");
    assert_eq!(backups(&root, ""), 0, "and nothing was backed up");

    // The server side refuses what it can tell is wrong before asking the agent.
    let mut changes = ChangesClient::new(channel(&server).await);
    let e = changes
        .correct(v1::CorrectRequest {
            host_id: "h1".into(),
            path: ok.display().to_string(),
            action: set_keys(&[("DB_PASSWORD", "hunter2hunter2")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("secret"), "{}", e.message());
    let e = changes
        .correct(v1::CorrectRequest { host_id: "h1".into(), path: ok.display().to_string(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = changes
        .correct(v1::CorrectRequest {
            host_id: "h1".into(),
            path: "/nope.env".into(),
            action: set_keys(&[("A", "1")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = changes
        .correct(v1::CorrectRequest {
            host_id: "h1".into(),
            path: ok.display().to_string(),
            action: Some(v1::correct_request::Action::RestoreBaseline(v1::RestoreBaseline::default())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "no baseline: {}", e.message());
    assert_eq!(std::fs::read(&ok).unwrap(), before[0].0);
    server.stop().await.unwrap();
}

/// A fleet of `n` web2img hosts, their files as the server holds them.
async fn fleet(server: &RunningServer, root: &Path, n: usize) -> Vec<Host> {
    let reload = ["sh", "-c", "echo reloaded"];
    let mut hosts = Vec::new();
    for i in 0..n {
        hosts.push(web_host_with(server, root, &format!("web-{i:02}"), &reload, &["sh", "-c", "true"]).await);
    }
    for h in &hosts {
        server_file(server, &h.id, &h.file).await;
    }
    hosts
}

/// The glob naming each fleet host's own file (one directory per host on this machine).
fn fleet_glob(root: &Path) -> PathBuf {
    root.join("web-*").join("etc").join(".env.production")
}

fn start(path: &Path, set: &[(&str, &str)]) -> v1::StartRolloutRequest {
    v1::StartRolloutRequest {
        selector: "service=web2img,env=production".into(),
        path: path.display().to_string(),
        set_keys: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        gate_severity: v1::Severity::High as i32,
        ..Default::default()
    }
}

/// Start a rollout; its id.
async fn started(changes: &mut ChangesClient<Channel>, req: v1::StartRolloutRequest) -> String {
    changes.start_rollout(req).await.unwrap().into_inner().rollout.unwrap().id
}

async fn until_done(changes: &mut ChangesClient<Channel>, id: &str) -> v1::Rollout {
    let mut stream = changes.watch_rollout(v1::WatchRolloutRequest { id: id.into() }).await.unwrap().into_inner();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while let Some(r) =
        tokio::time::timeout_at(deadline, stream.message()).await.expect("rollout ends in time").unwrap()
    {
        last = Some(r);
    }
    last.expect("at least one update")
}

fn hosts_in(r: &v1::Rollout, state: v1::RolloutHostState) -> Vec<String> {
    r.waves.iter().flat_map(|w| &w.hosts).filter(|h| h.state == state as i32).map(|h| h.host_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_rollout_is_refused_then_forced_and_rolled_back_to_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[]).await;
    let hosts = fleet(&server, dir.path(), 20).await;
    let original: BTreeMap<String, Vec<u8>> =
        hosts.iter().map(|h| (h.id.clone(), std::fs::read(&h.file).unwrap())).collect();
    let mut changes = ChangesClient::new(channel(&server).await);

    // Pre-flight: the change would fire the "> 20" rule on every host.
    let req = start(&fleet_glob(dir.path()), &[("BROWSER_POOL_MAX_SIZE", "30")]);
    let e = changes.start_rollout(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("browser-pool-max-size-above-20"), "{}", e.message());
    assert!(e.message().contains("force"), "{}", e.message());
    assert!(audit(&server, "rollout.").await.is_empty(), "a refused rollout never started");

    // Forced: the first wave (one host) fires the rule, the rollout stops and rolls back.
    let r = changes
        .start_rollout(v1::StartRolloutRequest {
            force: true,
            bake: Some(driftwatch_proto::duration::seconds(1)),
            ..req
        })
        .await
        .unwrap()
        .into_inner();
    let started = r.rollout.unwrap();
    assert!(!r.preflight.is_empty());
    assert!(started.forced_past.iter().any(|f| f.rule == "browser-pool-max-size-above-20"));
    let done = until_done(&mut changes, &started.id).await;
    assert_eq!(done.state, v1::RolloutState::RolledBack as i32, "{done:#?}");
    assert!(done.stop_reason.contains("browser-pool-max-size-above-20"), "{}", done.stop_reason);
    let rolled = hosts_in(&done, v1::RolloutHostState::RolledBack);
    assert_eq!(rolled.len(), 1, "only the canary was changed: {done:#?}");
    assert_eq!(hosts_in(&done, v1::RolloutHostState::Waiting).len(), 19, "later waves never started");
    for h in &hosts {
        assert_eq!(std::fs::read(&h.file).unwrap(), original[&h.id], "{}: back to its previous bytes", h.id);
    }
    assert!(backups(dir.path(), &rolled[0]) > 0, "the canary's backup store holds the previous version");
    let steps: Vec<String> = audit(&server, "rollout.").await.into_iter().map(|e| e.action).collect();
    for s in [
        "rollout.started",
        "rollout.wave_started",
        "rollout.host_requested",
        "rollout.host_applied",
        "rollout.gate_failed",
        "rollout.host_rollback_requested",
        "rollout.host_rolled_back",
        "rollout.rolled_back",
    ] {
        assert!(steps.iter().any(|x| x == s), "audit has {s}: {steps:?}");
    }
    // Each step's intent is recorded before its outcome.
    let at = |s: &str| steps.iter().position(|x| x == s).unwrap();
    assert!(at("rollout.host_requested") < at("rollout.host_applied"), "{steps:?}");
    assert!(at("rollout.host_rollback_requested") < at("rollout.host_rolled_back"), "{steps:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harmless_rollout_completes_skips_offline_hosts_and_promotes_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[]).await;
    let mut hosts = fleet(&server, dir.path(), 4).await;
    let ch = channel(&server).await;
    // A selector baseline pinned from web-00: the file of web-00 is what it describes.
    BaselinesClient::new(ch.clone())
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "web-00".into(),
            name: "web2img".into(),
            selector: "service=web2img".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // One host is down for the whole rollout: its agent process is stopped.
    hosts[3].go_offline(&server).await;
    let mut changes = ChangesClient::new(ch.clone());

    // A dry run: the plan and every host's diff, nothing written.
    let before: Vec<Vec<u8>> = hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect();
    let req = v1::StartRolloutRequest {
        waves: vec!["1".into(), "50%".into(), "100%".into()],
        promote_baseline: true,
        host_timeout: Some(driftwatch_proto::duration::seconds(1)),
        ..start(&fleet_glob(dir.path()), &[("BROWSER_POOL_MAX_SIZE", "14")])
    };
    let plan =
        changes.start_rollout(v1::StartRolloutRequest { dry_run: true, ..req.clone() }).await.unwrap().into_inner();
    assert!(plan.preflight.is_empty(), "{:?}", plan.preflight);
    let planned = plan.rollout.unwrap();
    assert_eq!(planned.waves.iter().map(|w| w.hosts.len()).collect::<Vec<_>>(), vec![1, 1, 2]);
    let diffs: Vec<&str> = planned.waves.iter().flat_map(|w| &w.hosts).map(|h| h.diff.as_str()).collect();
    assert!(
        diffs[0].contains("-BROWSER_POOL_MAX_SIZE=12") && diffs[0].contains("+BROWSER_POOL_MAX_SIZE=14"),
        "{diffs:?}"
    );
    assert_eq!(
        hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect::<Vec<_>>(),
        before,
        "dry run wrote nothing"
    );
    let listed = changes.list_rollouts(v1::ListRolloutsRequest::default()).await.unwrap().into_inner();
    assert!(listed.rollouts.is_empty(), "a dry run is not a rollout");

    let started = changes.start_rollout(req).await.unwrap().into_inner().rollout.unwrap();
    let done = until_done(&mut changes, &started.id).await;
    assert_eq!(done.state, v1::RolloutState::Succeeded as i32, "{done:#?}");
    assert_eq!(hosts_in(&done, v1::RolloutHostState::Applied).len(), 3);
    let skipped = hosts_in(&done, v1::RolloutHostState::Skipped);
    assert_eq!(skipped, vec!["web-03".to_string()]);
    let web03 = done.waves.iter().flat_map(|w| &w.hosts).find(|h| h.host_id == "web-03").unwrap();
    assert!(web03.message.contains("offline"), "{}", web03.message);
    for h in &hosts[..3] {
        let text = std::fs::read_to_string(&h.file).unwrap();
        assert!(text.contains("BROWSER_POOL_MAX_SIZE=14\n"), "{}: {text}", h.id);
        assert!(text.starts_with("# web2img production settings"), "comments kept");
    }
    assert_eq!(std::fs::read(&hosts[3].file).unwrap(), before[3], "the offline host was not touched");

    // Intended change, not drift: the baseline now says 14.
    assert_eq!(done.promoted_baseline, "web2img");
    let b = BaselinesClient::new(ch.clone())
        .get_baseline(v1::GetBaselineRequest { name: "web2img".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let kv = b.files.iter().flat_map(|f| &f.keys).find(|k| k.key == "BROWSER_POOL_MAX_SIZE").unwrap();
    assert_eq!(kv.value, Some(v1::Value::int(14)));
    assert_eq!(b.version, 2);
    let mut alerts = AlertsClient::new(ch.clone());
    assert!(firing(&mut alerts, "web-00").await.is_empty());
    let listed = changes.list_rollouts(v1::ListRolloutsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.rollouts.len(), 1);
    assert_eq!(listed.rollouts[0].state, v1::RolloutState::Succeeded as i32);
    let promoted = audit(&server, "baseline.").await;
    assert!(promoted.iter().any(|e| e.detail.contains(&started.id) || e.target == "web2img"), "{promoted:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_rolls_back_and_a_restarted_server_resumes_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let mut cfg = ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules);
    let server = start_server_with(cfg.clone()).await;
    let hosts = fleet(&server, dir.path(), 3).await;
    let before: Vec<Vec<u8>> = hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect();
    let mut before_hashes = Vec::new();
    for h in &hosts {
        before_hashes.push(server_file(&server, &h.id, &h.file).await.content_hash);
    }
    let mut changes = ChangesClient::new(channel(&server).await);

    // Abort during the first wave's bake: the canary goes back.
    let req = v1::StartRolloutRequest {
        waves: vec!["1".into(), "100%".into()],
        bake: Some(driftwatch_proto::duration::seconds(60)),
        ..start(&fleet_glob(dir.path()), &[("WORKERS", "9")])
    };
    let r = changes.start_rollout(req.clone()).await.unwrap().into_inner().rollout.unwrap();
    wait_for("the canary applied", T, || {
        let mut c = changes.clone();
        let id = r.id.clone();
        async move {
            let x = c.get_rollout(v1::GetRolloutRequest { id }).await.unwrap().into_inner();
            (hosts_in(&x, v1::RolloutHostState::Applied).len() == 1).then_some(())
        }
    })
    .await;
    let aborted = changes
        .abort_rollout(v1::AbortRolloutRequest { id: r.id.clone(), reason: "wrong ticket".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, v1::RolloutState::Aborted as i32, "{aborted:#?}");
    assert!(aborted.stop_reason.contains("insecure-local") && aborted.stop_reason.contains("wrong ticket"));
    for (h, b) in hosts.iter().zip(&before) {
        assert_eq!(&std::fs::read(&h.file).unwrap(), b, "{} back to its previous bytes", h.id);
    }
    let e =
        changes.abort_rollout(v1::AbortRolloutRequest { id: r.id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "an ended rollout cannot be aborted again");
    // The next rollout plans from the server's view: let it catch up with the rollback.
    let mut fleet = fleet_client(&server).await;
    for (h, hash) in hosts.iter().zip(&before_hashes) {
        wait_file(&mut fleet, &h.id, &h.file, "the rolled-back file", |s| &s.content_hash == hash).await;
    }

    // Restart mid-bake: the rollout is resumed from the store and finishes.
    let r = changes
        .start_rollout(v1::StartRolloutRequest { bake: Some(driftwatch_proto::duration::seconds(2)), ..req })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    wait_for("the canary applied", T, || {
        let mut c = changes.clone();
        let id = r.id.clone();
        async move {
            let x = c.get_rollout(v1::GetRolloutRequest { id }).await.unwrap().into_inner();
            (hosts_in(&x, v1::RolloutHostState::Applied).len() == 1).then_some(())
        }
    })
    .await;
    // Same port: the agents reconnect on their own.
    let mut cfg = cfg;
    cfg.listen = server.grpc_addr;
    server.stop().await.unwrap();
    let server = start_server_with(cfg).await;
    let mut changes = ChangesClient::new(channel(&server).await);
    let done = until_done(&mut changes, &r.id).await;
    assert!(matches!(v1::RolloutState::try_from(done.state), Ok(v1::RolloutState::Succeeded)), "{done:#?}");
    for h in &hosts {
        assert!(std::fs::read_to_string(&h.file).unwrap().contains("WORKERS=9\n"), "{}", h.id);
    }
    server.stop().await.unwrap();
}

/// A process group sampled by the agents of `loaded_fleet`: a test makes one host's
/// resources breach it by starting that host's load program.
const LOAD_RULE: &str = r#"groups:
  - name: canary-load
    rules:
      - name: load-process-running
        selector: {service: web2img}
        target: {resource: process_group.load.count}
        expr: "value > 0.0"
        severity: high
        annotations: {summary: "{{ value }} load processes running"}
"#;

/// The load program of host `id`: a copy of `sleep` under a name only that host's agent
/// counts in its process group `load` (the hosts of a test share one machine).
fn load_program(id: &str) -> String {
    format!("dwload-{id}")
}

/// `sleep` from PATH.
fn sleep_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("sleep")).find(|p| p.is_file()).expect("sleep in PATH")
}

/// `n` web2img hosts whose agents also sample resources (every 200 ms), each counting
/// its own load program as the process group `load`; their files as the server holds them.
async fn loaded_fleet(server: &RunningServer, root: &Path, n: usize) -> Vec<Host> {
    let sleep = sleep_binary();
    let mut hosts = Vec::new();
    for i in 0..n {
        let id = format!("web-{i:02}");
        let file = web_file(root, &id);
        std::fs::copy(&sleep, root.join(&id).join(load_program(&id))).unwrap();
        let config = AgentFile {
            resource_interval: Some("200ms".into()),
            process_groups: vec![ProcessGroupFile { name: "load".into(), pattern: load_program(&id) }],
            ..web_agent(server, root, &id, &file, &["sh", "-c", "true"], &[])
        };
        hosts.push(start_host(root, &id, file, config));
    }
    for h in &hosts {
        server_file(server, &h.id, &h.file).await;
    }
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_breach_on_the_canary_during_the_bake_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[("load.yaml", LOAD_RULE)]).await;
    let hosts = loaded_fleet(&server, dir.path(), 3).await;
    let originals: Vec<Vec<u8>> = hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect();
    let mut changes = ChangesClient::new(channel(&server).await);
    // WORKERS 8 → 10 fires no rule: pre-flight lets it through.
    let r = changes
        .start_rollout(v1::StartRolloutRequest {
            waves: vec!["1".into(), "100%".into()],
            bake: Some(driftwatch_proto::duration::seconds(30)),
            ..start(&fleet_glob(dir.path()), &[("WORKERS", "10")])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.preflight.is_empty());
    let id = r.rollout.unwrap().id;
    let applied = wait_for("the canary baking", T, || {
        let mut c = changes.clone();
        let id = id.clone();
        async move {
            let x = c.get_rollout(v1::GetRolloutRequest { id }).await.unwrap().into_inner();
            let applied = hosts_in(&x, v1::RolloutHostState::Applied);
            (x.waves[0].bake_until.is_some() && applied.len() == 1).then_some(applied)
        }
    })
    .await;
    let canary = hosts.iter().find(|h| h.id == applied[0]).expect("the canary is one of the hosts");
    assert!(std::fs::read_to_string(&canary.file).unwrap().contains("WORKERS=10\n"), "the canary has the change");
    // The new setting makes the canary start a process its agent counts in `load`.
    let mut load = std::process::Command::new(canary.dir.join(load_program(&canary.id)));
    load.arg("60");
    let _load = ChildProcess::spawn("load", load, None).unwrap();
    let done = until_done(&mut changes, &id).await;
    assert_eq!(done.state, v1::RolloutState::RolledBack as i32, "{done:#?}");
    assert!(done.stop_reason.contains("load-process-running"), "{}", done.stop_reason);
    assert!(done.findings.iter().any(|f| f.rule == "load-process-running" && f.host_id == canary.id));
    for (h, b) in hosts.iter().zip(&originals) {
        assert_eq!(&std::fs::read(&h.file).unwrap(), b, "{} back to its previous content", h.id);
    }
    assert_eq!(hosts_in(&done, v1::RolloutHostState::Waiting).len(), 2, "the second wave never started");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_resumes_or_aborts_and_a_refusing_host_fails_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_rules(dir.path(), &[]).await;
    let mut hosts = fleet(&server, dir.path(), 3).await;
    let originals: Vec<Vec<u8>> = hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect();
    let mut changes = ChangesClient::new(channel(&server).await);
    let reader = changes.clone();
    let state_of = |id: String| {
        let mut c = reader.clone();
        async move { c.get_rollout(v1::GetRolloutRequest { id }).await.unwrap().into_inner() }
    };

    // Forced past pre-flight, pausing on failure: the canary's alert pauses it.
    let id = started(
        &mut changes,
        v1::StartRolloutRequest {
            waves: vec!["1".into(), "2".into(), "100%".into()],
            force: true,
            on_failure: v1::OnFailure::Pause as i32,
            ..start(&fleet_glob(dir.path()), &[("BROWSER_POOL_MAX_SIZE", "30")])
        },
    )
    .await;
    let paused = wait_for("paused", T, || {
        let f = state_of(id.clone());
        async move { Some(f.await).filter(|r| r.state == v1::RolloutState::Paused as i32) }
    })
    .await;
    assert!(paused.stop_reason.contains("browser-pool-max-size-above-20"), "{}", paused.stop_reason);
    assert_eq!(hosts_in(&paused, v1::RolloutHostState::Applied).len(), 1, "paused, not rolled back");
    // Resumed: the next wave goes out and pauses again on its own alert.
    changes.resume_rollout(v1::ResumeRolloutRequest { id: id.clone(), ..Default::default() }).await.unwrap();
    wait_for("paused after wave 2", T, || {
        let f = state_of(id.clone());
        async move {
            Some(f.await).filter(|r| {
                r.state == v1::RolloutState::Paused as i32 && hosts_in(r, v1::RolloutHostState::Applied).len() == 2
            })
        }
    })
    .await;
    let aborted = changes
        .abort_rollout(v1::AbortRolloutRequest { id: id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, v1::RolloutState::Aborted as i32, "{aborted:#?}");
    assert_eq!(hosts_in(&aborted, v1::RolloutHostState::RolledBack).len(), 2);
    for (h, b) in hosts.iter().zip(&originals) {
        assert_eq!(&std::fs::read(&h.file).unwrap(), b, "{} back to its previous content", h.id);
    }
    let e =
        changes.resume_rollout(v1::ResumeRolloutRequest { id: id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // A host whose agent refuses (restarted with nothing writable) fails the wave's gate:
    // the applied hosts go back.
    let order: Vec<String> = {
        let mut ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
        ids.sort();
        ids
    };
    let refusing = hosts.iter_mut().find(|h| h.id == order[1]).unwrap();
    refusing.go_offline(&server).await;
    let no_writes = AgentFile { writable: Vec::new(), ..refusing.config.clone() };
    refusing.come_back_with(&server, no_writes).await;
    let id = started(
        &mut changes,
        v1::StartRolloutRequest {
            waves: vec!["1".into(), "100%".into()],
            ..start(&fleet_glob(dir.path()), &[("BROWSER_POOL_MAX_SIZE", "14")])
        },
    )
    .await;
    let done = until_done(&mut changes, &id).await;
    assert_eq!(done.state, v1::RolloutState::RolledBack as i32, "{done:#?}");
    assert!(done.stop_reason.contains(&order[1]) && done.stop_reason.contains("refused"), "{}", done.stop_reason);
    assert_eq!(hosts_in(&done, v1::RolloutHostState::Failed), vec![order[1].clone()]);
    for (h, b) in hosts.iter().zip(&originals) {
        assert_eq!(&std::fs::read(&h.file).unwrap(), b, "{} back to its previous content", h.id);
    }
    server.stop().await.unwrap();
}

/// The server's view of a host's file lags that host's result by the agent's watcher
/// (debounce, read, spool, send): a wave whose gate fails at once (another host refused)
/// must still roll back a host that applied the change before the server saw its new
/// file. A watcher debounce of 2 s makes that window certain.
/// (`rollback_host` once took that stale view for "already back".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wave_rolls_back_a_host_whose_new_file_the_server_has_not_seen_yet() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = server_with_rules(root, &[]).await;
    let reload: &[&str] = &["sh", "-c", "true"];
    let file = web_file(root, "web-00");
    let slow = AgentFile { debounce: Some("2s".into()), ..web_agent(&server, root, "web-00", &file, reload, &[]) };
    let slow = start_host(root, "web-00", file, slow);
    let file = web_file(root, "web-01");
    let refusing = AgentFile { writable: Vec::new(), ..web_agent(&server, root, "web-01", &file, reload, &[]) };
    let refusing = start_host(root, "web-01", file, refusing);
    for h in [&slow, &refusing] {
        server_file(&server, &h.id, &h.file).await;
    }
    let before = std::fs::read(&slow.file).unwrap();
    let mut changes = ChangesClient::new(channel(&server).await);
    let id = started(
        &mut changes,
        v1::StartRolloutRequest {
            waves: vec!["100%".into()],
            ..start(&fleet_glob(root), &[("BROWSER_POOL_MAX_SIZE", "14")])
        },
    )
    .await;
    let done = until_done(&mut changes, &id).await;
    assert_eq!(done.state, v1::RolloutState::RolledBack as i32, "{done:#?}");
    assert_eq!(hosts_in(&done, v1::RolloutHostState::Failed), vec!["web-01".to_string()]);
    assert_eq!(std::fs::read(&slow.file).unwrap(), before, "web-00 back to its previous bytes: {done:#?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_cut_short_by_a_server_restart_is_finished_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::copy(examples_rules().join("web2img.yaml"), rules.join("web2img.yaml")).unwrap();
    let mut cfg = ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules);
    let server = start_server_with(cfg.clone()).await;
    // A slow reload: the canary's rollback is still running its reload when the server
    // stops (the restored file itself is already written and reported).
    let mut hosts = Vec::new();
    for i in 0..2 {
        let id = format!("web-{i:02}");
        hosts.push(web_host_with(&server, dir.path(), &id, &["sh", "-c", "sleep 1"], &[]).await);
    }
    for h in &hosts {
        server_file(&server, &h.id, &h.file).await;
    }
    let before: Vec<Vec<u8>> = hosts.iter().map(|h| std::fs::read(&h.file).unwrap()).collect();
    let mut changes = ChangesClient::new(channel(&server).await);
    let id = started(
        &mut changes,
        v1::StartRolloutRequest {
            waves: vec!["1".into(), "100%".into()],
            force: true,
            ..start(&fleet_glob(dir.path()), &[("BROWSER_POOL_MAX_SIZE", "30")])
        },
    )
    .await;
    let rolling = wait_for("the rollback under way", T, || {
        let mut c = changes.clone();
        let id = id.clone();
        async move {
            let r = c.get_rollout(v1::GetRolloutRequest { id }).await.unwrap().into_inner();
            Some(r).filter(|r| r.rolling_back_to == v1::RolloutState::RolledBack as i32)
        }
    })
    .await;
    assert!(!is_done(&rolling), "{rolling:#?}");
    cfg.listen = server.grpc_addr;
    server.stop().await.unwrap();

    let restarted_ms = driftwatch_proto::now_millis();
    let server = start_server_with(cfg).await;
    let mut changes = ChangesClient::new(channel(&server).await);
    let done = until_done(&mut changes, &id).await;
    assert_eq!(done.state, v1::RolloutState::RolledBack as i32, "{done:#?}");
    assert_eq!(done.rolling_back_to, 0);
    // The second server finished it: its end is recorded after the restart.
    let end = audit(&server, "rollout.rolled_back").await;
    assert_eq!(end.len(), 1, "{end:?}");
    assert!(driftwatch_proto::timestamp_millis(end[0].at.as_ref().unwrap()) >= restarted_ms, "{end:?}");
    assert_eq!(hosts_in(&done, v1::RolloutHostState::RolledBack).len(), 1, "{done:#?}");
    for (h, b) in hosts.iter().zip(&before) {
        assert_eq!(&std::fs::read(&h.file).unwrap(), b, "{} back to its previous bytes", h.id);
    }
    server.stop().await.unwrap();
}

fn is_done(r: &v1::Rollout) -> bool {
    matches!(
        v1::RolloutState::try_from(r.state),
        Ok(v1::RolloutState::Succeeded
            | v1::RolloutState::Failed
            | v1::RolloutState::RolledBack
            | v1::RolloutState::Aborted)
    )
}
