//! `driftwatch-server`: parse flags, set up logging, run until SIGINT/SIGTERM; SIGHUP
//! reads the config file again (`driftwatch_server::reload`). Under a service manager
//! (`NOTIFY_SOCKET`) it reports readiness, reloads and shutdown, and feeds the watchdog.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use driftwatch_server::{ServerConfig, ServerFile};
use driftwatch_telemetry::sd_notify::{self, Notifier};

/// driftwatch server: ingest agent streams, keep the fleet's state, answer queries.
///
/// Settings come from flags, then DRIFTWATCH_* environment variables, then the
/// config file, then defaults.
#[derive(Debug, Clone, Parser)]
#[command(name = "driftwatch-server", version)]
struct Args {
    /// TOML config file whose keys mirror these flags.
    #[arg(long, env = "DRIFTWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "DRIFTWATCH_LISTEN")]
    listen: Option<String>,
    /// Data directory; the SQLite database lives inside [default: ./driftwatch-data].
    #[arg(long, env = "DRIFTWATCH_DATA", conflicts_with = "database")]
    data: Option<PathBuf>,
    /// Database URL instead of --data: sqlite:///path/to/driftwatch.db.
    #[arg(long, env = "DRIFTWATCH_DATABASE")]
    database: Option<String>,
    /// Rules directory [default: ./rules if present].
    #[arg(long, env = "DRIFTWATCH_RULES")]
    rules: Option<PathBuf>,
    /// Prometheus /metrics and /healthz address ("off" disables) [default: 127.0.0.1:9464].
    #[arg(long, env = "DRIFTWATCH_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Plaintext gRPC without authentication. Loopback development only; refused on other addresses.
    /// Without it the server serves TLS: with [tls] files, or its built-in CA in DATA/tls.
    #[arg(long, env = "DRIFTWATCH_INSECURE")]
    insecure: bool,
    /// A name or address agents and operators use to reach this server; it goes into the
    /// built-in CA's server certificate (repeatable; the listen address, the hostname and
    /// localhost are always in).
    #[arg(long = "tls-san", value_name = "NAME", env = "DRIFTWATCH_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Log filter, e.g. info or driftwatch_server=debug.
    #[arg(long, env = "DRIFTWATCH_LOG", default_value = "info")]
    log: String,
    /// Write the man pages into DIR and exit (packaging: `scripts/docs-for-packages`).
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, env = "DRIFTWATCH_LOG_FORMAT", value_name = "text|json", default_value = "text")]
    log_format: driftwatch_telemetry::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum Command {
    /// Rotate the built-in fleet CA with an overlap (the running server picks each step up).
    RotateCa {
        #[command(subcommand)]
        step: RotateStep,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
enum RotateStep {
    /// Make the next CA: trusted at once, it signs new agent certificates; writes tls/ca-bundle.pem.
    Prepare,
    /// Serve with the next CA once every client trusts the bundle; the old one stays trusted for client certificates.
    Finish,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.man {
        return man_pages(dir);
    }
    driftwatch_telemetry::logging::init(&args.log, args.log_format).map_err(|e| anyhow::anyhow!("--log: {e}"))?;
    let config = resolve(&args)?;
    if let Some(Command::RotateCa { step }) = args.command.clone() {
        return rotate_ca(&config, step);
    }
    let notifier = Arc::new(Notifier::from_env());
    let server = driftwatch_server::start(config).await?;
    tracing::info!(grpc = %server.grpc_addr, metrics = ?server.metrics_addr, "driftwatch-server listening");
    // `start` returns with the store open, the state loaded and both listeners bound:
    // from here a connection is served.
    let serving = format!("serving gRPC on {}", server.grpc_addr);
    notifier.ready(&serving);
    let token = server.shutdown_token();
    // On this runtime, like the work: a starved runtime stops the pings too.
    tokio::spawn(sd_notify::feed_watchdog(notifier.clone(), server.liveness(), token.clone().cancelled_owned()));
    let reloader = server.reloader.clone();
    tokio::spawn(driftwatch_telemetry::signals::run(notifier, token, move || {
        reload(args.clone(), reloader.clone(), serving.clone())
    }));
    server.wait().await?;
    Ok(())
}

/// What SIGHUP does (`driftwatch_telemetry::signals`): the config file read again with
/// the same flags, applied as far as it can be live; the status line it returns.
async fn reload(args: Args, reloader: Arc<driftwatch_server::reload::Reloader>, serving: String) -> String {
    match tokio::task::spawn_blocking(move || resolve_errors(&args)).await {
        Ok(Ok(config)) => {
            let report = reloader.apply(config).await;
            tracing::info!(summary = %report.summary(), "reload done");
            format!("{serving}; {}", report.summary())
        }
        Ok(Err(errors)) => {
            reloader.refused(&errors);
            format!("{serving}; config reload refused, see the log")
        }
        Err(e) => {
            reloader.refused(&[format!("reload task failed: {e}")]);
            serving
        }
    }
}

/// Flags over the config file, resolved and validated.
fn resolve(args: &Args) -> anyhow::Result<ServerConfig> {
    resolve_errors(args).map_err(|errors| driftwatch_server::ServerError::Config(errors).into())
}

/// [`resolve`] with every problem kept apart (a refused reload logs each one).
fn resolve_errors(args: &Args) -> Result<ServerConfig, Vec<String>> {
    let flatten = |e: driftwatch_server::ServerError| match e {
        driftwatch_server::ServerError::Config(v) => v,
        other => vec![other.to_string()],
    };
    let (mut file, source) = match &args.config {
        Some(p) => (ServerConfig::load_file(p).map_err(flatten)?, p.display().to_string()),
        None => (ServerFile::default(), "flags".to_string()),
    };
    let args = args.clone();
    file.listen = args.listen.or(file.listen);
    if args.data.is_some() || args.database.is_some() {
        file.data = args.data;
        file.database = args.database;
    }
    file.rules = args.rules.or(file.rules);
    file.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if args.insecure {
        file.insecure = Some(true);
    }
    if !args.tls_san.is_empty() {
        file.tls_san = Some(args.tls_san);
    }
    ServerConfig::resolve(file, &source).map_err(flatten)
}

fn rotate_ca(config: &ServerConfig, step: RotateStep) -> anyhow::Result<()> {
    use driftwatch_server::tls::{TlsSource, rotate};
    let Some(TlsSource::BuiltIn { dir, .. }) = config.tls.as_ref().map(|t| &t.source) else {
        anyhow::bail!(
            "rotate-ca is for the built-in CA; with [tls] files, rotate in your own PKI and update client_ca"
        );
    };
    let ca = driftwatch_server::tls::BuiltInCa { dir: dir.clone() };
    match step {
        RotateStep::Prepare => {
            let p = rotate::prepare(&ca)?;
            println!("next CA created (sha256 {}); it signs new agent certificates from now on.", p.fingerprint);
            println!(
                "Give {} to every agent and operator as --ca-file, then run `rotate-ca finish`.",
                p.bundle.display()
            );
        }
        RotateStep::Finish => {
            let previous = rotate::finish(&ca)?;
            println!("the server now presents a certificate from the new CA.");
            println!(
                "The old CA stays trusted for agent certificates until you delete {} (when every agent has renewed).",
                previous.display()
            );
        }
    }
    Ok(())
}

/// The man pages, from the flags themselves (one per subcommand too).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(<Args as clap::CommandFactory>::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}
