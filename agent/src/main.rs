//! `driftwatch-agent`: parse flags, set up logging, run until SIGINT/SIGTERM; SIGHUP
//! reads the config file again (`driftwatch_agent::run::reload`). Under a service
//! manager (`NOTIFY_SOCKET`) it reports readiness, reloads and shutdown, and feeds the
//! watchdog.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use driftwatch_agent::config::WatchEntry;
use driftwatch_agent::run::reload::Reloader;
use driftwatch_agent::{AgentConfig, AgentFile};
use driftwatch_telemetry::sd_notify::{self, Notifier};

/// driftwatch agent: watch this host's config files and resources and stream
/// parsed, secret-masked snapshots to the driftwatch server.
///
/// Settings come from flags, then DRIFTWATCH_* environment variables, then the
/// config file, then defaults.
#[derive(Debug, Clone, Parser)]
#[command(name = "driftwatch-agent", version)]
struct Args {
    /// TOML config file whose keys mirror these flags.
    #[arg(long, env = "DRIFTWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Server URL: https://HOST:PORT (with --ca-file), or http:// to a loopback
    /// address with --insecure [default: http://127.0.0.1:50051].
    #[arg(long, env = "DRIFTWATCH_SERVER")]
    server: Option<String>,
    /// PEM file of the CA to trust for an https:// server (the server's DATA/tls/ca.pem).
    /// Only this CA is trusted, never the system's roots.
    #[arg(long, env = "DRIFTWATCH_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// File holding an enrollment token (from `driftwatch enroll-token create`), used
    /// when this agent has no certificate yet or its certificate expired. The agent's
    /// key and certificate are kept in STATE_DIR/identity/; the file may go once enrolled.
    #[arg(long, env = "DRIFTWATCH_ENROLL_TOKEN_FILE", value_name = "FILE")]
    enroll_token_file: Option<PathBuf>,
    /// This host's id [default: the host name]. Over TLS it is the id the agent proposes
    /// when it enrolls; the one in its certificate is used from then on.
    #[arg(long, env = "DRIFTWATCH_HOST_ID")]
    host_id: Option<String>,
    /// A label, K=V; repeatable (e.g. --label env=production --label service=web2img).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// A file path or glob to watch; repeatable. Prefix with a format to override
    /// detection by name: ini:/etc/app/legacy.conf.
    #[arg(long = "watch", value_name = "PATH_OR_GLOB")]
    watch: Vec<String>,
    /// A file, directory (everything below it) or glob the server may ask this agent
    /// to change; repeatable. Replaces the config file's `writable` list. Nothing is
    /// writable unless listed here or there.
    #[arg(long = "writable", value_name = "PATH_OR_GLOB")]
    writable: Vec<String>,
    /// How often to sample CPU, memory, disk and process groups (0 turns it off) [default: 10s].
    #[arg(long, env = "DRIFTWATCH_RESOURCE_INTERVAL", value_name = "DURATION", value_parser = duration_text)]
    resource_interval: Option<String>,
    /// Where the spool, the local key and the agent's certificate live [default: ./driftwatch-agent-state].
    #[arg(long, env = "DRIFTWATCH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Serve this agent's Prometheus /metrics and /healthz on ADDR (IP:PORT; "off"
    /// disables) [default: off]. Off loopback, set metrics_token_file in the config.
    #[arg(long, env = "DRIFTWATCH_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// The node's file system is mounted at DIR (an agent in a container: /host). Watched
    /// and writable paths stay node paths (/etc/app/.env), read and written below DIR.
    #[arg(long, env = "DRIFTWATCH_PATH_PREFIX", value_name = "DIR")]
    path_prefix: Option<PathBuf>,
    /// Plaintext gRPC. Loopback development only.
    #[arg(long, env = "DRIFTWATCH_INSECURE")]
    insecure: bool,
    /// Log filter, e.g. info or driftwatch_agent=debug.
    #[arg(long, env = "DRIFTWATCH_LOG", default_value = "info")]
    log: String,
    /// Write the man pages into DIR and exit (packaging: `scripts/docs-for-packages`).
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, env = "DRIFTWATCH_LOG_FORMAT", value_name = "text|json", default_value = "text")]
    log_format: driftwatch_telemetry::LogFormat,
    /// Print the systemd drop-in that makes the `writable` paths of this config writable
    /// in the unit's sandbox (for /etc/systemd/system/driftwatch-agent.service.d/writable.conf)
    /// and exit.
    #[arg(long)]
    print_systemd_dropin: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.man {
        return man_pages(dir);
    }
    driftwatch_telemetry::logging::init(&args.log, args.log_format).map_err(|e| anyhow::anyhow!("--log: {e}"))?;
    let print_dropin = args.print_systemd_dropin;
    let config = resolve(args.clone())?;
    if print_dropin {
        let text = driftwatch_agent::dropin::render(&config.writable, driftwatch_agent::dropin::Kind::of)
            .map_err(|e| anyhow::anyhow!("writable: {e}"))?;
        print!("{text}");
        return Ok(());
    }
    driftwatch_agent::memory::single_arena();
    // One thread is plenty for a watcher and a stream; blocking work (file reads,
    // hashing, sysinfo, spool fsync) goes to the small blocking pool, whose threads
    // do not linger once idle (see `memory`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_keep_alive(driftwatch_agent::memory::BLOCKING_KEEP_ALIVE)
        .build()?;
    rt.block_on(async move {
        let notifier = Arc::new(Notifier::from_env());
        let agent = driftwatch_agent::start(config).await?;
        let token = agent.shutdown_token();
        let reloader = agent.reloader.clone();
        let signals = tokio::spawn(driftwatch_telemetry::signals::run(notifier.clone(), token.clone(), move || {
            reload(args.clone(), reloader.clone())
        }));
        // Ready once the watches are armed: from then on every change is seen and
        // spooled. Not later: the first listing waits for the server, and a server
        // that is down must not fail the agent's start (the spool holds the changes).
        tokio::select! {
            _ = agent.watching() => {
                let (files, watches) = agent.watch_counts();
                notifier.ready(&format!("watching {files} files ({watches} directories)"));
            }
            _ = token.cancelled() => {}
        }
        // On the agent's one runtime thread, like the producer and the stream: a
        // blocked runtime stops the pings by itself.
        tokio::spawn(sd_notify::feed_watchdog(notifier, agent.liveness(), token.clone().cancelled_owned()));
        agent.wait().await?;
        signals.abort();
        Ok(())
    })
}

/// A duration flag, checked with the one duration grammar so that a bad value is
/// refused naming the flag; it is then resolved with the config like every duration.
fn duration_text(text: &str) -> Result<String, String> {
    driftwatch_agent::config::parse_duration(text).map(|_| text.to_string())
}

fn resolve(args: Args) -> anyhow::Result<AgentConfig> {
    let (mut file, source) = match &args.config {
        Some(p) => (AgentConfig::load_file(p)?, p.display().to_string()),
        None => (AgentFile::default(), "flags".to_string()),
    };
    file.server = args.server.or(file.server);
    file.ca_file = args.ca_file.or(file.ca_file);
    file.enroll_token_file = args.enroll_token_file.or(file.enroll_token_file);
    file.host_id = args.host_id.or(file.host_id);
    for l in &args.labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--label {l}: expected K=V"))?;
        file.labels.insert(k.to_string(), v.to_string());
    }
    if !args.watch.is_empty() {
        file.watch = args.watch.into_iter().map(WatchEntry::Plain).collect();
    }
    if !args.writable.is_empty() {
        file.writable = args.writable;
    }
    file.resource_interval = args.resource_interval.or(file.resource_interval);
    file.state_dir = args.state_dir.or(file.state_dir);
    file.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    file.path_prefix = args.path_prefix.or(file.path_prefix);
    if args.insecure {
        file.insecure = Some(true);
    }
    Ok(AgentConfig::resolve(file, &source)?)
}

/// The man pages, from the flags themselves (one per subcommand too).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(<Args as clap::CommandFactory>::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}

/// What SIGHUP does (`driftwatch_telemetry::signals`): the config file read again with
/// the same flags, applied as far as it can be live; the status line it returns.
async fn reload(args: Args, reloader: Arc<Reloader>) -> String {
    match tokio::task::spawn_blocking(move || resolve(args)).await {
        Ok(Ok(config)) => match reloader.apply(config).await {
            Ok(report) => {
                tracing::info!(summary = %report.summary(), "reload done");
                report.summary()
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running config stays");
                "reload refused, see the log".to_string()
            }
        },
        Ok(Err(e)) => {
            // `validate()` reports every problem, each as `file: field: message`.
            for problem in format!("{e:#}").lines().map(str::trim).filter(|l| !l.is_empty()) {
                tracing::error!(problem, "config reload refused; the running config stays");
            }
            "config reload refused, see the log".to_string()
        }
        Err(e) => {
            tracing::error!(error = %e, "reload task failed; the running config stays");
            "reload failed, see the log".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_use_the_shared_grammar_and_name_the_flag() {
        let args = Args::try_parse_from(["driftwatch-agent", "--resource-interval", "1h30m"]).unwrap();
        assert_eq!(args.resource_interval.as_deref(), Some("1h30m"));
        let err = Args::try_parse_from(["driftwatch-agent", "--resource-interval", "10"]).unwrap_err().to_string();
        assert!(err.contains("--resource-interval") && err.contains("needs a unit"), "{err}");
        let err = Args::try_parse_from(["driftwatch-agent", "--resource-interval", "5x"]).unwrap_err().to_string();
        assert!(err.contains("--resource-interval") && err.contains("unknown unit"), "{err}");
    }

    #[test]
    fn tls_flags_mirror_the_config_keys() {
        let args = Args::try_parse_from([
            "driftwatch-agent",
            "--server",
            "https://dw.example:50051",
            "--enroll-token-file",
            "/run/token",
            "--watch",
            "/etc/app/.env",
        ])
        .unwrap();
        let err = resolve(args).unwrap_err().to_string();
        assert!(err.contains("flags: ca_file: an https:// server needs ca_file (--ca-file)"), "{err}");
        let args = Args::try_parse_from(["driftwatch-agent", "--server", "http://10.1.2.3:50051", "--watch", "/x"]);
        let err = resolve(args.unwrap()).unwrap_err().to_string();
        assert!(err.contains("flags: server: plaintext http:// is for loopback development only"), "{err}");
    }
}
