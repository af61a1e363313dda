//! `driftwatch enroll-token …`, `driftwatch hosts label|revoke`, `driftwatch token …`,
//! `driftwatch operator-cert create` and `driftwatch whoami` against the real server
//! over TLS, with an agent that enrolls with the token the CLI printed.

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
    let admin = dir.path().join("srv/admin.token").display().to_string();
    // As whom: a token file, or "" for none (then the arguments carry a certificate).
    let run_as = {
        let (url, ca_s) = (url.clone(), ca_s.clone());
        move |token_file: String, args: Vec<String>| {
            let (url, ca_s) = (url.clone(), ca_s.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut env = vec![("DRIFTWATCH_CA_FILE", ca_s.as_str())];
                    if !token_file.is_empty() {
                        env.push(("DRIFTWATCH_TOKEN_FILE", token_file.as_str()));
                    }
                    cli_env(&url, &a, &env)
                })
                .await
                .unwrap()
            }
        }
    };
    let run = {
        let (run_as, admin) = (run_as.clone(), admin.clone());
        move |args: Vec<String>| run_as(admin.clone(), args)
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

    // Operator credentials: a viewer token reads and may not label; revoked, it is refused.
    let (ok, out, err) = run(a(&["whoami"])).await;
    assert!(ok && out.trim() == "admin (role admin, by token)", "{out}{err}");
    let (ok, alice, err) = run(a(&["token", "create", "--role", "viewer", "--name", "alice", "--ttl", "8h"])).await;
    assert!(ok && alice.trim().starts_with("dwt_"), "{alice}{err}");
    assert!(err.contains("for 'alice': role viewer"), "{err}");
    let alice_file = dir.path().join("alice.token");
    std::fs::write(&alice_file, &alice).unwrap();
    let alice_file = alice_file.display().to_string();
    let (ok, out, err) = run_as(alice_file.clone(), a(&["whoami"])).await;
    assert!(ok && out.trim() == "alice (role viewer, by token)", "{out}{err}");
    let (ok, out, err) = run_as(alice_file.clone(), a(&["hosts"])).await;
    assert!(ok && out.contains("id-host"), "{out}{err}");
    let (ok, _, err) = run_as(alice_file.clone(), a(&["hosts", "label", "id-host", "x=1"])).await;
    assert!(!ok && err.contains("permission denied") && err.contains("needs the operator role"), "{err}");
    let (ok, _, err) = run_as(String::new(), a(&["hosts"])).await;
    assert!(!ok && err.contains("unauthenticated"), "no credentials: {err}");

    // An operator certificate: the key is made by the CLI and stays in --out.
    let certs = dir.path().join("certs");
    let (ok, out, err) = run(a(&[
        "operator-cert",
        "create",
        "--role",
        "responder",
        "--name",
        "bob",
        "--out",
        &certs.display().to_string(),
    ]))
    .await;
    assert!(ok && out.contains("for 'bob': role responder"), "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(certs.join("bob.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let (cert, key) = (certs.join("bob.pem").display().to_string(), certs.join("bob.key").display().to_string());
    let (ok, out, err) = run_as(String::new(), a(&["--cert-file", &cert, "--key-file", &key, "whoami"])).await;
    assert!(ok && out.trim() == "spiffe://driftwatch/operator/bob (role responder, by certificate)", "{out}{err}");

    let (ok, out, err) = run(a(&["token", "list"])).await;
    assert!(ok && out.contains("alice") && out.contains("bob") && out.contains("certificate"), "{out}{err}");
    let alice_id = out.lines().find(|l| l.contains("alice")).and_then(|l| l.split_whitespace().next()).unwrap();
    let (ok, out, err) = run(a(&["token", "revoke", alice_id, "--reason", "left the team"])).await;
    assert!(ok && out.contains("revoked token") && out.contains("alice"), "{out}{err}");
    let (ok, _, err) = run_as(alice_file, a(&["hosts"])).await;
    assert!(!ok && err.contains("unauthenticated") && err.contains("revoked"), "{err}");
    let (ok, out, err) = run(a(&["token", "list", "--all"])).await;
    assert!(ok && out.lines().any(|l| l.contains("alice") && l.contains("revoked")), "{out}{err}");

    let (ok, out, err) = run(a(&["hosts", "revoke", "id-host", "--reason", "retired"])).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(a(&["hosts"])).await;
    assert!(ok && out.contains("REVOKED"), "{out}{err}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
