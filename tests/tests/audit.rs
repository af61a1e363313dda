//! The audit log end to end: baseline edits, an acknowledgement, a silence's life and
//! rule reloads each leave one event with who and what, in id order, hash-chained; a
//! reload that finds nothing new leaves none; filters and paging work; events survive a
//! restart. A correction whose agent never answers leaves its intent and a timeout; one
//! for a host gone offline, its intent and `correction.lost`.

use std::path::Path;
use std::time::Duration;

use driftwatch_proto::audit_chain::{ChainRecord, ChainSummary, ChainVerifier};
use driftwatch_proto::v1::{
    self, alerts_client::AlertsClient, audit_client::AuditClient, baselines_client::BaselinesClient,
    changes_client::ChangesClient, rules_client::RulesClient,
};
use driftwatch_server::RunningServer;
use driftwatch_tests::*;
use tonic::transport::Channel;

const RULES: &str = r#"groups:
  - name: app
    rules:
      - name: workers-high
        target: {file: "**/*.env", key: WORKERS}
        expr: "is_number(value) && double(value) > 10.0"
        severity: high
"#;

const MORE_RULES: &str = r#"groups:
  - name: more
    rules:
      - name: retries-high
        target: {file: "**/*.env", key: RETRIES}
        expr: "is_number(value) && value > 3"
"#;

async fn channel(server: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap()
}

async fn list(c: &mut AuditClient<Channel>, req: v1::ListAuditEventsRequest) -> Vec<v1::AuditEvent> {
    c.list_audit_events(req).await.unwrap().into_inner().events
}

fn actions(events: &[v1::AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

fn ids(events: &[v1::AuditEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// Events whose action starts with `prefix`, once there are at least `n`.
async fn wait_events(c: &AuditClient<Channel>, prefix: &str, n: usize) -> Vec<v1::AuditEvent> {
    wait_for(&format!("{n} audit events {prefix}*"), Duration::from_secs(10), || {
        let mut c = c.clone();
        let req = v1::ListAuditEventsRequest { action_prefix: prefix.into(), ..Default::default() };
        async move {
            let events = list(&mut c, req).await;
            (events.len() >= n).then_some(events)
        }
    })
    .await
}

/// The events' hash chain, checked as `driftwatch audit verify` checks it.
fn chain(events: &[v1::AuditEvent]) -> ChainSummary {
    let mut v = ChainVerifier::new();
    for e in events {
        v.push(&ChainRecord::of_event(e)).unwrap();
    }
    v.finish().unwrap()
}

fn counter(server: &RunningServer, name: &str) -> u64 {
    let text = server.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_filtered_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("app.yaml"), RULES).unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, "WORKERS=16\nNAME=web\nRETRIES=1\n").unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules.clone());
    let server = start_server_with(cfg.clone()).await;
    let agent =
        start_agent(agent_config(&server, "h1", &dir.path().join("agent"), &[file.display().to_string()])).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "h1", &file, "parsed", |s| !s.keys.is_empty()).await;
    let ch = channel(&server).await;
    let mut audit = AuditClient::new(ch.clone());
    let mut b = BaselinesClient::new(ch.clone());
    let mut alerts = AlertsClient::new(ch.clone());
    let mut rules_api = RulesClient::new(ch.clone());
    assert!(list(&mut audit, Default::default()).await.is_empty(), "starting a server is not an audit event");
    let path = file.display().to_string();

    // Baselines: pin, set keys, promote from the host, delete. Each call returns once
    // its version, and the audit event with it, is durable.
    b.pin_baseline(v1::PinBaselineRequest {
        host_id: "h1".into(),
        name: "tuned".into(),
        reason: "launch".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    b.set_baseline_keys(v1::SetBaselineKeysRequest {
        name: "tuned".into(),
        path: path.clone(),
        set: vec![v1::KeyValue { key: "WORKERS".into(), value: Some(v1::Value::int(8)) }],
        remove: vec!["NAME".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    b.set_baseline_keys(v1::SetBaselineKeysRequest {
        name: "tuned".into(),
        path: path.clone(),
        promote_from_host_id: "h1".into(),
        promote_keys: vec!["WORKERS".into()],
        reason: "16 is right".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    b.delete_baseline(v1::DeleteBaselineRequest { name: "tuned".into(), reason: "retired".into() }).await.unwrap();
    let events = list(&mut audit, Default::default()).await;
    assert_eq!(actions(&events), ["baseline.pinned", "baseline.keys_set", "baseline.promoted", "baseline.deleted"]);
    let who: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(who, ["insecure-local"; 4], "the caller, as the server knows it (requests name nobody)");
    assert!(events.iter().all(|e| e.target == "tuned"), "{events:#?}");
    assert!(events[0].detail.contains("version 1") && events[0].detail.contains("host h1"), "{events:#?}");
    assert!(events[0].detail.contains("reason: launch"), "{:?}", events[0].detail);
    assert!(
        events[1].detail.contains("set [WORKERS]") && events[1].detail.contains("removed [NAME]"),
        "{:?}",
        events[1].detail
    );
    assert_eq!((events[1].path.as_str(), events[1].host_id.as_str()), (path.as_str(), ""));
    assert!(events[2].detail.contains("promoted from h1 [WORKERS]"), "{:?}", events[2].detail);
    assert_eq!(events[2].host_id, "h1");
    assert!(events[3].detail.contains("version 4") && events[3].detail.contains("reason: retired"));
    assert!(events.iter().all(|e| e.at.is_some_and(|t| t.seconds > 0)));

    // A firing alert, acknowledged.
    let fired = wait_for("workers-high firing", Duration::from_secs(20), || {
        let mut a = alerts.clone();
        async move {
            let l = a.list_alerts(v1::ListAlertsRequest::default()).await.unwrap().into_inner().alerts;
            l.into_iter().find(|a| a.rule == "workers-high" && a.state == v1::AlertState::Firing as i32)
        }
    })
    .await;
    alerts
        .acknowledge(v1::AcknowledgeRequest { fingerprint: fired.fingerprint.clone(), comment: "looking".into() })
        .await
        .unwrap();

    // A silence, created and expired.
    let silence = alerts
        .create_silence(v1::CreateSilenceRequest {
            matchers: vec![v1::Matcher { name: "alertname".into(), value: "workers-high".into(), op: 0 }],
            duration: Some(driftwatch_proto::duration::seconds(3600)),
            comment: "maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    alerts.expire_silence(v1::ExpireSilenceRequest { id: silence.id.clone() }).await.unwrap();
    let events = list(&mut audit, v1::ListAuditEventsRequest { after_id: 4, ..Default::default() }).await;
    assert_eq!(actions(&events), ["alert.acknowledged", "silence.created", "silence.expired"]);
    let ack = &events[0];
    assert_eq!((ack.actor.as_str(), ack.target.as_str()), ("insecure-local", fired.fingerprint.as_str()));
    assert_eq!((ack.host_id.as_str(), ack.path.as_str()), ("h1", path.as_str()));
    assert!(ack.detail.contains("app/workers-high key WORKERS") && ack.detail.contains("comment: looking"));
    let (created, expired) = (&events[1], &events[2]);
    assert_eq!((created.actor.as_str(), created.target.as_str()), ("insecure-local", silence.id.as_str()));
    assert!(created.detail.contains("alertname=workers-high") && created.detail.contains("comment: maintenance"));
    assert_eq!((expired.actor.as_str(), expired.target.as_str()), ("insecure-local", silence.id.as_str()));
    assert!(expired.detail.contains("created by insecure-local"), "{:?}", expired.detail);

    // Rules: a new file is picked up by the poll, as the server itself.
    replace_file(&rules.join("more.yaml"), MORE_RULES);
    let reloaded = wait_events(&audit, "rules.", 1).await;
    let r = &reloaded[0];
    assert_eq!((r.action.as_str(), r.actor.as_str()), ("rules.reloaded", "driftwatch"));
    assert_eq!(r.target, rules.display().to_string());
    assert!(r.detail.contains("2 rules from [app.yaml, more.yaml]"), "{:?}", r.detail);
    assert!(r.before_hash.len() == 64 && r.after_hash.len() == 64 && r.before_hash != r.after_hash, "{r:#?}");

    // The same content written again: the poll reloads, but nothing changed, so no event.
    let reloads = counter(&server, "driftwatch_rules_reloads_total");
    replace_file(&rules.join("more.yaml"), MORE_RULES);
    wait_for("a reload of unchanged rules", Duration::from_secs(10), || {
        let server = &server;
        async move { (counter(server, "driftwatch_rules_reloads_total") > reloads).then_some(()) }
    })
    .await;
    // An explicit reload of unchanged rules: no event either.
    rules_api.reload_rules(v1::ReloadRulesRequest {}).await.unwrap();

    // A broken file: refused with the error, audited once however often it is retried.
    replace_file(
        &rules.join("broken.yaml"),
        "groups:\n  - name: b\n    rules:\n      - name: x\n        target: {file: \"*.env\", key: A}\n        expr: \"value >\"\n",
    );
    let failed = wait_events(&audit, "rules.", 2).await;
    let f = &failed[1];
    assert_eq!((f.action.as_str(), f.actor.as_str()), ("rules.reload_failed", "driftwatch"));
    assert!(f.detail.contains("broken.yaml:") && f.detail.contains("previous rules keep running"), "{:?}", f.detail);
    assert_eq!(f.before_hash, r.after_hash, "the running rules");
    let status = rules_api.reload_rules(v1::ReloadRulesRequest {}).await.unwrap().into_inner().status.unwrap();
    assert!(!status.ok);
    let events = list(&mut audit, Default::default()).await;
    assert_eq!(events.len(), 9, "{:#?}", actions(&events));
    assert_eq!(&actions(&events)[7..], ["rules.reloaded", "rules.reload_failed"]);
    let strictly_increasing = events.windows(2).all(|w| w[1].id > w[0].id);
    assert!(strictly_increasing, "{:?}", ids(&events));
    assert_eq!(chain(&events).records, 9, "every event is chained to the one before it");
    assert!(events[0].prev_hash.is_empty() && events[8].prev_hash == events[7].hash);

    // Filters and paging.
    let page = |r: v1::ListAuditEventsRequest| {
        let mut c = audit.clone();
        async move { list(&mut c, r).await }
    };
    let baseline = page(v1::ListAuditEventsRequest { action_prefix: "baseline.".into(), ..Default::default() }).await;
    assert_eq!(baseline.len(), 4);
    let host = page(v1::ListAuditEventsRequest { host_id: "h1".into(), ..Default::default() }).await;
    assert_eq!(actions(&host), ["baseline.pinned", "baseline.promoted", "baseline.deleted", "alert.acknowledged"]);
    let both = v1::ListAuditEventsRequest { host_id: "h1".into(), action_prefix: "alert".into(), ..Default::default() };
    assert_eq!(actions(&page(both).await), ["alert.acknowledged"]);
    let after = page(v1::ListAuditEventsRequest { after_id: events[6].id, ..Default::default() }).await;
    assert_eq!(ids(&after), ids(&events[7..]));
    let newest = page(v1::ListAuditEventsRequest { newest_first: true, limit: 2, ..Default::default() }).await;
    assert_eq!(ids(&newest), vec![events[8].id, events[7].id]);
    let one = page(v1::ListAuditEventsRequest { limit: 1, ..Default::default() }).await;
    assert_eq!(ids(&one), vec![events[0].id]);
    // Too large a limit is capped, not refused.
    assert_eq!(page(v1::ListAuditEventsRequest { limit: 5000, ..Default::default() }).await, events);
    let none = page(v1::ListAuditEventsRequest { change_id: "nope".into(), ..Default::default() }).await;
    assert!(none.is_empty());
    assert!(page(v1::ListAuditEventsRequest { after_id: u64::MAX, ..Default::default() }).await.is_empty());

    // Restart on the same data: every event is back, and new ids continue above them.
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    std::fs::remove_file(rules.join("broken.yaml")).unwrap();
    let server = start_server_with(cfg).await;
    let ch = channel(&server).await;
    let mut audit = AuditClient::new(ch.clone());
    assert_eq!(list(&mut audit, Default::default()).await, events);
    BaselinesClient::new(ch)
        .pin_baseline(v1::PinBaselineRequest { host_id: "h1".into(), name: "again".into(), ..Default::default() })
        .await
        .unwrap();
    let new = list(&mut audit, v1::ListAuditEventsRequest { after_id: events[8].id, ..Default::default() }).await;
    assert_eq!(actions(&new), ["baseline.pinned"]);
    assert!(new[0].id > events[8].id);
    assert_eq!(new[0].prev_hash, events[8].hash, "the chain goes on across a restart");
    server.stop().await.unwrap();
}

/// A protocol-level agent holding `/etc/app.env` that never answers a change: its
/// stream stays open, what the server sends it is never read.
async fn mute_agent(
    server: &RunningServer,
    content: &str,
) -> (driftwatch_tests::gateway::AgentTx, tonic::Streaming<v1::ServerMessage>, String) {
    use driftwatch_tests::gateway::{hello, open_agent_stream, snapshot};
    let masker = driftwatch_formats::Masker::new(TEST_FLEET_KEY.as_bytes());
    let a = driftwatch_formats::analyze(content.as_bytes(), v1::Format::Env, &masker, &Default::default());
    let state = v1::FileState {
        path: "/etc/app.env".into(),
        format: v1::Format::Env as i32,
        status: a.status as i32,
        exists: true,
        size: content.len() as u64,
        mode: 0o100644,
        content_hash: a.content_hash.clone(),
        keys: a.keys,
        ..Default::default()
    };
    let (tx, inbound) = open_agent_stream(channel(server).await, hello("mute", [], "mute", "mute")).await.unwrap();
    let snap = v1::Snapshot {
        seq: 1,
        full: true,
        full_last: true,
        taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
        files: vec![state],
        ..Default::default()
    };
    tx.send(snapshot(snap)).unwrap();
    (tx, inbound, a.content_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_without_an_answer_leaves_its_intent_and_its_timeout_or_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let (tx, inbound, hash) = mute_agent(&server, "POOL=5\n").await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "mute", Path::new("/etc/app.env"), "held", |s| !s.keys.is_empty()).await;
    let ch = channel(&server).await;
    let mut changes = ChangesClient::new(ch.clone());
    let mut audit = AuditClient::new(ch);
    let correct = v1::CorrectRequest {
        host_id: "mute".into(),
        path: "/etc/app.env".into(),
        action: Some(v1::correct_request::Action::SetKeys(v1::SetKeys {
            values: [("POOL".to_string(), "6".to_string())].into(),
            ..Default::default()
        })),
        reason: "ticket 7".into(),
        timeout: Some(driftwatch_proto::duration::seconds(1)),
        ..Default::default()
    };
    let e = changes.correct(correct.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    let events = list(&mut audit, Default::default()).await;
    assert_eq!(actions(&events), ["correction.requested", "correction.timeout"]);
    let (intent, timeout) = (&events[0], &events[1]);
    assert!(intent.change_id.starts_with("c-") && timeout.change_id == intent.change_id, "{events:#?}");
    assert_eq!((intent.host_id.as_str(), intent.path.as_str()), ("mute", "/etc/app.env"));
    assert_eq!(intent.before_hash, hash);
    assert!(intent.detail.contains("set keys [POOL]") && intent.detail.contains("ticket 7"), "{}", intent.detail);
    assert!(timeout.detail.contains("may still apply"), "{}", timeout.detail);
    assert!(intent.actor == "insecure-local" && timeout.actor == "insecure-local");

    // The host gone: the change is never sent, and the log says so.
    drop((tx, inbound));
    wait_for("mute offline", Duration::from_secs(10), || {
        let s = server.state.clone();
        async move { s.hosts.get("mute").is_some_and(|h| h.connection.is_none()).then_some(()) }
    })
    .await;
    let e = changes.correct(correct).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    let events = list(&mut audit, Default::default()).await;
    assert_eq!(actions(&events)[2..], ["correction.requested", "correction.lost"]);
    assert_eq!(events[3].change_id, events[2].change_id);
    assert_ne!(events[2].change_id, events[0].change_id);
    assert!(events[3].detail.contains("not sent") && events[3].detail.contains("offline"), "{}", events[3].detail);
    assert_eq!(chain(&events).records, 4);
    server.stop().await.unwrap();
}
