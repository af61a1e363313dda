//! The alert lifecycle end to end: hot reload of rules (and a broken file keeping
//! the previous rules), `for` timers, acknowledgements, silences, agent-offline
//! rules, evaluation errors that do not stop other rules, events that survive a
//! restart, and retention.

use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, alerts_client::AlertsClient, rules_client::RulesClient};
use driftwatch_server::RunningServer;
use driftwatch_tests::*;
use tonic::transport::Channel;

async fn channel(server: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap()
}

async fn find(c: &mut AlertsClient<Channel>, rule: &str, pred: impl Fn(&v1::Alert) -> bool) -> Option<v1::Alert> {
    let states = vec![v1::AlertState::Pending as i32, v1::AlertState::Firing as i32, v1::AlertState::Resolved as i32];
    c.list_alerts(v1::ListAlertsRequest { states, rule: rule.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .alerts
        .into_iter()
        .find(|a| pred(a))
}

async fn wait_state(c: &mut AlertsClient<Channel>, rule: &str, state: v1::AlertState) -> v1::Alert {
    let mut c = c.clone();
    wait_for(&format!("{rule} {state:?}"), Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { find(&mut c, rule, |a| a.state == state as i32).await }
    })
    .await;
    find(&mut c, rule, |a| a.state == state as i32).await.unwrap()
}

fn is(a: &v1::Alert, s: v1::AlertState) -> bool {
    a.state == s as i32
}

const RULES: &str = r#"groups:
  - name: app
    rules:
      - name: workers-high
        target: {file: "**/*.env", key: WORKERS}
        expr: "is_number(value) && double(value) > 10.0"
        severity: high
        labels: {team: platform}
        annotations: {summary: "WORKERS {{ value }} on {{ host }}"}
      # NAME is a string: double() of it is an evaluation error, every time.
      - name: name-as-number
        target: {file: "**/*.env", key: NAME}
        expr: "double(value) > 1.0"
        severity: low
      - name: slow-burn
        target: {file: "**/*.env", key: RETRIES}
        expr: "is_number(value) && value > 3"
        for: 1s
        severity: medium
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_for_ack_silence_offline_errors_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("app.yaml"), RULES).unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, "WORKERS=4\nNAME=web\nRETRIES=1\n").unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules.clone());
    let server = start_server_with(cfg.clone()).await;
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(agent_config(&server, "h1", &agent_dir, &[file.display().to_string()])).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "h1", &file, "parsed", |s| !s.keys.is_empty()).await;
    let ch = channel(&server).await;
    let mut alerts = AlertsClient::new(ch.clone());
    let mut rules_api = RulesClient::new(ch.clone());

    // A rule failing to evaluate does not stop the others; it is counted.
    std::fs::write(&file, "WORKERS=16\nNAME=web\nRETRIES=1\n").unwrap();
    let fired = wait_state(&mut alerts, "workers-high", v1::AlertState::Firing).await;
    assert_eq!(fired.key, "WORKERS");
    assert_eq!(fired.value, Some(v1::Value::int(16)));
    assert_eq!(fired.annotations.get("summary").map(String::as_str), Some("WORKERS 16 on h1"));
    assert_eq!(fired.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(fired.labels.get("env").map(String::as_str), Some("test"), "host labels are alert labels");
    assert!(find(&mut alerts, "name-as-number", |_| true).await.is_none(), "an error never fires");
    assert!(server.metrics.render().contains("driftwatch_rule_evaluation_errors_total"));
    assert!(!server.metrics.render().contains("driftwatch_rule_evaluation_errors_total 0\n"));

    // `for: 1s`: pending first, firing a second later without another change.
    std::fs::write(&file, "WORKERS=16\nNAME=web\nRETRIES=5\n").unwrap();
    let p = wait_state(&mut alerts, "slow-burn", v1::AlertState::Pending).await;
    let f = wait_state(&mut alerts, "slow-burn", v1::AlertState::Firing).await;
    let waited = driftwatch_proto::timestamp_millis(&f.fired_at.unwrap())
        - driftwatch_proto::timestamp_millis(&p.active_since.unwrap());
    assert!(waited >= 1000, "fired {waited} ms after it became pending");

    // Acknowledge: the caller (the server fills it in) and why, an event, and a clear
    // error for unknown alerts.
    let acked = alerts
        .acknowledge(v1::AcknowledgeRequest { fingerprint: fired.fingerprint.clone(), comment: "looking".into() })
        .await
        .unwrap()
        .into_inner();
    let ack = acked.acknowledged.as_ref().unwrap();
    assert_eq!((ack.actor.as_str(), ack.comment.as_str()), ("insecure-local", "looking"));
    let e = alerts
        .acknowledge(v1::AcknowledgeRequest { fingerprint: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = alerts.acknowledge(v1::AcknowledgeRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "the fingerprint is required");

    // Silence by labels (regex), then expire it.
    let m = |name: &str, value: &str, op: v1::matcher::Op| v1::Matcher {
        name: name.into(),
        value: value.into(),
        op: op as i32,
    };
    let bad = alerts
        .create_silence(v1::CreateSilenceRequest {
            matchers: vec![m("host", "h(", v1::matcher::Op::Regex)],
            duration: Some(driftwatch_proto::duration::seconds(3600)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("invalid regex"), "{bad:?}");
    let silence = alerts
        .create_silence(v1::CreateSilenceRequest {
            matchers: vec![m("host", "h.", v1::matcher::Op::Regex), m("severity", "low", v1::matcher::Op::NotEqual)],
            duration: Some(driftwatch_proto::duration::seconds(3600)),
            comment: "maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silence.state, v1::SilenceState::Active as i32);
    let silenced = wait_for("silenced", Duration::from_secs(10), || {
        let mut a = alerts.clone();
        let fp = fired.fingerprint.clone();
        async move { find(&mut a, "workers-high", |x| x.fingerprint == fp && !x.silenced_by.is_empty()).await }
    })
    .await;
    assert_eq!(silenced.silenced_by, vec![silence.id.clone()]);
    let hidden = alerts
        .list_alerts(v1::ListAlertsRequest { hide_silenced: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(hidden.iter().all(|a| a.silenced_by.is_empty()));
    let expired =
        alerts.expire_silence(v1::ExpireSilenceRequest { id: silence.id.clone() }).await.unwrap().into_inner();
    assert_eq!(expired.state, v1::SilenceState::Expired as i32);
    let e = alerts.expire_silence(v1::ExpireSilenceRequest { id: silence.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    wait_for("unsilenced", Duration::from_secs(10), || {
        let mut a = alerts.clone();
        let fp = fired.fingerprint.clone();
        async move { find(&mut a, "workers-high", |x| x.fingerprint == fp && x.silenced_by.is_empty()).await }
    })
    .await;

    // Hot reload: a new rule file is picked up without a restart (polled four times a
    // second; the deadline is generous on purpose: how fast is a figure, not a test).
    let started = Instant::now();
    std::fs::write(
        rules.join("offline.yaml"),
        "groups:\n  - name: fleet\n    rules:\n      - name: agent-offline\n        target: {agent: offline}\n        expr: \"value > 1.0\"\n        severity: critical\n",
    )
    .unwrap();
    wait_for("reloaded rules", Duration::from_secs(20), || {
        let mut r = rules_api.clone();
        async move {
            let l = r.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner();
            l.rules.iter().any(|r| r.name == "agent-offline").then_some(())
        }
    })
    .await;
    println!("rules reloaded {} ms after the file was written", started.elapsed().as_millis());

    // A broken file: refused with file:line:col, the previous rules keep running.
    std::fs::write(rules.join("broken.yaml"), "groups:\n  - name: b\n    rules:\n      - name: x\n        target: {file: \"*.env\", key: A}\n        expr: \"value >\"\n").unwrap();
    let status = wait_for("failed reload", Duration::from_secs(20), || {
        let mut r = rules_api.clone();
        async move {
            let c = r.check_rules(v1::CheckRulesRequest::default()).await.unwrap().into_inner();
            let s = c.status.unwrap();
            (!s.ok).then_some((c.ok, c.problems, s))
        }
    })
    .await;
    assert!(!status.0);
    let problem = &status.1[0];
    assert_eq!(problem.file, "broken.yaml");
    assert!(problem.line >= 6 && problem.column > 0, "{problem:?}");
    assert!(server.metrics.render().contains("driftwatch_rules_last_reload_success 0"));
    let listed = rules_api.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner();
    assert!(listed.rules.iter().any(|r| r.name == "agent-offline") && listed.rules.len() == 4);
    // Still evaluating with the previous rules.
    std::fs::write(&file, "WORKERS=4\nNAME=web\nRETRIES=5\n").unwrap();
    wait_state(&mut alerts, "workers-high", v1::AlertState::Resolved).await;
    std::fs::remove_file(rules.join("broken.yaml")).unwrap();
    wait_for("good reload", Duration::from_secs(20), || {
        let mut r = rules_api.clone();
        async move { r.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner().status.unwrap().ok.then_some(()) }
    })
    .await;

    // Agent offline for more than a second: fires; back: resolves.
    agent.stop().await.unwrap();
    let off = wait_state(&mut alerts, "agent-offline", v1::AlertState::Firing).await;
    assert_eq!((off.host_id.as_str(), off.severity), ("h1", v1::Severity::Critical as i32));
    let agent = start_agent(agent_config(&server, "h1", &agent_dir, &[file.display().to_string()])).await;
    wait_state(&mut alerts, "agent-offline", v1::AlertState::Resolved).await;

    // Events: every transition, ack and silence change, ids strictly increasing.
    server.engine.flush().await.unwrap();
    let events = alerts.list_events(v1::ListEventsRequest::default()).await.unwrap().into_inner().events;
    let kinds = |fp: &str| -> Vec<i32> {
        events.iter().filter(|e| e.alert.as_ref().unwrap().fingerprint == fp).map(|e| e.kind).collect()
    };
    use v1::AlertEventKind as K;
    assert_eq!(
        kinds(&fired.fingerprint),
        [K::Fired, K::Acknowledged, K::Silenced, K::Unsilenced, K::Resolved].map(|k| k as i32),
    );
    assert!(events.windows(2).all(|w| w[1].id > w[0].id));
    let last_id = events.last().unwrap().id;

    // Restart: alert states, acks and events are back; new ids continue above the old.
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    let server = start_server_with(cfg).await;
    let mut alerts = AlertsClient::new(channel(&server).await);
    let slow = find(&mut alerts, "slow-burn", |_| true).await.unwrap();
    assert!(is(&slow, v1::AlertState::Firing), "{slow:#?}");
    let before = alerts.list_events(v1::ListEventsRequest::default()).await.unwrap().into_inner().events;
    // Every event from before the restart is there, unchanged (the offline rule may have
    // added one between the agent's and the server's stop).
    assert_eq!(before[..events.len()], events[..]);
    // The agent is offline again (since the restart): a new event, with a higher id.
    let off = wait_state(&mut alerts, "agent-offline", v1::AlertState::Firing).await;
    server.engine.flush().await.unwrap();
    let after =
        alerts.list_events(v1::ListEventsRequest { after_id: last_id, limit: 0 }).await.unwrap().into_inner().events;
    assert!(after.iter().any(|e| e.alert.as_ref().unwrap().fingerprint == off.fingerprint && e.id > last_id));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_service_checks_inline_files_and_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(example_configs().join("../rules"));
    let server = start_server_with(cfg).await;
    let mut r = RulesClient::new(channel(&server).await);
    let listed = r.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.rules.len(), server.rules.as_ref().unwrap().len());
    assert!(listed.rules.iter().any(|x| x.name == "memory-above-6gib"
        && x.r#for == Some(driftwatch_proto::duration::seconds(300))
        && x.source == "web2img.yaml"));
    let bad = "groups:\n  - name: g\n    rules:\n      - name: a\n        target: {file: \"*.env\", key: A}\n        expr: \"value > 'x' + 1\"\n      - name: b\n        target: {file: \"*.env\", key: B}\n        expr: \"nosuchfn(value)\"\n      - name: c\n        target: {file: \"*.env\", key: C}\n        expr: \"string(value).matches('(')\"\n";
    let c = r
        .check_rules(v1::CheckRulesRequest {
            files: vec![v1::RuleFile { name: "bad.yaml".into(), content: bad.into() }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!c.ok);
    assert_eq!(c.problems.len(), 3, "{:#?}", c.problems);
    assert!(c.problems.iter().all(|p| p.file == "bad.yaml" && p.line > 0 && p.column > 0), "{:#?}", c.problems);
    let good = std::fs::read_to_string(example_configs().join("../rules/web2img.yaml")).unwrap();
    let c = r
        .check_rules(v1::CheckRulesRequest { files: vec![v1::RuleFile { name: "w.yaml".into(), content: good }] })
        .await
        .unwrap()
        .into_inner();
    assert!(c.ok && c.rules > 0, "{c:#?}");
    // No host is known yet: every selector matches nothing, a warning placed at the rule.
    assert_eq!(c.warnings.len() as u32, c.rules, "{:#?}", c.warnings);
    let w = c.warnings.iter().find(|w| w.message.contains("\"workers-above-12\"")).unwrap();
    assert!(w.file == "w.yaml" && w.line > 1 && w.column > 1 && w.message.contains("matches none"), "{w:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_resolved_alerts_keeps_firing_ones_and_rolls_up_resources() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("app.yaml"), RULES).unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, "WORKERS=16\nNAME=web\nRETRIES=9\n").unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules);
    cfg.retention.alerts = Duration::from_secs(1);
    cfg.retention.raw_resources = Duration::from_secs(2);
    cfg.retention.interval = Duration::from_millis(300);
    let server = start_server_with(cfg).await;
    let mut acfg = agent_config(&server, "h1", &dir.path().join("agent"), &[file.display().to_string()]);
    acfg.resource_interval = Duration::from_millis(200);
    let agent = start_agent(acfg).await;
    let mut alerts = AlertsClient::new(channel(&server).await);
    let workers = wait_state(&mut alerts, "workers-high", v1::AlertState::Firing).await;
    wait_state(&mut alerts, "slow-burn", v1::AlertState::Firing).await;
    // One resolves; after the retention it is gone, the firing one (never acknowledged) stays.
    std::fs::write(&file, "WORKERS=4\nNAME=web\nRETRIES=9\n").unwrap();
    wait_state(&mut alerts, "workers-high", v1::AlertState::Resolved).await;
    wait_for("resolved alert pruned", Duration::from_secs(10), || {
        let mut a = alerts.clone();
        let fp = workers.fingerprint.clone();
        async move { find(&mut a, "workers-high", |x| x.fingerprint == fp).await.is_none().then_some(()) }
    })
    .await;
    // Two more retention passes, then the firing alert must still be there.
    let passes = server.metrics.retention_passes.get();
    wait_for("two more retention passes", Duration::from_secs(10), || {
        let done = server.metrics.retention_passes.get() >= passes + 2;
        async move { done.then_some(()) }
    })
    .await;
    let slow = find(&mut alerts, "slow-burn", |_| true).await.expect("firing alert kept");
    assert!(is(&slow, v1::AlertState::Firing));

    // Samples older than the raw retention are rolled up into 5-minute buckets.
    let db = dir.path().join("server/driftwatch.db");
    wait_for("rollups", Duration::from_secs(15), || {
        let db = db.clone();
        async move {
            let stats = driftwatch_store::Store::open(&db).unwrap().stats().unwrap();
            (stats.resource_rollups > 0).then_some(())
        }
    })
    .await;

    // The summary counts rolled-up and raw samples alike.
    let fleet = fleet_client(&server).await;
    let summary = wait_for("resource samples", Duration::from_secs(10), || {
        let mut f = fleet.clone();
        async move {
            let s = f
                .get_resource_summary(v1::GetResourceSummaryRequest {
                    host_id: "h1".into(),
                    window: Some(driftwatch_proto::duration::seconds(3600)),
                    metrics: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            s.metrics.iter().find(|m| m.metric == "memory_used_bytes" && m.count >= 15).cloned()
        }
    })
    .await;
    assert!(summary.min <= summary.avg && summary.avg <= summary.max && summary.max > 0.0, "{summary:?}");
    let mut fleet = fleet;
    let e = fleet
        .get_resource_summary(v1::GetResourceSummaryRequest {
            host_id: "h1".into(),
            window: Some(driftwatch_proto::duration::ProtoDuration { seconds: -60, nanos: 0 }),
            metrics: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = fleet
        .get_resource_summary(v1::GetResourceSummaryRequest { host_id: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_rules_compare_with_pinned_resource_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("mem.yaml"),
        "groups:\n  - name: mem\n    rules:\n      - name: memory-up-50-percent-from-baseline\n        target: {resource: memory_used_bytes}\n        expr: \"baseline != null && value > baseline * 1.5\"\n        severity: medium\n",
    )
    .unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules);
    let server = start_server_with(cfg).await;
    let url = format!("http://{}", server.grpc_addr);
    let mut agent = SampleAgent::connect(&url, "db-1", &[("env", "production")]).await;
    let t0 = driftwatch_proto::now_millis() - 600_000;
    let gib = (1u64 << 30) as f64;
    agent.send(&[(t0, 2.0 * gib, 1.0)]).await;
    let ch = channel(&server).await;
    let mut baselines = v1::baselines_client::BaselinesClient::new(ch.clone());
    // No baseline: `baseline` is null and the rule holds its peace.
    agent.send(&[(t0 + 10_000, 4.0 * gib, 1.0)]).await;
    server.engine.flush().await.unwrap();
    let mut alerts = AlertsClient::new(ch);
    assert!(find(&mut alerts, "memory-up-50-percent-from-baseline", |_| true).await.is_none());
    let e = baselines
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "db-1".into(),
            name: "db".into(),
            include_resources: true,
            resource_metrics: vec!["no_such_metric".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let b = baselines
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "db-1".into(),
            name: "db".into(),
            include_resources: true,
            resource_metrics: vec!["memory_used_bytes".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.resources, vec![v1::ResourceExpectation { metric: "memory_used_bytes".into(), value: 4.0 * gib }]);
    agent.send(&[(t0 + 20_000, 7.0 * gib, 1.0)]).await;
    let a = wait_state(&mut alerts, "memory-up-50-percent-from-baseline", v1::AlertState::Firing).await;
    assert_eq!(a.baseline, Some(v1::Value::float(4.0 * gib)));
    // The new level was intended: raise the expectation; the alert resolves on the next sample.
    baselines
        .set_baseline_keys(v1::SetBaselineKeysRequest {
            name: "db".into(),
            set_resources: vec![v1::ResourceExpectation { metric: "memory_used_bytes".into(), value: 6.5 * gib }],
            ..Default::default()
        })
        .await
        .unwrap();
    agent.send(&[(t0 + 30_000, 7.0 * gib, 1.0)]).await;
    wait_state(&mut alerts, "memory-up-50-percent-from-baseline", v1::AlertState::Resolved).await;
    server.stop().await.unwrap();
}
