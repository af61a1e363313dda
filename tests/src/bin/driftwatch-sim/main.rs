//! driftwatch-sim: the fleet simulator and footprint benchmarks.
//!
//! Virtual agents speak the real AgentGateway protocol over real gRPC
//! connections (one TCP connection each) on loopback against a real server.
//!
//!   driftwatch-sim ingest  --agents 200 --duration 20s     snapshots/s with durable acks, ack p50/p99
//!   driftwatch-sim idle    --agents 5000                   server RSS per idle connected agent
//!   driftwatch-sim latency --iterations 300                file write → visible in GetFile, p50/p99
//!   driftwatch-sim agent-footprint --files 1000 --duration 60s   real agent RSS and idle CPU
//!   driftwatch-sim subscribers --subscribers 1000 --events 200   alert event → every subscriber, p50/p99
//!   driftwatch-sim rollout --agents 1000                    StartRollout → SUCCEEDED across 4 waves
//!
//! By default the server is the `driftwatch-server` binary next to this one,
//! started on a free loopback port with a temporary data dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use driftwatch_proto::v1::{self, agent_gateway_client::AgentGatewayClient, agent_message, server_message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

#[derive(Debug, Parser)]
#[command(name = "driftwatch-sim")]
struct Cli {
    /// Use this running server instead of starting one (RSS figures need --server-pid).
    #[arg(long, global = true)]
    server: Option<String>,
    /// PID of the --server process, for RSS figures.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The driftwatch-server binary to start [default: next to this binary].
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Start the server with this rules directory (e.g. deploy/examples/rules).
    #[arg(long, global = true)]
    rules: Option<PathBuf>,
    /// The started server's log filter (e.g. info,driftwatch_server=debug to see where time goes).
    #[arg(long, global = true, default_value = "warn")]
    server_log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Many agents sending changed-file snapshots as fast as durable acks allow.
    Ingest {
        #[arg(long, default_value_t = 200)]
        agents: usize,
        #[arg(long, default_value = "20")]
        duration_secs: u64,
        /// Unacknowledged snapshots each agent keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 20)]
        keys_per_file: usize,
        /// Labels of the virtual hosts (k=v,...): e.g. env=production,service=web2img so
        /// the example rules select them. Each agent then also sends a resource sample
        /// once a second (ten times the default agent rate).
        #[arg(long, default_value = "sim=true")]
        labels: String,
        /// Alert subscribers that never read, held open during the run (each on its own
        /// connection): ingest must not slow down for them.
        #[arg(long, default_value_t = 0)]
        stuck_subscribers: usize,
    },
    /// Many agents connected and idle (heartbeats only): server memory per agent.
    Idle {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        #[arg(long, default_value_t = 3)]
        files_per_agent: usize,
        /// Seconds to hold the connections after the last one is up.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// A real agent on a temp file: write → visible in GetFile.
    Latency {
        #[arg(long, default_value_t = 300)]
        iterations: usize,
    },
    /// Many `Alerts.Subscribe` streams (one connection each) and one agent whose file
    /// change fires or resolves an alert: time from the event to its delivery on every stream.
    Subscribers {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Alert events to produce (fired and resolved alternately).
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Also keep this many subscribers that never read (they must not slow the others).
        #[arg(long, default_value_t = 0)]
        stuck: usize,
        /// Milliseconds between events.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Agents that apply changes (`ChangeAgent`, each holding /etc/bench/app.env): time a
    /// rollout of one key from StartRollout to SUCCEEDED.
    Rollout {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Virtual agents sharing one HTTP/2 connection (1: a connection each, as real agents).
        #[arg(long, default_value_t = 1)]
        agents_per_connection: usize,
        /// Cumulative wave sizes, comma separated.
        #[arg(long, default_value = "1,10%,50%,100%")]
        waves: String,
        /// Follow the rollout by polling GetRollout every N ms instead of WatchRollout
        /// (to see what the watch stream costs the server).
        #[arg(long)]
        poll_ms: Option<u64>,
    },
    /// The real agent binary watching N files: RSS and idle CPU.
    AgentFootprint {
        #[arg(long, default_value_t = 1000)]
        files: usize,
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        /// The driftwatch-agent binary [default: next to this binary].
        #[arg(long)]
        agent_bin: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    raise_nofile();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tmp = tempfile::tempdir()?;
        let mut server = match &cli.server {
            Some(url) => ServerProc { url: url.clone(), child: None, pid: cli.server_pid, metrics: None },
            None => {
                let rules = match (&cli.cmd, &cli.rules) {
                    (_, Some(r)) => Some(r.clone()),
                    (Cmd::Subscribers { .. }, None) => Some(subscriber_rules(tmp.path())?),
                    _ => None,
                };
                ServerProc::spawn(&cli.server_bin, tmp.path(), rules.as_deref(), &cli.server_log)?
            }
        };
        server.wait_ready().await?;
        let r = match cli.cmd {
            Cmd::Ingest { agents, duration_secs, window, keys_per_file, labels, stuck_subscribers } => {
                let labels = parse_labels(&labels)?;
                let mut stuck = Vec::new();
                for _ in 0..stuck_subscribers {
                    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
                    let mut c = v1::alerts_client::AlertsClient::new(ch);
                    stuck.push(c.subscribe(v1::SubscribeRequest::default()).await?.into_inner());
                }
                let r =
                    ingest(&server, agents, Duration::from_secs(duration_secs), window, keys_per_file, labels).await;
                if let Some(events) = server.metric("driftwatch_alert_events_total") {
                    println!("RESULT ingest alert_events={events} stuck_subscribers={stuck_subscribers}");
                }
                drop(stuck);
                r
            }
            Cmd::Idle { agents, files_per_agent, hold_secs } => {
                idle(&server, agents, files_per_agent, Duration::from_secs(hold_secs)).await
            }
            Cmd::Latency { iterations } => latency(&server, iterations, tmp.path()).await,
            Cmd::Subscribers { subscribers: n, events, stuck, interval_ms } => {
                subscribers(&server, n, events, stuck, Duration::from_millis(interval_ms)).await
            }
            Cmd::Rollout { agents, agents_per_connection, waves, poll_ms } => {
                let waves = waves.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
                let poll = poll_ms.map(|ms| Duration::from_millis(ms.max(1)));
                rollout(&server, agents, agents_per_connection.max(1), waves, poll).await
            }
            Cmd::AgentFootprint { files, duration_secs, agent_bin } => {
                agent_footprint(&server, files, Duration::from_secs(duration_secs), agent_bin, tmp.path()).await
            }
        };
        server.stop();
        r
    })
}

struct ServerProc {
    url: String,
    child: Option<Child>,
    pid: Option<u32>,
    /// host:port of the server's /metrics, when this process started it.
    metrics: Option<String>,
}

impl ServerProc {
    fn spawn(bin: &Option<PathBuf>, dir: &Path, rules: Option<&Path>, log: &str) -> anyhow::Result<Self> {
        let bin = bin.clone().unwrap_or_else(|| sibling("driftwatch-server"));
        let port = free_port()?;
        let metrics_port = free_port()?;
        let metrics = format!("127.0.0.1:{metrics_port}");
        let mut cmd = Command::new(&bin);
        if let Some(r) = rules {
            cmd.arg("--rules").arg(r);
        }
        let child = cmd
            .args(["--insecure", "--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &metrics, "--log", log])
            .arg("--data")
            .arg(dir.join("server-data"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {} (build it first: cargo build --release)", bin.display()))?;
        let pid = child.id();
        Ok(Self { url: format!("http://127.0.0.1:{port}"), child: Some(child), pid: Some(pid), metrics: Some(metrics) })
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(self.url.clone())?.connect().await {
                let mut c = v1::fleet_client::FleetClient::new(ch);
                if c.list_hosts(v1::ListHostsRequest::default()).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("server at {} did not come up", self.url);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One counter or gauge from /metrics (plain HTTP/1.0 GET: no client dependency).
    fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics.as_ref()?).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_bytes)
    }

    fn stop(&mut self) {
        if let Some(c) = &mut self.child {
            // SIGTERM for a clean drain.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
        }
    }
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join(name))).unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of a process in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn file_state(path: &str, keys: usize, version: u64) -> v1::FileState {
    v1::FileState {
        path: path.to_string(),
        format: v1::Format::Env as i32,
        status: v1::FileStatus::Ok as i32,
        exists: true,
        size: 40 * keys as u64,
        mode: 0o100644,
        content_hash: format!("{version:064x}"),
        keys: (0..keys)
            .map(|k| v1::KeyValue {
                key: format!("SETTING_NUMBER_{k}"),
                value: Some(if k == 0 { v1::Value::int(version as i64) } else { v1::Value::int(k as i64 * 10) }),
            })
            .collect(),
        ..Default::default()
    }
}

struct SimAgent {
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ServerMessage>,
}

fn parse_labels(s: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("label {p:?} is not k=v"),
        })
        .collect()
}

/// A plausible web2img host: 4–5 GiB used, 10 cores busy.
fn resource_sample(seq: u64) -> v1::ResourceSample {
    v1::ResourceSample {
        sampled_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
        cpu_cores_used: 10.0 + (seq % 7) as f64 / 10.0,
        cpu_percent: 65.0,
        cpu_count: 16,
        memory_total_bytes: 16 << 30,
        memory_used_bytes: (4 << 30) + (seq % 97) * (8 << 20),
        ..Default::default()
    }
}

async fn connect_agent(url: &str, host_id: &str) -> anyhow::Result<SimAgent> {
    connect_agent_labels(url, host_id, [("sim".to_string(), "true".to_string())].into()).await
}

async fn connect_agent_labels(
    url: &str,
    host_id: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<SimAgent> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(20))
        .connect()
        .await?;
    let mut client = AgentGatewayClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    tx.send(v1::AgentMessage {
        kind: Some(agent_message::Kind::Hello(v1::Hello {
            host_id: host_id.to_string(),
            labels,
            agent_version: "sim".into(),
            spool_id: format!("sim-{}", rand::random::<u64>()),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    match inbound.next().await {
        Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Welcome(_)) })) => {}
        other => bail!("expected welcome, got {other:?}"),
    }
    Ok(SimAgent { tx, inbound })
}

fn snapshot(seq: u64, full: bool, files: Vec<v1::FileState>) -> v1::AgentMessage {
    v1::AgentMessage {
        kind: Some(agent_message::Kind::Snapshot(v1::Snapshot { seq, full, files, ..Default::default() })),
    }
}

async fn ingest(
    server: &ServerProc,
    agents: usize,
    duration: Duration,
    window: usize,
    keys: usize,
    labels: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let with_resources = labels.keys().any(|k| k != "sim");
    println!(
        "ingest: {agents} agents, window {window}, {keys} keys per file, {}s, labels {labels:?}{}",
        duration.as_secs(),
        if with_resources { ", a resource sample per agent per second" } else { "" }
    );
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<Vec<Duration>>();
    let mut handles = Vec::new();
    let start_barrier = Arc::new(tokio::sync::Barrier::new(agents + 1));
    for i in 0..agents {
        let url = server.url.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let lat_tx = lat_tx.clone();
        let barrier = start_barrier.clone();
        let labels = labels.clone();
        handles.push(tokio::spawn(async move {
            let host = format!("sim-ingest-{i:05}");
            let mut a = match connect_agent_labels(&url, &host, labels).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{host}: {e}");
                    barrier.wait().await;
                    return;
                }
            };
            let path = format!("/etc/sim/{i}/.env");
            barrier.wait().await;
            let mut sent_at: HashMap<u64, Instant> = HashMap::new();
            let mut lats = Vec::new();
            let mut seq = 0u64;
            let mut last_ack = 0u64;
            let mut last_sample = Instant::now() - Duration::from_secs(1);
            loop {
                while !stop.load(Ordering::Relaxed) && (seq - last_ack) < window as u64 {
                    seq += 1;
                    sent_at.insert(seq, Instant::now());
                    let mut msg = snapshot(seq, seq == 1, vec![file_state(&path, keys, seq)]);
                    if with_resources
                        && last_sample.elapsed() >= Duration::from_secs(1)
                        && let Some(agent_message::Kind::Snapshot(s)) = &mut msg.kind
                    {
                        last_sample = Instant::now();
                        s.resources = Some(resource_sample(seq));
                    }
                    if a.tx.send(msg).await.is_err() {
                        break;
                    }
                }
                if stop.load(Ordering::Relaxed) && last_ack >= seq {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(30), a.inbound.next()).await {
                    Ok(Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(ack)) }))) => {
                        let now = Instant::now();
                        for s in (last_ack + 1)..=ack.seq {
                            if let Some(t) = sent_at.remove(&s) {
                                lats.push(now - t);
                            }
                        }
                        if !stop.load(Ordering::Relaxed) {
                            acked.fetch_add(ack.seq - last_ack, Ordering::Relaxed);
                        }
                        last_ack = ack.seq;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => {
                        eprintln!("{host}: stream ended: {other:?}");
                        break;
                    }
                }
            }
            let _ = lat_tx.send(lats);
        }));
    }
    drop(lat_tx);
    start_barrier.wait().await;
    let rss0 = server.rss();
    let t0 = Instant::now();
    let a0 = acked.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let n = acked.load(Ordering::Relaxed) - a0;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rss1 = server.rss();
    for h in handles {
        let _ = h.await;
    }
    let mut lats = Vec::new();
    while let Some(mut l) = lat_rx.recv().await {
        lats.append(&mut l);
    }
    lats.sort();
    println!("RESULT ingest agents={agents} snapshots_acked={n} elapsed_s={:.1}", elapsed.as_secs_f64());
    println!("RESULT ingest snapshots_per_second={:.0}", n as f64 / elapsed.as_secs_f64());
    println!(
        "RESULT ingest ack_latency_p50_ms={:.2} ack_latency_p99_ms={:.2} samples={}",
        pct(&lats, 0.50).as_secs_f64() * 1e3,
        pct(&lats, 0.99).as_secs_f64() * 1e3,
        lats.len()
    );
    if let (Some(a), Some(b)) = (rss0, rss1) {
        println!("RESULT ingest server_rss_mib_start={:.1} end={:.1}", a as f64 / 1048576.0, b as f64 / 1048576.0);
    }
    if let (Some(rules), Some(evals), Some(overflows)) = (
        server.metric("driftwatch_rules_loaded"),
        server.metric("driftwatch_rule_evaluations_total"),
        server.metric("driftwatch_rule_queue_overflows_total"),
    ) {
        println!("RESULT ingest rules_loaded={rules} rule_evaluations={evals} rule_queue_overflows={overflows}");
    }
    Ok(())
}

async fn idle(server: &ServerProc, agents: usize, files: usize, hold: Duration) -> anyhow::Result<()> {
    println!("idle: {agents} agents, {files} files each");
    let rss0 = server.rss();
    let t0 = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel::<bool>(agents);
    let release = Arc::new(tokio::sync::Notify::new());
    let connect_limit = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..agents {
        let url = server.url.clone();
        let done = done_tx.clone();
        let release = release.clone();
        let limit = connect_limit.clone();
        tokio::spawn(async move {
            let host = format!("sim-idle-{i:05}");
            let permit = limit.acquire_owned().await;
            let mut a = match connect_agent(&url, &host).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{host}: {e}");
                    let _ = done.send(false).await;
                    return;
                }
            };
            let fs = (0..files).map(|f| file_state(&format!("/etc/sim/{f}.env"), 20, 1)).collect();
            let _ = a.tx.send(snapshot(1, true, fs)).await;
            // Wait for the durable ack so the state is really held.
            loop {
                match a.inbound.next().await {
                    Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(_)) })) => break,
                    Some(Ok(_)) => continue,
                    _ => {
                        let _ = done.send(false).await;
                        return;
                    }
                }
            }
            drop(permit);
            let _ = done.send(true).await;
            release.notified().await;
            drop(a);
        });
    }
    drop(done_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    while ok + failed < agents {
        match done_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let connect_time = t0.elapsed();
    tokio::time::sleep(hold).await;
    let rss1 = server.rss();
    println!("RESULT idle connected={ok} failed={failed} connect_all_s={:.1}", connect_time.as_secs_f64());
    if let (Some(a), Some(b)) = (rss0, rss1) {
        println!(
            "RESULT idle server_rss_mib_before={:.1} after={:.1} per_agent_kib={:.1}",
            a as f64 / 1048576.0,
            b as f64 / 1048576.0,
            (b.saturating_sub(a)) as f64 / 1024.0 / ok.max(1) as f64
        );
    } else {
        println!("RESULT idle server RSS unknown (pass --server-pid with --server)");
    }
    release.notify_waiters();
    Ok(())
}

async fn latency(server: &ServerProc, iterations: usize, tmp: &Path) -> anyhow::Result<()> {
    use driftwatch_agent::config::WatchEntry;
    let dir = tmp.join("latency");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("app.env");
    std::fs::write(&file, "VALUE=0\n")?;
    std::fs::write(dir.join("fleet.key"), "sim-fleet-key-0123456789")?;
    let cfg = driftwatch_agent::AgentConfig::resolve(
        driftwatch_agent::AgentFile {
            server: Some(server.url.clone()),
            host_id: Some("sim-latency".into()),
            watch: vec![WatchEntry::Plain(file.display().to_string())],
            resource_interval: Some("0".into()),
            state_dir: Some(dir.join("state")),
            insecure: Some(true),
            fleet_key_file: Some(dir.join("fleet.key")),
            ..Default::default()
        },
        "sim",
    )?;
    let agent = driftwatch_agent::start(cfg).await?;
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
    let mut c = v1::fleet_client::FleetClient::new(ch);
    let req = v1::GetFileRequest { host_id: "sim-latency".into(), path: file.display().to_string() };
    let value_of = |f: &v1::File| {
        f.state.as_ref().and_then(|s| s.keys.iter().find(|k| k.key == "VALUE")).and_then(|k| k.value.clone())
    };
    // Wait for the initial state.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.get_file(req.clone()).await
            && value_of(r.get_ref()) == Some(v1::Value::int(0))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("agent never reported the file");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lats = Vec::with_capacity(iterations);
    for i in 1..=iterations as i64 {
        let t = Instant::now();
        std::fs::write(&file, format!("VALUE={i}\n"))?;
        loop {
            let r = c.get_file(req.clone()).await?;
            if value_of(r.get_ref()) == Some(v1::Value::int(i)) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("write {i} never became visible");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lats.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lats.sort();
    println!(
        "RESULT latency write_to_getfile_p50_ms={:.2} p99_ms={:.2} max_ms={:.2} iterations={iterations}",
        pct(&lats, 0.5).as_secs_f64() * 1e3,
        pct(&lats, 0.99).as_secs_f64() * 1e3,
        lats.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    agent.stop().await?;
    Ok(())
}

async fn agent_footprint(
    server: &ServerProc,
    files: usize,
    duration: Duration,
    agent_bin: Option<PathBuf>,
    tmp: &Path,
) -> anyhow::Result<()> {
    let dir = tmp.join("footprint");
    for i in 0..files {
        let sub = dir.join(format!("svc{:02}", i % 50));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("app{i}.env")),
            (0..20).map(|k| format!("SETTING_{k}={}\n", k * i)).collect::<String>(),
        )?;
    }
    std::fs::write(tmp.join("fleet.key"), "sim-fleet-key-0123456789")?;
    let cfg = tmp.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = \"{}\"\nhost_id = \"footprint\"\ninsecure = true\nwatch = [\"{}/**/*.env\"]\nresource_interval = \"10s\"\nstate_dir = \"{}\"\nfleet_key_file = \"{}\"\n",
            server.url,
            dir.display(),
            tmp.join("agent-state").display(),
            tmp.join("fleet.key").display()
        ),
    )?;
    let bin = agent_bin.unwrap_or_else(|| sibling("driftwatch-agent"));
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = child.id();
    // Warm up: wait until the server holds all files.
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
    let mut c = v1::fleet_client::FleetClient::new(ch);
    let t0 = Instant::now();
    loop {
        if let Ok(h) = c.get_host(v1::GetHostRequest { host_id: "footprint".into() }).await
            && h.get_ref().files.len() >= files
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("agent did not report {files} files within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let startup = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks0 = cpu_ticks(pid).unwrap_or(0);
    let w0 = Instant::now();
    let mut peak = 0u64;
    while w0.elapsed() < duration {
        peak = peak.max(rss_bytes(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ticks1 = cpu_ticks(pid).unwrap_or(0);
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_bytes(pid).unwrap_or(0);
    println!("RESULT agent files={files} initial_report_s={:.2}", startup.as_secs_f64());
    println!(
        "RESULT agent rss_mib={:.2} peak_rss_mib={:.2} idle_cpu_percent_of_core={cpu:.3} window_s={}",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        duration.as_secs()
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    Ok(())
}

/// The rule the subscriber benchmark fires and resolves.
fn subscriber_rules(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.join("bench-rules");
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("bench.yaml"),
        "groups:\n  - name: bench\n    rules:\n      - name: level-above-100\n        target: {file: \"*.env\", key: LEVEL}\n        expr: \"is_number(value) && value > 100\"\n        severity: high\n",
    )?;
    Ok(d)
}

async fn subscribers(
    server: &ServerProc,
    n: usize,
    events: usize,
    stuck: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    println!("subscribers: {n} streams (+{stuck} that never read), {events} events");
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(u64, Duration)>();
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut handles = Vec::new();
    for _ in 0..n {
        let (url, lat_tx, ready) = (server.url.clone(), lat_tx.clone(), ready.clone());
        handles.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
            let mut c = v1::alerts_client::AlertsClient::new(ch);
            let mut s = c
                .subscribe(v1::SubscribeRequest {
                    heartbeat_interval: Some(driftwatch_proto::duration::seconds(5)),
                    ..Default::default()
                })
                .await?
                .into_inner();
            ready.wait().await;
            while let Some(m) = s.next().await {
                if let Some(v1::subscribe_response::Kind::Event(e)) = m?.kind {
                    let at = e.at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(0);
                    let lag = (driftwatch_proto::now_millis() - at).max(0) as u64;
                    let _ = lat_tx.send((e.id, Duration::from_millis(lag)));
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(lat_tx);
    // Subscribers that never read, each on its own connection.
    let mut stuck_streams = Vec::new();
    for _ in 0..stuck {
        let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
        let s = v1::alerts_client::AlertsClient::new(ch).subscribe(v1::SubscribeRequest::default()).await?.into_inner();
        stuck_streams.push(s);
    }
    ready.wait().await;
    let agent = connect_agent(&server.url, "sim-subscribers").await?;
    let path = "/etc/sim/app.env";
    let started = Instant::now();
    for i in 0..events as u64 {
        let level = if i % 2 == 0 { 500 } else { 1 };
        let mut f = file_state(path, 2, i + 1);
        f.keys.push(v1::KeyValue { key: "LEVEL".into(), value: Some(v1::Value::int(level)) });
        agent.tx.send(snapshot(i + 1, i == 0, vec![f])).await?;
        // One event at a time, so each delivery is timed on its own.
        tokio::time::sleep(interval).await;
    }
    let produced = started.elapsed();
    // Collect until every stream has every event, or a deadline.
    let mut lats = Vec::with_capacity(n * events);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lats.len() < n * events {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), lat_rx.recv()).await {
            Ok(Some((_, l))) => lats.push(l),
            _ => break,
        }
    }
    for h in handles {
        h.abort();
    }
    drop(stuck_streams);
    lats.sort();
    println!(
        "RESULT subscribers streams={n} stuck={stuck} events={events} deliveries={} expected={} produced_in_s={:.1}",
        lats.len(),
        n * events,
        produced.as_secs_f64()
    );
    println!(
        "RESULT subscribers delivery_latency_p50_ms={:.1} p99_ms={:.1} max_ms={:.1} (event time to receipt, ms clock)",
        pct(&lats, 0.50).as_secs_f64() * 1e3,
        pct(&lats, 0.99).as_secs_f64() * 1e3,
        lats.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The file every rollout bench agent holds.
const BENCH_PATH: &str = "/etc/bench/app.env";

/// The bench file: 20 keys of a plausible service, `POOL_SIZE=10` among them.
fn bench_keys() -> driftwatch_tests::change_agent::Keys {
    driftwatch_tests::change_agent::env_keys(&[
        ("APP_NAME", "bench"),
        ("LISTEN_HOST", "0.0.0.0"),
        ("LISTEN_PORT", "8080"),
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("POOL_SIZE", "10"),
        ("POOL_TIMEOUT_SECONDS", "30"),
        ("WORKERS", "4"),
        ("MAX_REQUEST_BYTES", "1048576"),
        ("REQUEST_TIMEOUT_SECONDS", "15"),
        ("CACHE_ENABLED", "true"),
        ("CACHE_TTL_SECONDS", "300"),
        ("CACHE_MAX_ENTRIES", "10000"),
        ("RATE_LIMIT_PER_SECOND", "250"),
        ("RETRY_BACKOFF_FACTOR", "1.5"),
        ("RETRY_MAX_ATTEMPTS", "3"),
        ("FEATURE_NEW_RENDERER", "false"),
        ("UPSTREAM_URL", "http://upstream.internal:9000"),
        ("METRICS_PORT", "9100"),
        ("SHUTDOWN_GRACE_SECONDS", "20"),
    ])
}

fn secs_between(a: Option<&driftwatch_proto::Timestamp>, b: Option<&driftwatch_proto::Timestamp>) -> Option<f64> {
    Some((driftwatch_proto::timestamp_millis(b?) - driftwatch_proto::timestamp_millis(a?)) as f64 / 1e3)
}

async fn rollout(
    server: &ServerProc,
    agents: usize,
    per_conn: usize,
    waves: Vec<String>,
    poll: Option<Duration>,
) -> anyhow::Result<()> {
    use driftwatch_tests::change_agent::{self, ChangeAgent};
    use v1::{RolloutHostState as HS, RolloutState as RS};
    println!(
        "rollout: {agents} agents ({per_conn} per connection), waves {waves:?}, {} keys in {BENCH_PATH}",
        bench_keys().len()
    );

    // Connect: `per_conn` agents share each channel.
    let t0 = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut channels = Vec::new();
    for _ in 0..agents.div_ceil(per_conn) {
        let permit = limit.clone().acquire_owned().await?;
        let ep = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect_timeout(Duration::from_secs(20));
        channels.push(tokio::spawn(async move {
            let ch = ep.connect().await;
            drop(permit);
            ch
        }));
    }
    let mut chans = Vec::with_capacity(channels.len());
    for c in channels {
        chans.push(c.await??);
    }
    let labels: std::collections::BTreeMap<String, String> = [("service".to_string(), "bench".to_string())].into();
    let mut connecting = Vec::with_capacity(agents);
    for i in 0..agents {
        let permit = limit.clone().acquire_owned().await?;
        let (ch, labels) = (chans[i / per_conn].clone(), labels.clone());
        connecting.push(tokio::spawn(async move {
            let a = ChangeAgent::connect_on(ch, &format!("bench-{i:05}"), labels, BENCH_PATH, bench_keys()).await;
            drop(permit);
            a
        }));
    }
    let mut fleet = Vec::with_capacity(agents);
    for (i, c) in connecting.into_iter().enumerate() {
        fleet.push(c.await?.with_context(|| format!("agent bench-{i:05}"))?);
    }
    let connected = t0.elapsed();

    // Wait until the server holds the file of every agent.
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
    let mut fleet_api = v1::fleet_client::FleetClient::new(ch.clone());
    let mut changes = v1::changes_client::ChangesClient::new(ch).max_decoding_message_size(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts = fleet_api.list_hosts(v1::ListHostsRequest { selector: "service=bench".into() }).await?.into_inner();
        let ready =
            hosts.hosts.iter().filter(|h| h.state == v1::ConnectionState::Online as i32 && h.file_count >= 1).count();
        if ready >= agents {
            break;
        }
        if Instant::now() > deadline {
            bail!("after 60 s the server holds the file of {ready} of {agents} hosts");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "rollout: {agents} agents connected in {:.2} s, files held by the server after {:.2} s",
        connected.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let before = change_agent::content_hash(&bench_keys());
    let change =
        v1::ApplyChange { set_text: [("POOL_SIZE".to_string(), "12".to_string())].into(), ..Default::default() };
    let expected = change_agent::content_hash(&change_agent::edit_keys(&bench_keys(), &change).expect("valid edit"));

    let wave_count = waves.len();
    let started = Instant::now();
    let resp = changes
        .start_rollout(v1::StartRolloutRequest {
            selector: "service=bench".into(),
            path: BENCH_PATH.into(),
            set_keys: [("POOL_SIZE".to_string(), "12".to_string())].into(),
            waves,
            bake: Some(driftwatch_proto::duration::seconds(0)),
            reason: "rollout benchmark".into(),
            ..Default::default()
        })
        .await
        .context("StartRollout")?
        .into_inner();
    let start_rpc = started.elapsed();
    let id = resp.rollout.context("StartRollout returned no rollout")?.id;
    // Follow it with WatchRollout, or (--poll-ms) with GetRollout, to see what the stream costs.
    let mut watch = match poll {
        Some(_) => None,
        None => Some(
            changes
                .watch_rollout(v1::WatchRolloutRequest { id: id.clone() })
                .await
                .context("WatchRollout")?
                .into_inner(),
        ),
    };
    // When this client first saw each wave done, and how many updates it read.
    let mut seen_done: Vec<Option<Duration>> = vec![None; wave_count];
    let mut updates = 0usize;
    let mut last = None;
    let watch_deadline = started + Duration::from_secs(300);
    loop {
        let left = watch_deadline.saturating_duration_since(Instant::now());
        let r = match (&mut watch, poll) {
            (Some(w), _) => match tokio::time::timeout(left, w.next()).await {
                Ok(Some(m)) => m?,
                _ => break,
            },
            (None, Some(every)) => {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(every).await;
                changes.get_rollout(v1::GetRolloutRequest { id: id.clone() }).await.context("GetRollout")?.into_inner()
            }
            (None, None) => unreachable!("watching or polling"),
        };
        updates += 1;
        for (i, w) in r.waves.iter().enumerate() {
            if w.done && seen_done.get(i).is_some_and(Option::is_none) {
                seen_done[i] = Some(started.elapsed());
            }
        }
        let terminal = matches!(RS::try_from(r.state), Ok(RS::Succeeded | RS::Failed | RS::RolledBack | RS::Aborted));
        last = Some(r);
        if terminal {
            break;
        }
    }
    let took = started.elapsed();
    let r = last.context("no rollout state read")?;
    let state = RS::try_from(r.state).unwrap_or(RS::Unspecified);
    if matches!(state, RS::Pending | RS::Running | RS::Paused | RS::Unspecified) {
        bail!("rollout {id} did not end within {:.0} s: still {state:?}", took.as_secs_f64());
    }
    if state != RS::Succeeded {
        let failed: Vec<String> = r
            .waves
            .iter()
            .flat_map(|w| &w.hosts)
            .filter(|h| h.state != HS::Applied as i32)
            .take(5)
            .map(|h| format!("{} {:?}: {}", h.host_id, HS::try_from(h.state).unwrap_or(HS::Unspecified), h.message))
            .collect();
        bail!(
            "rollout {id} ended {state:?} after {:.3} s (not SUCCEEDED): stop_reason: {:?}; first hosts not applied: {failed:?}",
            took.as_secs_f64(),
            r.stop_reason
        );
    }

    println!(
        "rollout: {agents} agents, {} waves, StartRollout -> succeeded in {:.3} s (target <= 3 s)",
        r.waves.len(),
        took.as_secs_f64()
    );
    println!(
        "rollout: StartRollout answered in {:.1} ms; first wave started {:.1} ms after the rollout was created; {updates} {} updates",
        start_rpc.as_secs_f64() * 1e3,
        secs_between(r.created_at.as_ref(), r.waves.first().and_then(|w| w.started_at.as_ref())).unwrap_or(f64::NAN)
            * 1e3,
        if poll.is_some() { "GetRollout" } else { "WatchRollout" }
    );
    for (i, w) in r.waves.iter().enumerate() {
        let end = r.waves.get(i + 1).and_then(|n| n.started_at.as_ref()).or(r.updated_at.as_ref());
        let last_result = w.hosts.iter().filter_map(|h| h.updated_at.as_ref()).max_by_key(|t| (t.seconds, t.nanos));
        println!(
            "  wave {} ({:>4}, {:>4} hosts): {:.3} s (last host result after {:.3} s; seen done by the client at {:.3} s)",
            i + 1,
            w.size,
            w.hosts.len(),
            secs_between(w.started_at.as_ref(), end).unwrap_or(f64::NAN),
            secs_between(w.started_at.as_ref(), last_result).unwrap_or(f64::NAN),
            seen_done[i].map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
        );
    }

    // Every agent holds the new file, the rollout says so, and so does the server.
    let stale: Vec<&str> =
        fleet.iter().filter(|a| a.hash() != expected || a.applied() != 1).map(|a| a.host()).collect();
    if !stale.is_empty() {
        bail!("{} agents do not hold the new file (first: {:?})", stale.len(), &stale[..stale.len().min(5)]);
    }
    let hosts: Vec<&v1::RolloutHost> = r.waves.iter().flat_map(|w| &w.hosts).collect();
    let bad = hosts
        .iter()
        .filter(|h| h.state != HS::Applied as i32 || h.after_hash != expected || h.before_hash != before)
        .count();
    if hosts.len() != agents || bad > 0 {
        bail!(
            "rollout lists {} hosts, {bad} of them not APPLIED {} -> {}",
            hosts.len(),
            &before[..12],
            &expected[..12]
        );
    }
    let mut server_stale = 0;
    for a in &fleet {
        let f = fleet_api
            .get_file(v1::GetFileRequest { host_id: a.host().to_string(), path: BENCH_PATH.into() })
            .await?
            .into_inner();
        if f.state.map(|s| s.content_hash) != Some(expected.clone()) {
            server_stale += 1;
        }
    }
    if server_stale > 0 {
        bail!("the server shows the old file for {server_stale} hosts");
    }
    println!(
        "rollout: all {agents} agents hold {} (was {}), as the rollout and GetFile show",
        &expected[..12],
        &before[..12]
    );
    println!(
        "RESULT rollout agents={agents} waves={} seconds={:.3} start_rpc_ms={:.1} target_s=3",
        r.waves.len(),
        took.as_secs_f64(),
        start_rpc.as_secs_f64() * 1e3
    );
    drop(fleet);
    Ok(())
}
