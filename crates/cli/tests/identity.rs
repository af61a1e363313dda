//! `driftwatch enroll-token …` and `driftwatch hosts label|revoke` against the real
//! server. Ignored until the server implements the Enrollment service and
//! Fleet.SetHostLabels / RevokeHost (being built in parallel); run with `--ignored`.

mod common;

use common::cli;
use driftwatch_agent::config::WatchEntry;
use driftwatch_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the server's Enrollment service and Fleet.SetHostLabels/RevokeHost"]
async fn tokens_and_host_labels_and_revocation_through_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("app.env");
    std::fs::write(&env, "WORKERS=8\n").unwrap();
    let server =
        driftwatch_server::start(driftwatch_server::ServerConfig::for_tests(dir.path().join("srv"))).await.unwrap();
    let url = format!("http://{}", server.grpc_addr);
    let agent = driftwatch_agent::start(
        driftwatch_agent::AgentConfig::resolve(
            driftwatch_agent::AgentFile {
                server: Some(url.clone()),
                host_id: Some("id-host".into()),
                labels: [("env".to_string(), "test".to_string())].into(),
                watch: vec![WatchEntry::Plain(env.display().to_string())],
                resource_interval: Some("0".into()),
                state_dir: Some(dir.path().join("agent")),
                insecure: Some(true),
                ..Default::default()
            },
            "test",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let fleet = v1::fleet_client::FleetClient::new(ch);
    common::wait_until("the agent's host", std::time::Duration::from_secs(20), || {
        let mut f = fleet.clone();
        async move { f.get_host(v1::GetHostRequest { host_id: "id-host".into() }).await.ok().map(|_| ()) }
    })
    .await;

    let u = url.clone();
    let results = tokio::task::spawn_blocking(move || {
        let created = cli(&u, &["enroll-token", "create", "--label", "env=production", "--ttl", "2h", "--uses", "2"]);
        let id = created.1.trim().split('.').next().unwrap_or_default().to_string();
        vec![
            created.clone(),
            cli(&u, &["enroll-token", "list"]),
            cli(&u, &["enroll-token", "revoke", &id, "--reason", "test"]),
            cli(&u, &["enroll-token", "list", "--all"]),
            cli(&u, &["hosts", "label", "id-host", "tier=2", "--remove", "env", "--reason", "test"]),
            cli(&u, &["--output", "json", "hosts", "id-host"]),
        ]
    })
    .await
    .unwrap();
    let (ok, out, err) = &results[0];
    assert!(*ok && out.lines().count() == 1 && out.contains('.'), "{out}{err}");
    assert!(err.contains("2 uses") && err.contains("env=production"), "{err}");
    let (ok, out, err) = &results[1];
    assert!(*ok && out.contains("active") && out.contains("0/2"), "{out}{err}");
    let (ok, out, err) = &results[2];
    assert!(*ok && out.starts_with("revoked enrollment token"), "{out}{err}");
    let (ok, out, err) = &results[3];
    assert!(*ok && out.contains("revoked"), "{out}{err}");
    let (ok, out, err) = &results[4];
    assert!(*ok && out.contains("tier=2") && !out.contains("env="), "{out}{err}");
    let (ok, out, err) = &results[5];
    let j: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(*ok && j["summary"]["labels"]["tier"] == "2", "{out}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
