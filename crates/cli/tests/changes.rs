//! `driftwatch correct` and `driftwatch rollout` against a real server and agent.

mod common;

use std::time::Duration;

use common::{cli_env, wait_until};

use driftwatch_agent::config::WatchEntry;
use driftwatch_proto::v1;

async fn held_hash(fleet: &mut v1::fleet_client::FleetClient<tonic::transport::Channel>, path: &str) -> Option<String> {
    let f = fleet.get_file(v1::GetFileRequest { host_id: "cli-host".into(), path: path.into() }).await.ok()?;
    f.into_inner().state.map(|s| s.content_hash).filter(|h| !h.is_empty())
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_and_rollout_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let file = etc.join("app.env");
    let original = "# app settings\nWORKERS=8\nNAME=web\n";
    std::fs::write(&file, original).unwrap();
    std::fs::write(dir.path().join("fleet.key"), "cli-test-fleet-key-0123").unwrap();
    std::fs::set_permissions(dir.path().join("fleet.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let server =
        driftwatch_server::start(driftwatch_server::ServerConfig::for_tests(dir.path().join("srv"))).await.unwrap();
    let url = format!("http://{}", server.grpc_addr);
    let agent_cfg = driftwatch_agent::AgentConfig::resolve(
        driftwatch_agent::AgentFile {
            server: Some(url.clone()),
            host_id: Some("cli-host".into()),
            labels: [("env".to_string(), "production".to_string())].into(),
            watch: vec![WatchEntry::Plain(file.display().to_string())],
            resource_interval: Some("0".into()),
            state_dir: Some(dir.path().join("agent")),
            insecure: Some(true),
            fleet_key_file: Some(dir.path().join("fleet.key")),
            writable: vec![etc.display().to_string()],
            ..Default::default()
        },
        "test",
    )
    .unwrap();
    let agent = driftwatch_agent::start(agent_cfg).await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let fleet = v1::fleet_client::FleetClient::new(ch);
    let path = file.display().to_string();
    let first_hash = wait_until("the agent's file", T, || {
        let (mut fleet, path) = (fleet.clone(), path.clone());
        async move { held_hash(&mut fleet, &path).await }
    })
    .await;
    // Operator commands record the caller the server knows (not $USER, not a flag).
    let cli = |server: &str, args: &[&str]| cli_env(server, args, &[("USER", "erin")]);

    // A dry run prints the exact diff and writes nothing.
    let (ok, out, err) = cli(&url, &["correct", "cli-host", &path, "--set", "WORKERS=10", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("DRY_RUN") && out.contains("-WORKERS=8") && out.contains("+WORKERS=10"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

    // Applied: comments kept.
    let (ok, out, err) = cli(&url, &["correct", "cli-host", &path, "--set", "WORKERS=10", "--reason", "INC-7"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("APPLIED"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# app settings\nWORKERS=10\nNAME=web\n");

    // The server's view catches up first (a correction's expected hash is that view).
    wait_until("the server to see the change", T, || {
        let mut fleet = fleet.clone();
        let (path, first) = (path.clone(), first_hash.clone());
        async move { held_hash(&mut fleet, &path).await.filter(|h| *h != first) }
    })
    .await;

    // JSON is what grpcurl prints; a bad request is a clear error with exit code 1.
    let (ok, out, _) = cli(&url, &["-o", "json", "correct", "cli-host", &path, "--remove", "NOPE", "--dry-run"]);
    assert!(!ok, "an unknown key is rejected: {out}");
    assert!(out.contains("CHANGE_OUTCOME_REJECTED"), "{out}");
    let (ok, _, err) = cli(&url, &["correct", "cli-host", &path]);
    assert!(!ok && err.contains("--restore-baseline"), "{err}");

    // Back to the first version by its content hash, from the agent's backups.
    let (ok, out, err) = cli(&url, &["correct", "cli-host", &path, "--restore-version", &first_hash]);
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

    // A rollout, watched live until it succeeds; then status and list.
    wait_until("the server to see the restore", T, || {
        let mut fleet = fleet.clone();
        let (path, first) = (path.clone(), first_hash.clone());
        async move { held_hash(&mut fleet, &path).await.filter(|h| *h == first) }
    })
    .await;
    let (ok, out, err) =
        cli(&url, &["rollout", "start", &path, "-l", "env=production", "--set", "WORKERS=9", "--watch"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("SUCCEEDED") && out.contains("wave 1/1"), "{out}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("WORKERS=9\n"));
    let (ok, out, err) = cli(&url, &["rollout", "status"]);
    assert!(ok && out.contains("succeeded") && out.contains("1/1"), "{out}{err}");
    let id = out.lines().nth(1).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
    let (ok, out, _) = cli(&url, &["rollout", "status", &id]);
    assert!(ok && out.contains("cli-host") && out.contains("applied"), "{out}");
    let (ok, _, err) = cli(&url, &["rollout", "abort", &id]);
    assert!(!ok && err.contains("already ended"), "{err}");
    let (ok, out, err) = cli(&url, &["audit", "--action", "rollout."]);
    assert!(ok && out.contains("rollout.started") && out.contains("rollout.succeeded"), "{out}{err}");
    let (ok, out, _) = cli(&url, &["audit", "--action", "correction."]);
    assert!(
        ok && out.contains("insecure-local") && !out.contains("erin") && out.contains("correction.applied"),
        "{out}"
    );

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
