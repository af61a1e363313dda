//! SIGHUP reloads and the service manager's notifications, with the real binaries:
//! a fake `NOTIFY_SOCKET` (a datagram socket in a temp dir) hears `READY=1`, the
//! watchdog's `WATCHDOG=1` at half of a small `WATCHDOG_USEC`, `RELOADING=1` then
//! `READY=1` around each SIGHUP, and `STOPPING=1` on SIGTERM.
//!
//! The agent's reload must not cost its stream: the server (in this process) shows the
//! same connection id before and after.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use driftwatch_agent::AgentFile;
use driftwatch_agent::config::WatchEntry;
use driftwatch_proto::v1;
use driftwatch_tests::*;

const T: Duration = Duration::from_secs(20);

/// The service manager's end of `NOTIFY_SOCKET`: every datagram received, in order.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_nonblocking(true).unwrap();
        Self { path, socket, seen: Vec::new() }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Wait until a datagram after the first `from` has the line `line`; its index.
    async fn wait_line(&mut self, from: usize, line: &str) -> usize {
        let deadline = Instant::now() + T;
        loop {
            self.drain();
            if let Some(i) = self.seen.iter().skip(from).position(|m| m.lines().any(|l| l == line)) {
                return from + i;
            }
            assert!(Instant::now() < deadline, "no {line} within {T:?}; heard: {:?}", self.seen);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until `n` more datagrams after the first `from` are `WATCHDOG=1`.
    async fn wait_watchdogs(&mut self, from: usize, n: usize) {
        let deadline = Instant::now() + T;
        loop {
            self.drain();
            let pings = self.seen.iter().skip(from).filter(|m| m.as_str() == "WATCHDOG=1\n").count();
            if pings >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{pings} of {n} watchdog pings within {T:?}; heard: {:?}", self.seen);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A reload seen: `RELOADING=1` with `MONOTONIC_USEC=`, then `READY=1`; the index after.
    async fn wait_reload(&mut self, from: usize) -> usize {
        let r = self.wait_line(from, "RELOADING=1").await;
        assert!(self.seen[r].lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{:?}", self.seen[r]);
        self.wait_line(r + 1, "READY=1").await + 1
    }
}

fn hangup(pid: u32) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

async fn wait_log(what: &str, log: impl Fn() -> String, pred: impl Fn(&str) -> bool) -> String {
    wait_for(what, T, || {
        let text = log();
        let found = pred(&text).then_some(text);
        async move { found }
    })
    .await
}

fn connection_id(server: &driftwatch_server::RunningServer, host: &str) -> Option<u64> {
    server.state.hosts.get(host).and_then(|h| h.connection.as_ref().map(|c| c.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sighup_applies_the_watch_list_on_the_same_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data")).await;
    let mut fleet = fleet_client(&server).await;
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let (a, b) = (etc.join("a.env"), etc.join("b.env"));
    std::fs::write(&a, "A=1\n").unwrap();
    std::fs::write(&b, "B=1\n").unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let agent_dir = dir.path().join("agent");
    let state = agent_dir.join("state");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let file = agent_file(&server_url(&server), "reload-1", &state, &[a.display().to_string()]);
    let mut agent = AgentProcess::start_with_env(
        &agent_dir,
        &file,
        &[("NOTIFY_SOCKET", &notify.path), ("WATCHDOG_USEC", Path::new("400000"))],
    );
    let pid = agent.pid().unwrap();

    let ready = notify.wait_line(0, "READY=1").await;
    assert!(notify.seen[ready].contains("STATUS=watching 1 files"), "{:?}", notify.seen[ready]);
    notify.wait_watchdogs(ready, 3).await;
    wait_file(&mut fleet, "reload-1", &a, "a.env", |s| key(s, "A").is_some()).await;
    let conn = wait_for("the agent's stream", T, || async { connection_id(&server, "reload-1") }).await;

    // A path added: watched and sent, on the same stream.
    std::fs::write(
        agent_dir.join("agent.toml"),
        agent_toml(&AgentFile {
            watch: vec![WatchEntry::Plain(a.display().to_string()), WatchEntry::Plain(b.display().to_string())],
            ..file.clone()
        }),
    )
    .unwrap();
    hangup(pid);
    let after = notify.wait_reload(ready).await;
    wait_file(&mut fleet, "reload-1", &b, "b.env after the reload", |s| key(s, "B").is_some()).await;
    std::fs::write(&b, "B=2\n").unwrap();
    wait_file(&mut fleet, "reload-1", &b, "an edit of b.env", |s| key(s, "B") == Some(&v1::Value::int(2))).await;
    assert_eq!(connection_id(&server, "reload-1"), Some(conn), "the reload kept the stream");

    // A file that does not validate: every problem logged, nothing changes.
    std::fs::write(
        agent_dir.join("agent.toml"),
        agent_toml(&AgentFile {
            watch: vec![WatchEntry::Plain(b.display().to_string())],
            resource_interval: Some("10".into()),
            healthz_grace: Some("soon".into()),
            ..file.clone()
        }),
    )
    .unwrap();
    hangup(pid);
    let after = notify.wait_reload(after).await;
    let log = wait_log("the refused reload in the log", || agent.log(), |l| l.contains("config reload refused")).await;
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("config reload refused")).collect();
    assert!(refused.iter().any(|l| l.contains("resource_interval")), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("healthz_grace")), "{refused:#?}");
    std::fs::write(&a, "A=3\n").unwrap();
    wait_file(&mut fleet, "reload-1", &a, "a.env still watched", |s| key(s, "A") == Some(&v1::Value::int(3))).await;
    assert_eq!(connection_id(&server, "reload-1"), Some(conn), "a refused reload kept the stream");

    // A path removed: no longer watched, and gone from the server's view once the
    // listing that follows the reload arrives (as after a restart with the shorter list).
    // A label changed: needs a restart, and says so.
    let mut labels = file.labels.clone();
    labels.insert("tier".into(), "gold".into());
    std::fs::write(
        agent_dir.join("agent.toml"),
        agent_toml(&AgentFile { watch: vec![WatchEntry::Plain(b.display().to_string())], labels, ..file.clone() }),
    )
    .unwrap();
    hangup(pid);
    let after = notify.wait_reload(after).await;
    wait_for("a.env gone from the server", T, || {
        let mut f = fleet.clone();
        let a = a.clone();
        async move { get_file(&mut f, "reload-1", &a).await.is_none().then_some(()) }
    })
    .await;
    wait_log("labels need a restart", || agent.log(), |l| l.contains("need a restart") && l.contains("labels")).await;
    assert_eq!(connection_id(&server, "reload-1"), Some(conn), "the reload kept the stream");
    std::fs::write(&b, "B=4\n").unwrap();
    wait_file(&mut fleet, "reload-1", &b, "b.env still watched", |s| key(s, "B") == Some(&v1::Value::int(4))).await;

    agent.stop().await;
    notify.wait_line(after, "STOPPING=1").await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sighup_reloads_rules_and_keeps_serving_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("a.yaml"),
        "groups:\n  - name: g\n    rules:\n      - name: first\n        target: {agent: offline}\n        expr: \"value > 1.0\"\n        severity: low\n",
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("server.toml");
    let good = format!(
        "listen = \"127.0.0.1:{port}\"\ninsecure = true\nmetrics_listen = \"off\"\ndata = \"{}\"\nrules = \"{}\"\n",
        dir.path().join("data").display(),
        rules.display()
    );
    std::fs::write(&config, &good).unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = Command::new(server_binary());
    cmd.arg("--config").arg(&config).args(["--log", "info"]);
    cmd.env("NOTIFY_SOCKET", &notify.path).env("WATCHDOG_USEC", "400000");
    let log = dir.path().join("server.log");
    let mut server = ChildProcess::spawn("driftwatch-server", cmd, Some(&log)).unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let ready = notify.wait_line(0, "READY=1").await;
    assert!(notify.seen[ready].contains(&format!("STATUS=serving gRPC on 127.0.0.1:{port}")), "{:?}", notify.seen);
    notify.wait_watchdogs(ready, 3).await;
    let url = format!("http://127.0.0.1:{port}");
    let mut rules_api = v1::rules_client::RulesClient::new(connect(&url).await);
    let names = |l: v1::ListRulesResponse| l.rules.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(names(rules_api.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner()), ["first"]);

    // A rule added and a setting that needs a restart: the rules reload at once.
    std::fs::write(
        rules.join("b.yaml"),
        "groups:\n  - name: h\n    rules:\n      - name: second\n        target: {agent: offline}\n        expr: \"value > 2.0\"\n        severity: low\n",
    )
    .unwrap();
    std::fs::write(&config, format!("{good}keepalive_interval = \"45s\"\n")).unwrap();
    hangup(server.pid());
    let after = notify.wait_reload(ready).await;
    let text =
        wait_log("the SIGHUP rules reload", read_log, |l| l.contains("rules reloaded") && l.contains("SIGHUP")).await;
    assert!(text.contains("need a restart") && text.contains("keepalive"), "{text}");
    let listed = names(rules_api.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner());
    assert!(listed.contains(&"second".to_string()), "{listed:?}");

    // A bad file: every problem logged, counted, still serving the same rules.
    std::fs::write(&config, format!("{good}keepalive_interval = \"soon\"\n[retention]\nalerts = \"10\"\n")).unwrap();
    hangup(server.pid());
    let after = notify.wait_reload(after).await;
    let text = wait_log("the refused reload", read_log, |l| l.contains("config reload refused")).await;
    let refused: Vec<&str> = text.lines().filter(|l| l.contains("config reload refused")).collect();
    assert!(refused.iter().any(|l| l.contains("keepalive_interval")), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("retention")), "{refused:#?}");
    let listed = names(rules_api.list_rules(v1::ListRulesRequest {}).await.unwrap().into_inner());
    assert!(listed.contains(&"second".to_string()), "still serving: {listed:?}");
    assert!(server.try_exited().is_none());

    server.stop(Duration::from_secs(15)).await;
    notify.wait_line(after, "STOPPING=1").await;
}
