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
//!   driftwatch-sim notify --alerts 200                      alert fired → webhook delivery, p50/p99
//!   driftwatch-sim --tls storm --agents 5000               every agent (re)connects at once: handshakes/s
//!   driftwatch-sim restart --agents 5000                   SIGKILL and restart the server: reconnect storm with the agent's backoff
//!   driftwatch-sim [--tls] query --clients 8 --duration-secs 10   GetHost calls/s and p50/p99 (with a token under --tls)
//!
//! `--tls` starts the server with mutual TLS (its built-in CA); virtual agents then
//! present certificates of their own (ingest, idle, storm, subscribers, notify).
//!
//! By default the server is the `driftwatch-server` binary next to this one,
//! started on a free loopback port with a temporary data dir. One module per
//! scenario; `shared` holds the server process, virtual agents and percentiles.

mod footprint;
mod idle;
mod ingest;
mod latency;
mod notify;
mod query;
mod restart;
mod rollout;
mod shared;
mod soak;
mod storm;
mod subscribers;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use shared::{ServerProc, ServerSetup};

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
    /// Serve mutual TLS (the server's built-in CA) instead of plaintext; every virtual
    /// agent presents its own client certificate.
    #[arg(long, global = true)]
    tls: bool,
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
    /// Every agent connects at once, each with a full handshake: time until all are up.
    Storm {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        /// Seconds to hold the connections afterwards.
        #[arg(long, default_value_t = 2)]
        hold_secs: u64,
    },
    /// Agents reconnecting with the agent's own backoff while the server is SIGKILLed and
    /// restarted on the same port and data dir: attempts per 100 ms, refusals, time until
    /// every agent is back, server RSS.
    Restart {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        /// Give up waiting for all agents (first connect, or back after the restart) after this many seconds.
        #[arg(long, default_value_t = 120)]
        deadline_secs: u64,
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
    /// Operators' reads: GetHost of a random host from concurrent clients (under --tls
    /// each call carries the admin token).
    Query {
        #[arg(long, default_value_t = 200)]
        hosts: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
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
    /// Virtual agents with steady file churn and real agent processes whose files a
    /// writer edits, for minutes: server and agent RSS slope after a warm-up
    Soak {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 600)]
        duration_secs: u64,
        /// RSS samples before this are not in the slope.
        #[arg(long, default_value_t = 120)]
        warmup_secs: u64,
        /// Each virtual agent sends a changed file this often.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        #[arg(long, default_value_t = 2)]
        real_agents: usize,
        /// The driftwatch-agent binary [default: next to this binary].
        #[arg(long)]
        agent_bin: Option<PathBuf>,
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
    /// A webhook notifier pointed at a receiver in this process, and one agent whose file
    /// change fires or resolves an alert: time from each fired event to its delivery.
    Notify {
        /// Alerts to fire (each also resolves: two events per alert).
        #[arg(long, default_value_t = 200)]
        alerts: usize,
        /// Milliseconds between events (a fire and its resolution are this far apart).
        #[arg(long, default_value_t = 25)]
        interval_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    shared::raise_nofile();
    driftwatch_pki::install_tls_provider();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tmp = tempfile::tempdir()?;
        // The notify scenario's receiver listens before the server starts: its URL is in
        // the server's config.
        let receiver = match &cli.cmd {
            Cmd::Notify { .. } => Some(driftwatch_tests::webhook::Receiver::start(0).await),
            _ => None,
        };
        let mut server = match &cli.server {
            Some(_) if receiver.is_some() => {
                anyhow::bail!("notify starts its own server (the server's config names the receiver): drop --server")
            }
            Some(url) => ServerProc::external(url.clone(), cli.server_pid),
            None => {
                let flips = matches!(cli.cmd, Cmd::Subscribers { .. } | Cmd::Notify { .. });
                let setup = ServerSetup {
                    rules: match &cli.rules {
                        Some(r) => Some(r.clone()),
                        None if flips => Some(shared::level_rules(tmp.path())?),
                        None => None,
                    },
                    config: receiver.as_ref().map(|r| notify::server_config(tmp.path(), r)).transpose()?,
                    tls: cli.tls,
                };
                if cli.tls
                    && matches!(
                        cli.cmd,
                        Cmd::Latency { .. }
                            | Cmd::AgentFootprint { .. }
                            | Cmd::Rollout { .. }
                            | Cmd::Restart { .. }
                            | Cmd::Soak { .. }
                    )
                {
                    anyhow::bail!("--tls is for the ingest, idle, storm, query, subscribers and notify scenarios");
                }
                ServerProc::spawn(&cli.server_bin, tmp.path(), &setup, &cli.server_log)?
            }
        };
        server.wait_ready().await?;
        let r = match cli.cmd {
            Cmd::Ingest { agents, duration_secs, window, keys_per_file, labels, stuck_subscribers } => {
                let run = ingest::Run {
                    agents,
                    duration: Duration::from_secs(duration_secs),
                    window,
                    keys: keys_per_file,
                    labels: ingest::parse_labels(&labels)?,
                };
                ingest::run_with_stuck_subscribers(&server, run, stuck_subscribers).await
            }
            Cmd::Storm { agents, hold_secs } => storm::run(&server, agents, Duration::from_secs(hold_secs)).await,
            Cmd::Restart { agents, deadline_secs } => {
                restart::run(&mut server, agents, Duration::from_secs(deadline_secs)).await
            }
            Cmd::Idle { agents, files_per_agent, hold_secs } => {
                idle::run(&server, agents, files_per_agent, Duration::from_secs(hold_secs)).await
            }
            Cmd::Latency { iterations } => latency::run(&server, iterations, tmp.path()).await,
            Cmd::Query { hosts, clients, duration_secs } => {
                query::run(&server, hosts.max(1), clients.max(1), Duration::from_secs(duration_secs)).await
            }
            Cmd::Subscribers { subscribers: n, events, stuck, interval_ms } => {
                subscribers::run(&server, n, events, stuck, Duration::from_millis(interval_ms)).await
            }
            Cmd::Rollout { agents, agents_per_connection, waves, poll_ms } => {
                let waves = waves.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
                let poll = poll_ms.map(|ms| Duration::from_millis(ms.max(1)));
                rollout::run(&server, agents, agents_per_connection.max(1), waves, poll).await
            }
            Cmd::Soak { agents, duration_secs, warmup_secs, every_ms, real_agents, agent_bin } => {
                let run = soak::Run {
                    agents,
                    duration: Duration::from_secs(duration_secs),
                    warmup: Duration::from_secs(warmup_secs),
                    every: Duration::from_millis(every_ms.max(1)),
                    real_agents,
                    agent_bin,
                };
                soak::run(&server, run, tmp.path()).await
            }
            Cmd::AgentFootprint { files, duration_secs, agent_bin } => {
                footprint::run(&server, files, Duration::from_secs(duration_secs), agent_bin, tmp.path()).await
            }
            Cmd::Notify { alerts, interval_ms } => {
                let receiver = receiver.expect("started above");
                notify::run(&server, &receiver, alerts, Duration::from_millis(interval_ms)).await
            }
        };
        server.stop().await;
        r
    })
}
