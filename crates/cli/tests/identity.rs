//! `driftwatch enroll-token …` and `driftwatch hosts label|revoke` against the real
//! server over TLS, with an agent that enrolls with the token the CLI printed.

mod common;

use common::cli_env;
use driftwatch_agent::config::WatchEntry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_host_labels_and_revocation_through_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("app.env");
    std::fs::write(&env, "WORKERS=8\n").unwrap();
    let server =
        driftwatch_server::start(driftwatch_server::ServerConfig::for_tests_tls(dir.path().join("srv"))).await.unwrap();
    let url = format!("https://localhost:{}", server.grpc_addr.port());
    let ca = dir.path().join("srv/tls/ca.pem");
    let ca_s = ca.display().to_string();
    let run = {
        let (url, ca_s) = (url.clone(), ca_s.clone());
        move |args: Vec<String>| {
            let (url, ca_s) = (url.clone(), ca_s.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    cli_env(&url, &a, &[("DRIFTWATCH_CA_FILE", &ca_s)])
                })
                .await
                .unwrap()
            }
        }
    };
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, token, err) =
        run(a(&["enroll-token", "create", "--label", "env=production", "--ttl", "2h", "--uses", "2"])).await;
    assert!(ok && token.lines().count() == 1 && token.contains('.'), "{token}{err}");
    assert!(err.contains("2 uses") && err.contains("env=production"), "{err}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    let agent = driftwatch_agent::start(
        driftwatch_agent::AgentConfig::resolve(
            driftwatch_agent::AgentFile {
                server: Some(url.clone()),
                ca_file: Some(ca.clone()),
                enroll_token_file: Some(token_file),
                host_id: Some("id-host".into()),
                watch: vec![WatchEntry::Plain(env.display().to_string())],
                resource_interval: Some("0".into()),
                state_dir: Some(dir.path().join("agent")),
                ..Default::default()
            },
            "test",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    common::wait_until("the enrolled host online", std::time::Duration::from_secs(30), || {
        let run = run.clone();
        async move {
            let (ok, out, _) = run(a(&["--output", "json", "hosts", "id-host"])).await;
            let j: serde_json::Value = serde_json::from_str(&out).ok()?;
            (ok && j["summary"]["state"] == "CONNECTION_STATE_ONLINE").then_some(())
        }
    })
    .await;

    let id = token.trim().split('.').next().unwrap_or_default().to_string();
    let (ok, out, err) = run(a(&["enroll-token", "list"])).await;
    assert!(ok && out.contains("active") && out.contains("1/2"), "{out}{err}");
    let (ok, out, err) = run(a(&["enroll-token", "revoke", &id, "--reason", "test"])).await;
    assert!(ok && out.starts_with("revoked enrollment token"), "{out}{err}");
    let (ok, out, err) = run(a(&["enroll-token", "list", "--all"])).await;
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let (ok, out, err) = run(a(&["hosts", "label", "id-host", "tier=2", "--remove", "env", "--reason", "test"])).await;
    assert!(ok && out.contains("tier=2") && !out.contains("env="), "{out}{err}");
    let (ok, out, err) = run(a(&["--output", "json", "hosts", "id-host"])).await;
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(ok && j["summary"]["labels"]["tier"] == "2", "{out}");
    assert!(j["summary"]["identity"]["enrolled"] == true, "{out}");

    let (ok, out, err) = run(a(&["hosts", "revoke", "id-host", "--reason", "retired"])).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(a(&["hosts"])).await;
    assert!(ok && out.contains("REVOKED"), "{out}{err}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
