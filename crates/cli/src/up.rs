//! `driftwatch up`: an embedded server (SQLite) plus one local agent watching the
//! example configs, in one process, with grpcurl lines to try.

use std::path::PathBuf;

use anyhow::Context;
use driftwatch_agent::config::WatchEntry;
use driftwatch_agent::{AgentConfig, AgentFile};
use driftwatch_server::{ServerConfig, ServerFile};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Data directory for the server's SQLite database and the agent's state
    /// [default: a new temporary directory, removed on exit].
    #[arg(long)]
    data: Option<PathBuf>,
    /// gRPC listen address (loopback only: `up` runs without TLS).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Prometheus /metrics and /healthz address ("off" disables).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Directory of config files for the local agent to watch (every file below it).
    #[arg(long, default_value = "deploy/examples/configs")]
    configs: PathBuf,
    /// Rules directory for the server [default: deploy/examples/rules if present].
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Host id of the local agent [default: this machine's host name].
    #[arg(long)]
    host_id: Option<String>,
    /// Labels of the local agent, K=V; repeatable [default: env=production, service=web2img, so the
    /// example web2img rules apply; `--label env=production --label service=gguf-sync` for the others].
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Paths (or globs) the local agent may change when asked (corrections, rollouts,
    /// remediation); repeatable [default: nothing: the example files stay as they are].
    #[arg(long, value_name = "PATH_OR_GLOB")]
    writable: Vec<String>,
    /// Resource sampling interval of the local agent.
    #[arg(long, default_value = "10s")]
    resource_interval: String,
    /// Log filter.
    #[arg(long, env = "DRIFTWATCH_LOG", default_value = "warn,driftwatch_server=info,driftwatch_agent=info")]
    log: String,
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, env = "DRIFTWATCH_LOG_FORMAT", value_name = "text|json", default_value = "text")]
    log_format: driftwatch_telemetry::LogFormat,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Logs to stderr: the banner and its commands are stdout.
    driftwatch_telemetry::logging::init(&args.log, args.log_format).map_err(|e| anyhow::anyhow!("--log: {e}"))?;
    if !args.configs.is_dir() {
        anyhow::bail!(
            "{} is not a directory: run `driftwatch up` from the repository root, or pass --configs DIR",
            args.configs.display()
        );
    }
    let configs = args.configs.canonicalize()?;
    let (_temp, data) = match args.data {
        Some(d) => (None, d),
        None => {
            let t = tempfile::Builder::new().prefix("driftwatch-up-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&data)?;
    let rules = args.rules.or_else(|| {
        let p = PathBuf::from("deploy/examples/rules");
        p.is_dir().then_some(p)
    });

    let server_cfg = ServerConfig::resolve(
        ServerFile {
            listen: Some(args.listen.clone()),
            data: Some(data.join("server")),
            rules,
            metrics_listen: Some(args.metrics_listen.clone()),
            insecure: Some(true),
            ..Default::default()
        },
        "driftwatch up",
    )?;
    let server = driftwatch_server::start(server_cfg).await?;
    let url = format!("http://{}", server.grpc_addr);

    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--label {l}: expected K=V"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    if labels.is_empty() {
        labels.insert("env".into(), "production".into());
        labels.insert("service".into(), "web2img".into());
    }
    let agent_cfg = AgentConfig::resolve(
        AgentFile {
            server: Some(url.clone()),
            host_id: args.host_id.clone(),
            labels,
            watch: vec![WatchEntry::Plain(format!("{}/**", configs.display()))],
            resource_interval: Some(args.resource_interval.clone()),
            state_dir: Some(data.join("agent")),
            insecure: Some(true),
            writable: args.writable.clone(),
            ..Default::default()
        },
        "driftwatch up",
    )?;
    let host_id = agent_cfg.host_id.clone();
    let agent = driftwatch_agent::start(agent_cfg).await?;

    let addr = server.grpc_addr;
    let cli = cli_command(&url, std::env::var("DRIFTWATCH_SERVER").ok().as_deref());
    let example = example_file(&configs)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}/FILE", configs.display()));
    println!(
        "\ndriftwatch is up.\n\
         \n  server   {url}   (data in {data})\
         \n  metrics  {metrics}\
         \n  agent    host '{host_id}' watching {configs}/**\
         \n\nTry, in another terminal:\n\
         \n  grpcurl -plaintext {addr} list\
         \n  grpcurl -plaintext {addr} driftwatch.v1.Fleet/ListHosts\
         \n  grpcurl -plaintext -d '{{\"host_id\":\"{host_id}\"}}' {addr} driftwatch.v1.Fleet/GetHost\
         \n  grpcurl -plaintext -d '{{\"host_id\":\"{host_id}\",\"path\":\"{example}\"}}' {addr} driftwatch.v1.Fleet/GetFile\
         \n  {cli} hosts\
         \n  {cli} file {host_id} {example}\
         \n\nEdit a file under {configs} and query again. Ctrl-C stops.\n",
        data = data.display(),
        metrics = server.metrics_addr.map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "off".into()),
        configs = configs.display(),
    );

    tokio::signal::ctrl_c().await?;
    println!("stopping…");
    agent.stop().await?;
    server.stop().await?;
    Ok(())
}

/// How to run the CLI against this server: plain `driftwatch` when its default (or
/// DRIFTWATCH_SERVER) already points here, else with `--server`. Plaintext either way:
/// `up` serves loopback only, without TLS.
fn cli_command(url: &str, env_server: Option<&str>) -> String {
    match env_server {
        Some(s) if s == url => "driftwatch".into(),
        None if url == "http://127.0.0.1:50051" => "driftwatch".into(),
        _ => format!("driftwatch --server {url}"),
    }
}

/// A file to show in the banner: the web2img `.env.production` the README uses
/// when present, else the first file found (depth first, by name).
fn example_file(dir: &std::path::Path) -> Option<PathBuf> {
    let preferred = dir.join("web2img/.env.production");
    if preferred.is_file() {
        return Some(preferred);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    entries
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .or_else(|| entries.iter().filter(|p| p.is_dir()).find_map(|d| example_file(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_exactly_what_to_type() {
        assert_eq!(cli_command("http://127.0.0.1:50051", None), "driftwatch");
        assert_eq!(cli_command("http://127.0.0.1:50052", None), "driftwatch --server http://127.0.0.1:50052");
        assert_eq!(cli_command("http://127.0.0.1:50052", Some("http://127.0.0.1:50052")), "driftwatch");
        let other = cli_command("http://127.0.0.1:50051", Some("https://dw.example:50051"));
        assert_eq!(other, "driftwatch --server http://127.0.0.1:50051", "a DRIFTWATCH_SERVER elsewhere is overridden");
    }
}
