//! `Alerts.Subscribe` end to end: the firing snapshot, live events and heartbeats,
//! filters, resuming after a dropped connection and a server restart with no gap
//! and no duplicate, and a subscriber that never reads being cut off with its
//! resume id while another one keeps up.

use std::time::Duration;

use driftwatch_proto::v1::{self, alerts_client::AlertsClient, subscribe_response::Kind};
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const RULES: &str = r#"groups:
  - name: app
    rules:
      - name: setting-above-100
        target: {file: "*.env", key: "*"}
        expr: "is_number(value) && value > 100"
        severity: high
"#;

struct Setup {
    dir: tempfile::TempDir,
    cfg: ServerConfig,
    server: RunningServer,
    agent: driftwatch_agent::RunningAgent,
    file: std::path::PathBuf,
}

/// A server on a fixed port (so the agent finds it again after a restart) with one
/// rule over every key of `app.env`, and an agent watching a file of `keys` keys.
async fn setup(keys: usize, tune: impl FnOnce(&mut ServerConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("r.yaml"), RULES).unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, content(keys, &[])).unwrap();
    let mut cfg = ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(rules);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    tune(&mut cfg);
    let server = start_server_with(cfg.clone()).await;
    let agent =
        start_agent(agent_config(&server, "h1", &dir.path().join("agent"), &[file.display().to_string()])).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "h1", &file, "parsed", |s| s.keys.len() == keys).await;
    Setup { dir, cfg, server, agent, file }
}

/// `K0=1 … K{n-1}=1`, with the keys in `high` at 500.
fn content(n: usize, high: &[usize]) -> String {
    (0..n).map(|i| format!("K{i}={}\n", if high.contains(&i) { 500 } else { 1 })).collect()
}

async fn alerts(server: &RunningServer) -> AlertsClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AlertsClient::new(ch)
}

async fn next(s: &mut tonic::Streaming<v1::SubscribeResponse>) -> Kind {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("a message within 20 s")
        .expect("stream open")
        .expect("no error")
        .kind
        .expect("kind")
}

/// Every event id in the log (after the engine's writes are durable).
async fn logged_ids(server: &RunningServer, c: &mut AlertsClient<Channel>, after: u64) -> Vec<u64> {
    server.engine.flush().await.unwrap();
    let r = c.list_events(v1::ListEventsRequest { after_id: after, limit: 10_000 }).await.unwrap().into_inner();
    r.events.iter().map(|e| e.id).collect()
}

/// Read events until one with id `last` (or beyond) has been considered, per heartbeat or event.
async fn collect_until(s: &mut tonic::Streaming<v1::SubscribeResponse>, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match next(s).await {
            Kind::Event(e) => {
                got.push(e.id);
                if e.id >= last {
                    return got;
                }
            }
            Kind::Heartbeat(h) if h.last_event_id >= last => return got,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_snapshot_live_events_heartbeats_and_filters() {
    let s = setup(3, |_| {}).await;
    std::fs::write(&s.file, content(3, &[0])).unwrap();
    let mut c = alerts(&s.server).await;
    wait_for("K0 firing", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let l = c.list_alerts(v1::ListAlertsRequest::default()).await.unwrap().into_inner().alerts;
            l.iter().any(|a| a.key == "K0" && a.state == v1::AlertState::Firing as i32).then_some(())
        }
    })
    .await;
    s.server.engine.flush().await.unwrap();

    let req = v1::SubscribeRequest {
        include_firing: true,
        heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
        matchers: vec![v1::Matcher { name: "key".into(), value: "K[0-9]".into(), op: v1::matcher::Op::Regex as i32 }],
        ..Default::default()
    };
    let mut sub = c.subscribe(req).await.unwrap().into_inner();
    let other = v1::SubscribeRequest {
        hosts: vec!["another-host".into()],
        heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
        ..Default::default()
    };
    let mut filtered = c.subscribe(other).await.unwrap().into_inner();
    match next(&mut sub).await {
        Kind::Firing(a) => assert_eq!((a.key.as_str(), a.host_id.as_str()), ("K0", "h1")),
        other => panic!("expected the firing snapshot, got {other:?}"),
    }
    std::fs::write(&s.file, content(3, &[0, 1])).unwrap();
    let fired = loop {
        if let Kind::Event(e) = next(&mut sub).await {
            break e;
        }
    };
    assert_eq!(fired.kind, v1::AlertEventKind::Fired as i32);
    assert_eq!(fired.alert.as_ref().unwrap().key, "K1");
    // Heartbeats carry the last event id considered.
    let hb = loop {
        if let Kind::Heartbeat(h) = next(&mut sub).await {
            break h;
        }
    };
    assert!(hb.last_event_id >= fired.id && hb.at.is_some(), "{hb:?}");
    // The other host's subscriber saw no event, only heartbeats that moved past it.
    loop {
        match next(&mut filtered).await {
            Kind::Event(e) => panic!("filtered subscriber got {e:?}"),
            Kind::Heartbeat(h) if h.last_event_id >= fired.id => break,
            _ => {}
        }
    }
    // Bad filters are refused.
    let bad = v1::SubscribeRequest {
        matchers: vec![v1::Matcher { name: "key".into(), value: "(".into(), op: v1::matcher::Op::Regex as i32 }],
        heartbeat_interval: Some(driftwatch_proto::duration::seconds(1000)),
        ..Default::default()
    };
    let e = c.subscribe(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("invalid regex") && e.message().contains("heartbeat_interval"), "{e:?}");
    s.agent.stop().await.unwrap();
    s.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_and_restart_without_gap_or_duplicate() {
    let s = setup(10, |_| {}).await;
    let mut c = alerts(&s.server).await;
    let mut sub = c
        .subscribe(v1::SubscribeRequest {
            heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&s.file, content(10, &[0, 1, 2])).unwrap();
    let ids = collect_until(&mut sub, 3).await;
    assert_eq!(ids, vec![1, 2, 3]);
    drop(sub);

    // While nobody listens: more events, a restart, more events.
    std::fs::write(&s.file, content(10, &[3, 4])).unwrap();
    wait_for("events while disconnected", Duration::from_secs(20), || {
        let (server, mut c) = (&s.server, c.clone());
        async move { (logged_ids(server, &mut c, 0).await.len() >= 8).then_some(()) }
    })
    .await;
    let Setup { dir, cfg, server, agent, file } = s;
    server.stop().await.unwrap();
    let server = start_server_with(cfg).await;
    let mut c = alerts(&server).await;
    std::fs::write(&file, content(10, &[5, 6, 7])).unwrap();
    let expected = wait_for("events after the restart", Duration::from_secs(30), || {
        let (server, mut c) = (&server, c.clone());
        async move {
            let ids = logged_ids(server, &mut c, 3).await;
            (ids.len() >= 5 + 5).then_some(ids)
        }
    })
    .await;

    let mut sub = c
        .subscribe(v1::SubscribeRequest {
            since_event_id: 3,
            heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = collect_until(&mut sub, *expected.last().unwrap()).await;
    assert_eq!(got, expected, "resumed stream = the log after id 3, in order, once each");
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_with_its_resume_id() {
    let s = setup(150, |cfg| {
        cfg.subscriber_stall = Duration::from_millis(500);
        cfg.subscriber_ring = 512;
    })
    .await;
    let mut c = alerts(&s.server).await;
    // Never read (beyond the response head). Its own connection, as a real stuck client
    // has: unread data on a shared HTTP/2 connection would stall the test's other calls.
    // Small HTTP/2 windows, so the client's own buffers (part of what a subscriber may
    // hold unread) fill after a few dozen events.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", s.server.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .http2_adaptive_window(false)
        .connect()
        .await
        .unwrap();
    let mut stuck = AlertsClient::new(ch).subscribe(v1::SubscribeRequest::default()).await.unwrap().into_inner();
    let mut reader = c
        .subscribe(v1::SubscribeRequest {
            heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // 150 keys fire and resolve, 12 times: 3,600 events, more than the client's and the
    // server's HTTP/2 buffers and the subscriber's queue hold.
    let all: Vec<usize> = (0..150).collect();
    let mut fleet = fleet_client(&s.server).await;
    for _ in 0..12 {
        std::fs::write(&s.file, content(150, &all)).unwrap();
        wait_file(&mut fleet, "h1", &s.file, "high", |f| key(f, "K149") == Some(&v1::Value::int(500))).await;
        std::fs::write(&s.file, content(150, &[])).unwrap();
        wait_file(&mut fleet, "h1", &s.file, "low", |f| key(f, "K149") == Some(&v1::Value::int(1))).await;
    }
    let logged = wait_for("3,600 events", Duration::from_secs(30), || {
        let (server, mut c) = (&s.server, c.clone());
        async move {
            let ids = logged_ids(server, &mut c, 0).await;
            (ids.len() >= 3600).then_some(ids)
        }
    })
    .await;
    // The reading subscriber got every one.
    let got = collect_until(&mut reader, *logged.last().unwrap()).await;
    assert_eq!(got, logged);

    // The stuck one: what was queued, then a clear status with the id to resume from.
    let mut delivered = Vec::new();
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stuck.next().await {
                Some(Ok(v1::SubscribeResponse { kind: Some(Kind::Event(e)) })) => delivered.push(e.id),
                Some(Ok(_)) => {}
                Some(Err(st)) => break st,
                None => panic!("stream ended without a status"),
            }
        }
    })
    .await
    .expect("the stuck subscriber is cut off");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status.message().rsplit('=').next().unwrap().parse().unwrap();
    assert!(delivered.len() < logged.len(), "it was cut off before the end");
    assert_eq!(resume, *delivered.last().unwrap_or(&0), "resume from the last delivered: {status:?}");
    // Resuming from there delivers the rest, nothing twice.
    let mut again = c
        .subscribe(v1::SubscribeRequest {
            since_event_id: resume,
            heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest = collect_until(&mut again, *logged.last().unwrap()).await;
    delivered.extend(rest);
    assert_eq!(delivered, logged);
    s.agent.stop().await.unwrap();
    s.server.stop().await.unwrap();
}
