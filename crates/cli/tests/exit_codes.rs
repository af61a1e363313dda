//! The exit status table (`driftwatch --help`, README "Exit codes") with the real
//! binary: 0 ok, 1 differences or findings, 2 usage, 3 server unreachable, 4 denied,
//! 5 any other error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `driftwatch ARGS…` with extra environment: (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(args)
        // The caller's own settings must not leak into what is tested.
        .env_remove("DRIFTWATCH_TOKEN")
        .env_remove("DRIFTWATCH_TOKEN_FILE")
        .env_remove("DRIFTWATCH_SERVER")
        .envs(env.iter().copied())
        .output()
        .expect("run driftwatch");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run_async(args: Vec<String>, env: Vec<(String, String)>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&a, &e)
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn usage_errors_exit_2_and_help_lists_the_table() {
    for args in [&["--bogus"][..], &["diff"], &["hosts", "--no-such-flag"], &["completions", "tcsh"], &[]] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 2, "driftwatch {args:?}: {err}");
    }
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for line in ["Exit status:", "1  differences or findings", "3  server unreachable", "4  denied", "5  any other"] {
        assert!(out.contains(line), "--help lacks {line:?}:\n{out}");
    }
}

#[test]
fn no_server_exits_3() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["hosts"][..], &["diff", "a", "/x", "b"], &["rules", "list"], &["audit", "verify"]] {
        let mut a = vec!["--server", &url];
        a.extend_from_slice(args);
        let (code, _, err) = run(&a, &[]);
        assert_eq!(code, 3, "driftwatch {a:?}: {err}");
        assert!(err.contains(&format!("cannot reach the driftwatch server at {url}")), "{err}");
    }
}

#[test]
fn rules_check_exits_1_on_problems_0_when_clean_5_on_a_missing_dir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let good = root.join("deploy/examples/rules").display().to_string();
    let (code, out, err) = run(&["rules", "check", &good], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "groups:\n  - name: g\n    rules:\n      - name: r\n").unwrap();
    let bad = dir.path().display().to_string();
    let (code, out, err) = run(&["rules", "check", &bad], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let (code, _, err) = run(&["rules", "check", &format!("{bad}/nope")], &[]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}

/// Differences exit 1, none 0; a host the server does not know is another error (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exits_1_on_differences_and_0_without() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let (a, b, c) = (conf.join("a.env"), conf.join("b.env"), conf.join("c.env"));
    std::fs::write(&a, "WORKERS=8\nNAME=web\n").unwrap();
    std::fs::write(&b, "WORKERS=16\nNAME=web\n").unwrap();
    std::fs::write(&c, "WORKERS=8\nNAME=web\n").unwrap();
    let server = driftwatch_tests::start_server(&dir.path().join("srv")).await;
    let url = driftwatch_tests::server::server_url(&server);
    let agent = driftwatch_tests::start_agent(driftwatch_tests::agent_config(
        &server,
        "exit-host",
        &dir.path().join("agent"),
        &[format!("{}/*.env", conf.display())],
    ))
    .await;
    let mut fleet = driftwatch_tests::server::fleet_client(&server).await;
    for f in [&a, &b, &c] {
        driftwatch_tests::wait::wait_file(&mut fleet, "exit-host", f, "the file", |_| true).await;
    }
    let (a, b, c) = (a.display().to_string(), b.display().to_string(), c.display().to_string());
    let diff = |left: &str, right: &str| {
        strings(&["--server", &url, "diff", "exit-host", left, "exit-host", "--other-path", right])
    };

    let (code, out, err) = run_async(diff(&a, &b), vec![]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("changed  WORKERS"), "{out}");
    let (code, out, err) = run_async(diff(&a, &c), vec![]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 added, 0 removed, 0 changed"), "{out}");
    let (code, out, err) = run_async(strings(&["--server", &url, "--output", "json", "hosts"]), vec![]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_async(strings(&["--server", &url, "file", "no-such-host", &a]), vec![]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not found"), "{err}");

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// Over TLS: no token is UNAUTHENTICATED, a viewer asking for an admin's call is
/// PERMISSION_DENIED; both exit 4. What the viewer may do exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        driftwatch_server::start(driftwatch_server::ServerConfig::for_tests_tls(dir.path().join("srv"))).await.unwrap();
    let url = format!("https://localhost:{}", server.grpc_addr.port());
    let ca = dir.path().join("srv/tls/ca.pem").display().to_string();
    let admin = dir.path().join("srv/admin.token").display().to_string();
    let as_ = |token_file: &str| {
        let mut env = vec![("DRIFTWATCH_CA_FILE".to_string(), ca.clone())];
        if !token_file.is_empty() {
            env.push(("DRIFTWATCH_TOKEN_FILE".to_string(), token_file.to_string()));
        }
        env
    };
    let viewer_token = ["token", "create", "--role", "viewer", "--name", "vera"];

    let (code, token, err) = run_async(strings(&[&["--server", &url][..], &viewer_token].concat()), as_(&admin)).await;
    assert_eq!(code, 0, "{err}");
    let viewer = dir.path().join("vera.token");
    std::fs::write(&viewer, token.trim()).unwrap();
    let viewer = viewer.display().to_string();

    let (code, _, err) = run_async(strings(&["--server", &url, "hosts"]), as_("")).await;
    assert_eq!(code, 4, "no token: {err}");
    assert!(err.contains("unauthenticated"), "{err}");
    let (code, _, err) = run_async(strings(&[&["--server", &url][..], &viewer_token].concat()), as_(&viewer)).await;
    assert_eq!(code, 4, "a viewer creating a token: {err}");
    assert!(err.contains("permission denied"), "{err}");
    let (code, out, err) = run_async(strings(&["--server", &url, "hosts"]), as_(&viewer)).await;
    assert_eq!(code, 0, "a viewer listing hosts: {out}{err}");

    server.stop().await.unwrap();
}

/// A server that stops answering mid-session: the next call cannot connect (3), and a
/// wait for the condition is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let server = driftwatch_tests::start_server(&dir.path().join("srv")).await;
    let url = driftwatch_tests::server::server_url(&server);
    let (code, _, err) = run_async(strings(&["--server", &url, "hosts"]), vec![]).await;
    assert_eq!(code, 0, "{err}");
    server.stop().await.unwrap();
    let code = common::wait_until("the stopped server refused", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let (code, _, _) = run_async(strings(&["--server", &url, "hosts"]), vec![]).await;
            (code != 0).then_some(code)
        }
    })
    .await;
    assert_eq!(code, 3);
}
