//! End to end: real server, real agents, loopback, temp dirs.

use std::time::Duration;

use driftwatch_proto::v1::{self, value::Kind};
use driftwatch_tests::*;

fn masked(v: Option<&v1::Value>) -> bool {
    matches!(v.and_then(|v| v.kind.as_ref()), Some(Kind::Masked(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_streams_fixtures_and_edits_show_up() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    let files = copy_fixtures(&configs);
    let server = start_server(&dir.path().join("server")).await;
    let agent =
        start_agent(agent_config(&server, "web-1", &dir.path().join("agent"), &[format!("{}/**", configs.display())]))
            .await;
    let mut c = fleet_client(&server).await;

    let env = configs.join("web2img/.env.production");
    let f = wait_file(&mut c, "web-1", &env, "parsed .env", |s| !s.keys.is_empty()).await;
    let s = f.state.unwrap();
    assert_eq!(s.status, v1::FileStatus::Ok as i32);
    assert_eq!(s.format, v1::Format::Env as i32);
    assert_eq!(key(&s, "BROWSER_POOL_MAX_SIZE"), Some(&v1::Value::int(12)));
    assert!(masked(key(&s, "DATABASE_URL")), "DATABASE_URL must be masked");
    assert!(masked(key(&s, "STORAGE_API_KEY")), "STORAGE_API_KEY must be masked");
    // Query APIs show a short fingerprint only.
    if let Some(Kind::Masked(m)) = key(&s, "DATABASE_URL").and_then(|v| v.kind.clone()) {
        assert_eq!(m.fingerprint.len(), 16);
    }

    // Every fixture file is known to the server.
    let host = c.get_host(v1::GetHostRequest { host_id: "web-1".into() }).await.unwrap().into_inner();
    for f in &files {
        let p = f.display().to_string();
        assert!(host.files.iter().any(|x| x.path == p), "server lacks {p}");
    }
    let hosts = c.list_hosts(v1::ListHostsRequest { selector: "env=test".into() }).await.unwrap().into_inner();
    assert_eq!(hosts.hosts.len(), 1);
    assert_eq!(hosts.hosts[0].state, v1::ConnectionState::Online as i32);
    let none = c.list_hosts(v1::ListHostsRequest { selector: "env=prod".into() }).await.unwrap().into_inner();
    assert!(none.hosts.is_empty());

    // Edit in place, then by rename (as editors do): both show up.
    let text = std::fs::read_to_string(&env).unwrap();
    std::fs::write(&env, text.replace("BROWSER_POOL_MAX_SIZE=12", "BROWSER_POOL_MAX_SIZE=30")).unwrap();
    wait_file(&mut c, "web-1", &env, "in-place edit", |s| key(s, "BROWSER_POOL_MAX_SIZE") == Some(&v1::Value::int(30)))
        .await;
    replace_file(&env, &text.replace("WORKERS=8", "WORKERS=16"));
    wait_file(&mut c, "web-1", &env, "rename-over edit", |s| key(s, "WORKERS") == Some(&v1::Value::int(16))).await;

    // YAML nested keys and list items.
    let prod = configs.join("gguf-sync/sync-config-production.yaml");
    let f = wait_file(&mut c, "web-1", &prod, "yaml", |s| !s.keys.is_empty()).await.state.unwrap();
    assert_eq!(key(&f, "rate_limiting.requests_per_second"), Some(&v1::Value::float(1.2)));
    assert_eq!(key(&f, "monitoring.alert_channels[0]"), Some(&v1::Value::string("log")));
    assert_eq!(key(&f, "huggingface_token"), Some(&v1::Value::null()));

    // Diff between two hosts (second agent with a different file).
    let dir2 = dir.path().join("configs2");
    std::fs::create_dir_all(&dir2).unwrap();
    let env2 = dir2.join(".env.production");
    std::fs::write(&env2, text.replace("WORKERS=8", "WORKERS=9").replace("CACHE_MAX_ITEMS=300\n", "NEW_KEY=1\n"))
        .unwrap();
    let agent2 =
        start_agent(agent_config(&server, "web-2", &dir.path().join("agent2"), &[env2.display().to_string()])).await;
    wait_file(&mut c, "web-2", &env2, "second host", |s| !s.keys.is_empty()).await;
    // Restore the first file so the diff is exactly WORKERS, CACHE_MAX_ITEMS and NEW_KEY.
    replace_file(&env, &text);
    wait_file(&mut c, "web-1", &env, "restored", |s| key(s, "WORKERS") == Some(&v1::Value::int(8))).await;
    let d = c
        .diff(v1::DiffRequest {
            host_id: "web-1".into(),
            path: env.display().to_string(),
            other_host_id: "web-2".into(),
            other_path: env2.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.added, d.removed, d.changed), (1, 1, 1), "{d:#?}");
    // Same secrets under the same fleet key: equal fingerprints, so no change reported for them.
    assert!(!d.differences.iter().any(|k| k.key == "DATABASE_URL"));

    agent2.stop().await.unwrap();
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_status_codes_for_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let mut c = fleet_client(&server).await;
    let e = c.get_host(v1::GetHostRequest { host_id: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("nope"));
    let e = c.get_host(v1::GetHostRequest { host_id: "".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c.get_file(v1::GetFileRequest { host_id: "nope".into(), path: "/x".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c.get_file(v1::GetFileRequest { host_id: "h".into(), path: "".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c.list_hosts(v1::ListHostsRequest { selector: "a=b=c".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c.diff(v1::DiffRequest { host_id: "a".into(), path: "/x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_server_is_down_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut cfg = driftwatch_server::ServerConfig::for_tests(&data);
    // A fixed port so the agent can find the restarted server.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let server = start_server_with(cfg.clone()).await;
    let file = dir.path().join("app.toml");
    std::fs::write(&file, "[pool]\nsize = 1\n").unwrap();
    let agent =
        start_agent(agent_config(&server, "h1", &dir.path().join("agent"), &[file.display().to_string()])).await;
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "h1", &file, "first version", |s| key(s, "pool.size") == Some(&v1::Value::int(1))).await;
    server.stop().await.unwrap();

    // While the server is down: three edits. The agent spools them.
    for n in 2..=4 {
        std::fs::write(&file, format!("[pool]\nsize = {n}\n")).unwrap();
        wait_for("change spooled", Duration::from_secs(10), || {
            let want = n;
            let st = agent.status.clone();
            async move { (st.pending.load(std::sync::atomic::Ordering::Relaxed) >= (want - 1) as u64).then_some(()) }
        })
        .await;
    }
    assert!(!agent.status.connected.load(std::sync::atomic::Ordering::Relaxed));

    // Restarted server answers from the store at once, host offline, old value.
    let server = start_server_with(cfg).await;
    let mut c = fleet_client(&server).await;
    let h = c.get_host(v1::GetHostRequest { host_id: "h1".into() }).await.unwrap().into_inner();
    let summary = h.summary.unwrap();
    assert_eq!(summary.labels.get("env").map(String::as_str), Some("test"));
    assert_eq!(h.files.len(), 1);
    // The agent reconnects (backoff starts at 1 s) and its spool drains.
    wait_file(&mut c, "h1", &file, "last edit made while down", |s| key(s, "pool.size") == Some(&v1::Value::int(4)))
        .await;
    wait_for("spool drained", Duration::from_secs(15), || {
        let st = agent.status.clone();
        async move { (st.pending.load(std::sync::atomic::Ordering::Relaxed) == 0).then_some(()) }
    })
    .await;
    let h = c.list_hosts(v1::ListHostsRequest::default()).await.unwrap().into_inner();
    assert_eq!(h.hosts[0].state, v1::ConnectionState::Online as i32);
    agent.stop().await.unwrap();
    // Offline once the agent is gone.
    wait_for("host offline", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let h = c.list_hosts(v1::ListHostsRequest::default()).await.ok()?.into_inner();
            (h.hosts[0].state == v1::ConnectionState::Offline as i32).then_some(())
        }
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_agent_claiming_a_connected_host_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let file = dir.path().join("a.env");
    std::fs::write(&file, "A=1\n").unwrap();
    let a = start_agent(agent_config(&server, "dup", &dir.path().join("a1"), &[file.display().to_string()])).await;
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "dup", &file, "first agent", |s| !s.keys.is_empty()).await;

    // A raw stream with the same host id is refused with ALREADY_EXISTS.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(ch);
    let hello = v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            host_id: "dup".into(),
            spool_id: "imposter".into(),
            ..Default::default()
        })),
    };
    let err = gw.connect(tokio_stream::iter(vec![hello])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    // The first host's state is untouched and it stays online.
    let h = c.get_host(v1::GetHostRequest { host_id: "dup".into() }).await.unwrap().into_inner();
    assert_eq!(h.summary.unwrap().state, v1::ConnectionState::Online as i32);
    std::fs::write(&file, "A=2\n").unwrap();
    wait_file(&mut c, "dup", &file, "first agent still streams", |s| key(s, "A") == Some(&v1::Value::int(2))).await;
    a.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_agent_messages_get_an_error_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path());
    cfg.limits.max_message_bytes = 64 * 1024;
    let server = start_server_with(cfg).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let hello = |id: &str| v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            host_id: id.into(),
            spool_id: "s1".into(),
            ..Default::default()
        })),
    };
    let snapshot = |seq: u64, path: &str, pad: usize| v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Snapshot(v1::Snapshot {
            seq,
            files: vec![v1::FileState { path: path.into(), content_hash: "x".repeat(pad), ..Default::default() }],
            ..Default::default()
        })),
    };
    // Above the size limit.
    let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("big")).await.unwrap();
    let mut inbound = gw.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    use tokio_stream::StreamExt;
    assert!(matches!(
        inbound.next().await,
        Some(Ok(v1::ServerMessage { kind: Some(v1::server_message::Kind::Welcome(_)) }))
    ));
    tx.send(snapshot(1, "/etc/big", 200 * 1024)).await.unwrap();
    let err = loop {
        match inbound.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("stream ended without an error"),
        }
    };
    assert!(
        matches!(err.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::Internal),
        "{err:?}"
    );
    assert!(err.message().to_lowercase().contains("message") || err.message().contains("length"), "{err:?}");

    // Relative path and seq 0: invalid argument.
    for bad in [snapshot(1, "relative/path", 1), snapshot(0, "/etc/x", 1)] {
        let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(ch.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello("bad")).await.unwrap();
        let mut inbound = gw.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        inbound.next().await.unwrap().unwrap();
        tx.send(bad).await.unwrap();
        let err = loop {
            match inbound.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("no error"),
            }
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    // First message not a hello; bad host id.
    let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(ch.clone());
    let err = gw.connect(tokio_stream::iter(vec![snapshot(1, "/x", 1)])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = gw.connect(tokio_stream::iter(vec![hello("bad host!")])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Still serving: a well-behaved stream works.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("good")).await.unwrap();
    let mut inbound = gw.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    inbound.next().await.unwrap().unwrap();
    tx.send(snapshot(1, "/etc/ok", 10)).await.unwrap();
    let ack = inbound.next().await.unwrap().unwrap();
    assert_eq!(ack.kind, Some(v1::server_message::Kind::Ack(v1::Ack { seq: 1 })));
    // Resending the same seq (as after a reconnect) is deduplicated, not applied twice.
    tx.send(snapshot(1, "/etc/other", 10)).await.unwrap();
    tx.send(snapshot(2, "/etc/third", 10)).await.unwrap();
    loop {
        let m = inbound.next().await.unwrap().unwrap();
        if m.kind == Some(v1::server_message::Kind::Ack(v1::Ack { seq: 2 })) {
            break;
        }
    }
    let mut c = fleet_client(&server).await;
    let h = c.get_host(v1::GetHostRequest { host_id: "good".into() }).await.unwrap().into_inner();
    let paths: Vec<&str> = h.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["/etc/ok", "/etc/third"]);
    assert!(server.metrics.render().contains("driftwatch_snapshots_rejected_total"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let addr = server.metrics_addr.unwrap();
    let body = http_get(addr, "/metrics").await;
    for m in [
        "driftwatch_connected_agents",
        "driftwatch_snapshots_ingested_total",
        "driftwatch_ingest_ack_seconds_bucket",
        "driftwatch_store_commit_seconds_bucket",
    ] {
        assert!(body.contains(m), "missing {m} in:\n{body}");
    }
    assert!(http_get(addr, "/healthz").await.contains("ok"));
    server.stop().await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listing_larger_than_one_message_arrives_in_parts_and_prunes_what_vanished() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    // ~3,000 files of 20 keys: several 256 KiB parts, above what one small message holds.
    let n = 3000;
    for i in 0..n {
        let sub = etc.join(format!("svc{:02}", i % 30));
        std::fs::create_dir_all(&sub).unwrap();
        let body: String = (0..20).map(|k| format!("SETTING_NUMBER_{k}={}\n", k * i)).collect();
        std::fs::write(sub.join(format!("app{i}.env")), body).unwrap();
    }
    let server = start_server(&dir.path().join("server")).await;
    let cfg = agent_config(&server, "big", &dir.path().join("agent"), &[format!("{}/**/*.env", etc.display())]);
    let agent = start_agent(cfg.clone()).await;
    let mut c = fleet_client(&server).await;
    let count = |c: &mut v1::fleet_client::FleetClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move { c.get_host(v1::GetHostRequest { host_id: "big".into() }).await.ok().map(|h| h.into_inner()) }
    };
    wait_for("every file of the listing", Duration::from_secs(30), || {
        let f = count(&mut c);
        async move { f.await.filter(|h| h.files.len() == n).map(|_| ()) }
    })
    .await;
    let sent = agent.status.last_seq.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 4, "a listing of {n} files should take several parts, took {sent}");
    agent.stop().await.unwrap();

    // While the agent is down, 100 files vanish; its next listing (in parts) prunes exactly them.
    for i in 0..100 {
        std::fs::remove_file(etc.join(format!("svc{:02}/app{i}.env", i % 30))).unwrap();
    }
    let agent = start_agent(cfg).await;
    let h = wait_for("vanished files pruned", Duration::from_secs(30), || {
        let f = count(&mut c);
        async move { f.await.filter(|h| h.files.len() == n - 100) }
    })
    .await;
    assert!(!h.files.iter().any(|f| f.path.ends_with("/app5.env")));
    assert!(h.files.iter().any(|f| f.path.ends_with("/app100.env")));
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
