//! Dead peers: a connection that stops carrying bytes without closing (a black-holing
//! proxy), and a server process that stops answering (SIGSTOP). Both sides notice
//! within keepalive interval + timeout, and the agent gets back in without being
//! refused as "already connected" while the server still holds its dead stream.
//! Deadlines are generous; the measured times are printed (figures in BENCHMARKS.md).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driftwatch_agent::RunningAgent;
use driftwatch_agent::config::Keepalive;
use driftwatch_proto::v1;
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::proxy::Proxy;
use driftwatch_tests::*;

/// Keepalives of these tests: interval + timeout = 2 s.
const SHORT: Keepalive = Keepalive { interval: Duration::from_secs(1), timeout: Duration::from_secs(1) };
/// Far above interval + timeout, for a loaded machine.
const T: Duration = Duration::from_secs(60);

/// An agent in this process watching `file`, with the short keepalives, through `url`.
async fn agent_via(url: &str, host: &str, dir: &Path, file: &Path) -> RunningAgent {
    let mut cfg = agent_config_url(url, host, &dir.join(host), &[file.display().to_string()]);
    cfg.keepalive = SHORT;
    start_agent(cfg).await
}

/// The id of the host's current stream on the server, if it has one.
fn conn_id(server: &RunningServer, host: &str) -> Option<u64> {
    server.state.hosts.get(host).and_then(|h| h.connection.as_ref().map(|c| c.id))
}

async fn wait_connected(agent: &RunningAgent, connections: u64, what: &str) {
    wait_for(what, T, || async {
        (agent.status.connected.load(Ordering::Relaxed)
            && agent.status.connections.load(Ordering::Relaxed) >= connections)
            .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_noticed_by_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path().join("server"));
    config.keepalive = driftwatch_server::config::Keepalive { interval: SHORT.interval, timeout: SHORT.timeout };
    let server = start_server_with(config).await;
    let proxy = Proxy::start(server.grpc_addr).await;
    let file = dir.path().join("a.env");
    std::fs::write(&file, "A=1\n").unwrap();
    let agent = agent_via(&proxy.url(), "bh", dir.path(), &file).await;
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "bh", &file, "first snapshot", |s| key(s, "A") == Some(&v1::Value::int(1))).await;
    let old = conn_id(&server, "bh").expect("a stream");

    let t0 = Instant::now();
    proxy.blackhole();
    let (mut agent_noticed, mut server_noticed) = (None, None);
    wait_for("both sides to notice the dead connection", T, || {
        if agent_noticed.is_none() && !agent.status.connected.load(Ordering::Relaxed) {
            agent_noticed = Some(t0.elapsed());
        }
        if server_noticed.is_none() && conn_id(&server, "bh") != Some(old) {
            server_noticed = Some(t0.elapsed());
        }
        let done = agent_noticed.is_some() && server_noticed.is_some();
        async move { done.then_some(()) }
    })
    .await;
    let (agent_noticed, server_noticed) = (agent_noticed.unwrap(), server_noticed.unwrap());
    let online = c.get_host(v1::GetHostRequest { host_id: "bh".into() }).await.unwrap().into_inner();
    assert_ne!(online.summary.unwrap().state, v1::ConnectionState::Online as i32, "the host shows offline");

    let t1 = Instant::now();
    proxy.restore();
    wait_connected(&agent, 2, "the agent back through the proxy").await;
    let back = t1.elapsed();
    std::fs::write(&file, "A=2\n").unwrap();
    wait_file(&mut c, "bh", &file, "an edit after the reconnect", |s| key(s, "A") == Some(&v1::Value::int(2))).await;
    println!(
        "black hole, keepalive {:?} + {:?}: agent noticed after {} ms, server dropped the stream after {} ms; \
         agent back {} ms after the proxy forwarded again",
        SHORT.interval,
        SHORT.timeout,
        agent_noticed.as_millis(),
        server_noticed.as_millis(),
        back.as_millis()
    );
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_replaces_its_dead_stream_instead_of_being_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The server's own keepalive is the default (30 s + 10 s): it still holds the dead
    // stream when the agent (1 s + 1 s) comes back.
    let server = start_server(&dir.path().join("server")).await;
    let proxy = Proxy::start(server.grpc_addr).await;
    let file = dir.path().join("a.env");
    std::fs::write(&file, "A=1\n").unwrap();
    let agent = agent_via(&proxy.url(), "re", dir.path(), &file).await;
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "re", &file, "first snapshot", |s| key(s, "A") == Some(&v1::Value::int(1))).await;
    let old = conn_id(&server, "re").expect("a stream");

    let t0 = Instant::now();
    proxy.blackhole();
    proxy.restore();
    wait_connected(&agent, 2, "the agent on a new stream").await;
    let back = t0.elapsed();
    let new = conn_id(&server, "re").expect("the new stream");
    assert_ne!(new, old, "the new stream holds the host");
    assert_eq!(server.metrics.connections_refused.get(), 0, "nothing refused as already connected");
    std::fs::write(&file, "A=2\n").unwrap();
    wait_file(&mut c, "re", &file, "an edit on the new stream", |s| key(s, "A") == Some(&v1::Value::int(2))).await;
    println!(
        "dead stream replaced: agent (keepalive 1s + 1s) streaming again {} ms after the black hole, \
         the server (30s + 10s) not having noticed the old stream",
        back.as_millis()
    );
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child process, not reaped yet.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}

/// A stopped server process still has its port (the kernel completes handshakes) but
/// answers nothing: the agent gives up on it within interval + timeout, keeps trying,
/// and is back once the server runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_noticed_and_the_agent_is_back_after_it_continues() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(server_binary());
    cmd.args(["--insecure", "--metrics-listen", "off", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.path().join("server"));
    let server = ChildProcess::spawn("driftwatch-server", cmd, Some(&dir.path().join("server.log"))).unwrap();
    let mut c = wait_for("the server listening", T, || {
        let url = url.clone();
        async move { fleet_client_addr_opt(&url).await }
    })
    .await;
    let file = dir.path().join("a.env");
    std::fs::write(&file, "A=1\n").unwrap();
    let agent = agent_via(&url, "st", dir.path(), &file).await;
    wait_file(&mut c, "st", &file, "first snapshot", |s| key(s, "A") == Some(&v1::Value::int(1))).await;

    let t0 = Instant::now();
    signal(server.pid(), libc::SIGSTOP);
    let stopped = ContinueOnDrop(server.pid());
    wait_for("the agent to notice the stopped server", T, || {
        let up = agent.status.connected.load(Ordering::Relaxed);
        async move { (!up).then_some(()) }
    })
    .await;
    let noticed = t0.elapsed();

    let t1 = Instant::now();
    drop(stopped);
    wait_connected(&agent, 2, "the agent back after SIGCONT").await;
    let back = t1.elapsed();
    std::fs::write(&file, "A=2\n").unwrap();
    let mut c = fleet_client_addr(&url).await;
    wait_file(&mut c, "st", &file, "an edit after SIGCONT", |s| key(s, "A") == Some(&v1::Value::int(2))).await;
    println!(
        "SIGSTOP server, agent keepalive {:?} + {:?}: agent noticed after {} ms; back {} ms after SIGCONT",
        SHORT.interval,
        SHORT.timeout,
        noticed.as_millis(),
        back.as_millis()
    );
    agent.stop().await.unwrap();
    drop(server);
}

/// SIGCONT on drop, so a failing test never leaves a stopped process behind.
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; a process already gone makes this a no-op.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

async fn fleet_client_addr_opt(url: &str) -> Option<v1::fleet_client::FleetClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string()).ok()?.connect().await.ok()?;
    Some(v1::fleet_client::FleetClient::new(ch))
}

/// The reconnect storm in its short form: `driftwatch-sim restart` with 200 agents
/// (the agent's own backoff; the server SIGKILLed and restarted). It must bring every
/// agent back; its figures are printed (5,000 agents: BENCHMARKS.md).
#[test]
fn every_agent_is_back_after_the_server_is_killed_and_restarted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch-sim"))
        .args(["--server-bin"])
        .arg(server_binary())
        .args(["restart", "--agents", "200", "--deadline-secs", "60"])
        .output()
        .expect("driftwatch-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout.lines().find(|l| l.starts_with("RESULT restart")).expect("a RESULT line");
    println!("{result}");
    assert!(result.contains("welcomed="), "{result}");
}
