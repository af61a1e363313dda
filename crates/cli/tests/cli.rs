//! The `driftwatch` binary against a real server with a real agent.

mod common;

use common::cli;

use std::process::Command;
use std::time::{Duration, Instant};

use driftwatch_agent::config::WatchEntry;
use driftwatch_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_file_diff_in_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.env");
    let b = dir.path().join("b.env");
    std::fs::write(&a, "WORKERS=8\nAPI_TOKEN=sk_live_abcdefghijklmnopqrstuvwx\nNAME=web\n").unwrap();
    std::fs::write(&b, "WORKERS=16\nNAME=web\nEXTRA=1\n").unwrap();
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
            watch: vec![WatchEntry::Plain(format!("{}/*.env", dir.path().display()))],
            resource_interval: Some("200ms".into()),
            state_dir: Some(dir.path().join("agent")),
            insecure: Some(true),
            fleet_key_file: Some(dir.path().join("fleet.key")),
            ..Default::default()
        },
        "test",
    )
    .unwrap();
    let agent = driftwatch_agent::start(agent_cfg).await.unwrap();
    // Wait (with a deadline) until both files and a resource sample are in.
    let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut fleet = v1::fleet_client::FleetClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(h) = fleet.get_host(v1::GetHostRequest { host_id: "cli-host".into() }).await {
            let h = h.into_inner();
            if h.files.len() == 2 && h.summary.as_ref().is_some_and(|s| s.resources.is_some()) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "agent never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A baseline pinned from b.env, so a.env differs from it by WORKERS.
    let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    v1::baselines_client::BaselinesClient::new(ch)
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "cli-host".into(),
            name: "cli".into(),
            path: b.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    let u = url.clone();
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    let results = tokio::task::spawn_blocking(move || {
        vec![
            cli(&u, &["hosts"]),
            cli(&u, &["hosts", "--selector", "env=production", "--output", "json"]),
            cli(&u, &["hosts", "cli-host"]),
            cli(&u, &["file", "cli-host", &a_s]),
            cli(&u, &["--output", "json", "file", "cli-host", &a_s]),
            cli(&u, &["diff", "cli-host", &a_s, "cli-host", "--other-path", &b_s]),
            cli(&u, &["file", "nope", "/x"]),
            cli(&u, &["hosts", "--selector", "a=b=c"]),
            cli(&u, &["diff", "cli-host", &b_s, "--baseline"]),
            cli(&u, &["diff", "cli-host", &a_s, "--baseline"]),
            cli(&u, &["baseline", "set", "cli", &b_s, "WORKERS=20", "--reason", "launch"]),
            cli(&u, &["baseline", "diff", "cli-host", &b_s]),
            cli(&u, &["baseline", "list"]),
            cli(&u, &["--output", "json", "baseline", "show", "cli", "--version", "1"]),
            cli(&u, &["baseline", "set", "cli", &b_s, "--remove", "NOPE"]),
        ]
    })
    .await
    .unwrap();
    let (ok, out, _) = &results[0];
    let ok = *ok;
    assert!(ok && out.starts_with("HOST") && out.contains("cli-host") && out.contains("online"), "{out}");
    let (ok, out, _) = &results[1];
    let ok = *ok;
    let j: serde_json::Value = serde_json::from_str(out).unwrap();
    assert!(ok);
    assert_eq!(j["hosts"][0]["hostId"], "cli-host");
    assert_eq!(j["hosts"][0]["state"], "CONNECTION_STATE_ONLINE");
    let (ok, out, _) = &results[2];
    let ok = *ok;
    assert!(ok && out.contains("memory:") && out.contains(&a.display().to_string()), "{out}");
    let (ok, out, _) = &results[3];
    let ok = *ok;
    assert!(ok && out.contains("WORKERS") && out.contains("int") && out.contains("masked:"), "{out}");
    assert!(!out.contains("sk_live_abcdefghijklmnopqrstuvwx"), "{out}");
    let (ok, out, _) = &results[4];
    let ok = *ok;
    let j: serde_json::Value = serde_json::from_str(out).unwrap();
    assert!(ok);
    assert_eq!(j["state"]["keys"][0]["key"], "WORKERS");
    assert_eq!(j["state"]["keys"][0]["value"]["intValue"], "8");
    assert!(j["state"]["keys"][1]["value"]["masked"]["fingerprint"].is_string());
    // Differences: exit status 1 (the exit codes' own test is `exit_codes.rs`).
    let (ok, out, _) = &results[5];
    let ok = *ok;
    assert!(
        !ok && out.contains("changed  WORKERS") && out.contains("1 added, 1 removed, 1 changed, 1 unchanged"),
        "{out}"
    );
    let (ok, _, err) = &results[6];
    let ok = *ok;
    assert!(!ok && err.contains("not found") && err.contains("nope"), "{err}");
    let (ok, _, err) = &results[7];
    let ok = *ok;
    assert!(!ok && err.contains("invalid argument"), "{err}");
    let (ok, out, _) = &results[8];
    assert!(*ok && out.contains("0 added, 0 removed, 0 changed") && out.contains("baseline cli version 1"), "{out}");
    // The baseline holds b.env's keys only; a.env is not in it: a clear error.
    let (ok, _, err) = &results[9];
    assert!(!*ok && err.contains("not found") && err.contains("has no file"), "{err}");
    let (ok, out, err) = &results[10];
    assert!(
        *ok && out.contains("version 2") && out.contains("by insecure-local") && out.contains("launch"),
        "{out}{err}"
    );
    let (ok, out, _) = &results[11];
    assert!(!*ok && out.contains("changed  WORKERS") && out.contains("20") && out.contains("16"), "{out}");
    let (ok, out, _) = &results[12];
    assert!(*ok && out.starts_with("NAME") && out.contains("cli ") && out.contains("host cli-host"), "{out}");
    let (ok, out, _) = &results[13];
    let j: serde_json::Value = serde_json::from_str(out).unwrap();
    assert!(*ok && j["version"] == "1" && j["files"][0]["keys"].is_array(), "{out}");
    let (ok, _, err) = &results[14];
    assert!(!*ok && err.contains("not found") && err.contains("NOPE"), "{err}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// `driftwatch alerts`, `ack`, `silence add|list|expire` and `baseline pin --resources`
/// against a server evaluating a rule on a real agent's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_ack_and_silences() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yaml"),
        "groups:\n  - name: app\n    rules:\n      - name: workers-high\n        target: {file: \"*.env\", key: WORKERS}\n        expr: \"is_number(value) && double(value) > 10.0\"\n        severity: high\n",
    )
    .unwrap();
    let env = dir.path().join("app.env");
    std::fs::write(&env, "WORKERS=16\n").unwrap();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("srv"));
    cfg.rules = Some(rules);
    let server = driftwatch_server::start(cfg).await.unwrap();
    let url = format!("http://{}", server.grpc_addr);
    let agent_cfg = driftwatch_agent::AgentConfig::resolve(
        driftwatch_agent::AgentFile {
            server: Some(url.clone()),
            host_id: Some("cli-host".into()),
            watch: vec![WatchEntry::Plain(env.display().to_string())],
            resource_interval: Some("200ms".into()),
            state_dir: Some(dir.path().join("agent")),
            insecure: Some(true),
            ..Default::default()
        },
        "test",
    )
    .unwrap();
    let agent = driftwatch_agent::start(agent_cfg).await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut alerts = v1::alerts_client::AlertsClient::new(ch.clone());
    let mut fleet = v1::fleet_client::FleetClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(20);
    let fp = loop {
        let l = alerts.list_alerts(v1::ListAlertsRequest::default()).await.unwrap().into_inner().alerts;
        let resources = fleet
            .get_host(v1::GetHostRequest { host_id: "cli-host".into() })
            .await
            .is_ok_and(|h| h.into_inner().summary.is_some_and(|s| s.resources.is_some()));
        if let Some(a) = l.iter().find(|a| a.state == v1::AlertState::Firing as i32)
            && resources
        {
            break a.fingerprint.clone();
        }
        assert!(Instant::now() < deadline, "alert never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let u = url.clone();
    let short = fp[..8].to_string();
    let results = tokio::task::spawn_blocking(move || {
        let list = cli(&u, &["alerts"]);
        let show = cli(&u, &["alerts", "--show", &short]);
        let ack = cli(&u, &["ack", &short, "--comment", "looking"]);
        let acked = cli(&u, &["--output", "json", "alerts", "--severity", "high"]);
        let bad_sev = cli(&u, &["alerts", "--severity", "urgent"]);
        let silence = cli(&u, &["silence", "add", "alertname=workers-high", "host=~cli-.*", "-d", "1h"]);
        let silences = cli(&u, &["silence", "list"]);
        let bad_silence = cli(&u, &["silence", "add", "host=~("]);
        let id = silence.1.trim().to_string();
        let expire = cli(&u, &["silence", "expire", &id]);
        let expire_again = cli(&u, &["silence", "expire", &id]);
        let unknown = cli(&u, &["ack", "ffffffff"]);
        let pin = cli(&u, &["baseline", "pin", "cli-host", "res", "--resources", "memory_used_bytes,cpu_cores_used"]);
        let rules = cli(&u, &["rules", "list"]);
        let reload = cli(&u, &["rules", "reload"]);
        vec![
            list,
            show,
            ack,
            acked,
            bad_sev,
            silence,
            silences,
            bad_silence,
            expire,
            expire_again,
            unknown,
            pin,
            rules,
            reload,
        ]
    })
    .await
    .unwrap();
    let (ok, out, err) = &results[0];
    assert!(*ok && out.starts_with("ID") && out.contains("workers-high") && out.contains("firing"), "{out}{err}");
    assert!(out.contains(&format!("{} WORKERS", env.display())) && out.contains("high"), "{out}");
    let (ok, out, _) = &results[1];
    assert!(*ok && out.contains(&fp) && out.contains("rule") && out.contains("app/workers-high"), "{out}");
    let (ok, out, err) = &results[2];
    assert!(*ok && out.starts_with("acknowledged"), "{out}{err}");
    let (ok, out, _) = &results[3];
    let j: serde_json::Value = serde_json::from_str(out).unwrap();
    assert!(*ok && j["alerts"][0]["acknowledged"]["actor"] == "insecure-local", "{out}");
    let (ok, _, err) = &results[4];
    assert!(!*ok && err.contains("unknown severity"), "{err}");
    let (ok, out, err) = &results[5];
    assert!(*ok && out.trim().len() == 32, "{out}{err}");
    let (ok, out, _) = &results[6];
    assert!(*ok && out.contains("active") && out.contains("alertname=workers-high,host=~cli-.*"), "{out}");
    let (ok, _, err) = &results[7];
    assert!(!*ok && err.contains("invalid argument") && err.contains("invalid regex"), "{err}");
    let (ok, out, _) = &results[8];
    assert!(*ok && out.starts_with("expired"), "{out}");
    let (ok, _, err) = &results[9];
    assert!(!*ok && err.contains("already expired"), "{err}");
    let (ok, _, err) = &results[10];
    assert!(!*ok && err.contains("not found"), "{err}");
    let (ok, out, err) = &results[11];
    assert!(
        *ok && out.contains("resources") && out.contains("memory_used_bytes") && out.contains("cpu_cores_used"),
        "{out}{err}"
    );
    let (ok, out, _) = &results[12];
    assert!(*ok && out.contains("app/workers-high") && out.contains("high") && out.contains("r.yaml"), "{out}");
    assert!(out.contains("1 rules from") && out.contains("last reload ok"), "{out}");
    let (ok, out, err) = &results[13];
    assert!(*ok && out.contains("last reload ok"), "{out}{err}");
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// `driftwatch alerts watch` prints events live and resumes across a server restart
/// without missing or repeating one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_watch_resumes_across_a_server_restart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yaml"),
        "groups:\n  - name: app\n    rules:\n      - name: workers-high\n        target: {file: \"*.env\", key: WORKERS}\n        expr: \"is_number(value) && double(value) > 10.0\"\n        severity: high\n",
    )
    .unwrap();
    let env = dir.path().join("app.env");
    std::fs::write(&env, "WORKERS=4\n").unwrap();
    let port = free_port();
    let mut cfg = driftwatch_server::ServerConfig::for_tests(dir.path().join("srv"));
    cfg.rules = Some(rules);
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let server = driftwatch_server::start(cfg.clone()).await.unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let agent_cfg = driftwatch_agent::AgentConfig::resolve(
        driftwatch_agent::AgentFile {
            server: Some(url.clone()),
            host_id: Some("watch-host".into()),
            watch: vec![WatchEntry::Plain(env.display().to_string())],
            resource_interval: Some("0".into()),
            state_dir: Some(dir.path().join("agent")),
            insecure: Some(true),
            ..Default::default()
        },
        "test",
    )
    .unwrap();
    let agent = driftwatch_agent::start(agent_cfg).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["--server", &url, "alerts", "watch", "--heartbeat", "1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |rx: &std::sync::mpsc::Receiver<String>, want: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with {want:?} within 20 s"),
            }
        }
    };
    // Fire once the watcher's stream is open.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metrics.subscribers.get() < 1 {
        assert!(Instant::now() < deadline, "the watcher never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&env, "WORKERS=16\n").unwrap();
    let fired = tokio::task::block_in_place(|| wait_line(&rx, "fired"));
    assert!(fired.contains("workers-high") && fired.contains("watch-host") && fired.contains("= 16"), "{fired}");
    // Restart the server; the watcher reconnects and resumes after the fired event.
    server.stop().await.unwrap();
    let server = driftwatch_server::start(cfg).await.unwrap();
    std::fs::write(&env, "WORKERS=4\n").unwrap();
    let resolved = tokio::task::block_in_place(|| wait_line(&rx, "resolved"));
    assert!(resolved.contains("workers-high"), "{resolved}");
    // Nothing was printed twice: the only lines are the fired and resolved events.
    let _ = child.kill();
    let _ = child.wait();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().all(|l| !l.contains("fired")), "duplicate after resume: {rest:?}");
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let (ok, _, err) = cli("http://127.0.0.1:1", &["hosts"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the driftwatch server at http://127.0.0.1:1"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(["up", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data",
        "--listen",
        "--metrics-listen",
        "--configs",
        "--rules",
        "--host-id",
        "--label",
        "--resource-interval",
    ] {
        assert!(text.contains(flag), "up --help lacks {flag}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["up", "hosts", "file", "diff", "--server", "--output"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The README's first command: `driftwatch up` from the repository root serves the
/// example configs (secrets masked), answers the CLI, and stops cleanly on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_example_configs_and_stops_on_ctrl_c() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .current_dir(&root)
        .args(["up", "--host-id", "up-test", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}"), "--log", "warn"])
        .arg("--data")
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let env = root.join("deploy/examples/configs/web2img/.env.production").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await {
            let mut fleet = v1::fleet_client::FleetClient::new(ch);
            let req = v1::GetFileRequest { host_id: "up-test".into(), path: env.clone() };
            if let Ok(f) = fleet.get_file(req).await {
                break f.into_inner();
            }
        }
        assert!(Instant::now() < deadline, "driftwatch up never served {env}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = file.state.unwrap();
    let masked = |k: &str| {
        state.keys.iter().any(|kv| {
            kv.key == k && matches!(kv.value.as_ref().and_then(|v| v.kind.as_ref()), Some(v1::value::Kind::Masked(_)))
        })
    };
    assert!(masked("DATABASE_URL") && masked("STORAGE_API_KEY"), "{state:#?}");
    let u = url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&u, &["hosts"])).await.unwrap();
    assert!(ok && out.contains("up-test") && out.contains("online"), "{out}{err}");

    // Ctrl-C: both halves drain and the process exits 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("driftwatch up did not stop within 20 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn rules_check_reports_every_error_with_position_and_exit_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ok = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["rules", "check"])
        .arg(root.join("deploy/examples/rules"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("rules OK"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "groups:\n  - name: g\n    rules:\n      - name: r\n        target: {file: \"*.env\", key: A}\n        expr: \"value > \"\n        severity: huge\n",
    )
    .unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(["rules", "check"]).arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("bad.yaml:6:") && lines[0].contains("syntax error"), "{text}");
    assert!(lines[1].contains("bad.yaml:7:9: severity"), "{text}");
}
