//! What every scenario uses: the server process, virtual agents on the gateway
//! protocol, percentiles and `RESULT` lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use driftwatch_proto::v1;
use driftwatch_tests::gateway::{AgentTx, hello, open_agent_stream};
use driftwatch_tests::{ChildProcess, free_port, sibling_binary};

/// `RESULT <scenario> key=value ...`: the lines BENCHMARKS.md quotes.
macro_rules! result {
    ($($t:tt)*) => {
        println!("RESULT {}", format_args!($($t)*))
    };
}
pub(crate) use result;

/// The server under test: a `driftwatch-server` process this simulator started (killed
/// if the simulator dies first), or one given by `--server`.
pub struct ServerProc {
    pub url: String,
    child: Option<ChildProcess>,
    pid: Option<u32>,
    /// host:port of the server's /metrics, when this process started it.
    metrics: Option<String>,
    /// The server's data dir, when this process started it.
    data: Option<PathBuf>,
    /// How it was started (binary and arguments), for a restart on the same port and data dir.
    started: Option<(PathBuf, Vec<std::ffi::OsString>)>,
}

/// How the started server is configured.
#[derive(Debug, Default)]
pub struct ServerSetup {
    /// `--rules`
    pub rules: Option<PathBuf>,
    /// `--config`: a server TOML file (e.g. with `[[notifiers]]`).
    pub config: Option<PathBuf>,
    /// Serve mutual TLS with the built-in CA instead of `--insecure`.
    pub tls: bool,
}

/// Under `--tls`: the server's fleet CA, which trusts the server and mints each virtual
/// agent's client certificate (as enrollment would, without the RPC per agent).
pub struct SimTls {
    ca_pem: String,
    ca: driftwatch_pki::Ca,
    /// One key for every virtual agent: certificates differ, key generation is not what is measured.
    key: driftwatch_pki::AgentKey,
    /// The admin token the server wrote on first start: operator calls send it.
    admin: Option<String>,
}

static TLS: std::sync::OnceLock<SimTls> = std::sync::OnceLock::new();

impl SimTls {
    /// Use the CA in `data/tls` for every connection from now on; operator calls send
    /// `data/admin.token` (`require_admin`: wait for it; else go without, for a server
    /// from before operator tokens).
    pub fn enable(data: &Path, require_admin: bool) -> anyhow::Result<()> {
        let ca_pem = std::fs::read_to_string(data.join("tls/ca.pem"))?;
        let ca = driftwatch_pki::Ca::from_pem(&ca_pem, &std::fs::read_to_string(data.join("tls/ca.key"))?)?;
        // Written on first start right after the CA: until then, not enabled (retried).
        let admin = match std::fs::read_to_string(data.join("admin.token")) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if require_admin => return Err(e.into()),
            // A server from before operator tokens ignores the header; sending one anyway
            // (DRIFTWATCH_SIM_BEARER=1) measures what carrying it costs by itself.
            Err(_) if std::env::var_os("DRIFTWATCH_SIM_BEARER").is_some() => {
                Some(format!("dwt_{}.{}", "0".repeat(16), "0".repeat(64)))
            }
            Err(_) => None,
        };
        let _ = TLS.set(SimTls { ca_pem, ca, key: driftwatch_pki::AgentKey::generate(), admin });
        Ok(())
    }

    pub fn on() -> bool {
        TLS.get().is_some()
    }

    /// A certificate for `host`: (cert, key) PEM.
    pub fn mint(host: &str) -> anyhow::Result<(String, String)> {
        let t = TLS.get().context("TLS is not enabled")?;
        let csr = driftwatch_pki::certificate_request(&t.key, host)?;
        let issued =
            t.ca.sign_request(&csr, &driftwatch_pki::Identity::Host(host.into()), Duration::from_secs(86400))?;
        Ok((issued.cert_pem, t.key.to_pem()))
    }
}

/// An operator's connection: the channel, and the token on every call.
pub type OpChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, driftwatch_proto::bearer::Bearer>;

/// An endpoint for `url`: under `--tls` trusting the fleet CA and, for an agent
/// (`identity`: its cert and key), presenting its certificate.
pub fn endpoint(url: &str, identity: Option<(String, String)>) -> anyhow::Result<tonic::transport::Endpoint> {
    let ep = tonic::transport::Endpoint::from_shared(url.to_string())?;
    let Some(t) = TLS.get() else { return Ok(ep) };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(ep.tls_config(tls)?)
}

impl ServerProc {
    /// A server started elsewhere (`--server URL`, `--server-pid PID`).
    pub fn external(url: String, pid: Option<u32>) -> Self {
        Self { url, child: None, pid, metrics: None, data: None, started: None }
    }

    pub fn spawn(bin: &Option<PathBuf>, dir: &Path, setup: &ServerSetup, log: &str) -> anyhow::Result<Self> {
        let bin = bin.clone().unwrap_or_else(|| sibling_binary("driftwatch-server"));
        let port = free_port();
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(&bin);
        if let Some(c) = &setup.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(r) = &setup.rules {
            cmd.arg("--rules").arg(r);
        }
        if !setup.tls {
            cmd.arg("--insecure");
        }
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &metrics, "--log", log])
            .arg("--data")
            .arg(dir.join("server-data"));
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let child = ChildProcess::spawn("driftwatch-server", cmd, None)
            .with_context(|| format!("start {} (build it first: cargo build --release)", bin.display()))?;
        let pid = child.pid();
        let url = if setup.tls { format!("https://localhost:{port}") } else { format!("http://127.0.0.1:{port}") };
        Ok(Self {
            url,
            child: Some(child),
            pid: Some(pid),
            metrics: Some(metrics),
            data: Some(dir.join("server-data")),
            started: Some((bin, args)),
        })
    }

    /// SIGKILL the server this process started (no drain, no flush), and reap it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.as_mut().context("the server was not started here (--server)")?.kill();
        Ok(())
    }

    /// Start the server again as it was started: same port, same data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let (bin, args) = self.started.as_ref().context("the server was not started here (--server)")?;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let child = ChildProcess::spawn("driftwatch-server", cmd, None)?;
        self.pid = Some(child.pid());
        self.child = Some(child);
        Ok(())
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        // A server under a profiler (valgrind) starts tens of times slower.
        let wait = std::env::var("DRIFTWATCH_SIM_START_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
        let deadline = start + Duration::from_secs(wait);
        loop {
            // The server writes its CA on first start, before it listens.
            if self.url.starts_with("https://")
                && !SimTls::on()
                && let Some(data) = &self.data
            {
                // A server from before operator tokens never writes one: once its CA is
                // 10 s old (a server under a profiler writes the token seconds after it).
                let ca_age = std::fs::metadata(data.join("tls/ca.pem"))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let _ = SimTls::enable(data, ca_age < Duration::from_secs(10));
            }
            if let Ok(ch) = self.channel().await {
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

    /// A new connection to the server as an operator: under `--tls` every call carries
    /// the admin token (so the access check is part of what is measured).
    pub async fn channel(&self) -> anyhow::Result<OpChannel> {
        let token = TLS.get().and_then(|t| t.admin.clone());
        let bearer = driftwatch_proto::bearer::Bearer::new(token.as_deref()).map_err(anyhow::Error::msg)?;
        Ok(tonic::service::interceptor::InterceptedService::new(endpoint(&self.url, None)?.connect().await?, bearer))
    }

    /// One counter or gauge from /metrics (plain HTTP/1.0 GET: no client dependency).
    pub fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics.as_ref()?).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The server process's CPU time so far, in clock ticks (when this process knows its pid).
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.pid.and_then(cpu_ticks)
    }

    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_bytes)
    }

    /// SIGTERM for a clean drain (killed after 15 s).
    pub async fn stop(&mut self) {
        if let Some(c) = &mut self.child {
            c.stop(Duration::from_secs(15)).await;
        }
    }
}

pub fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of a process in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds of a duration, for RESULT lines.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50, p99 and max of sorted durations, in milliseconds.
pub fn p50_p99_max_ms(sorted: &[Duration]) -> (f64, f64, f64) {
    (ms(pct(sorted, 0.50)), ms(pct(sorted, 0.99)), ms(sorted.last().copied().unwrap_or_default()))
}

/// The latency from an event's time (ms since the epoch, server clock) to now (this
/// machine's clock: the same one on loopback).
pub fn since_event(at_ms: i64) -> Duration {
    Duration::from_millis((driftwatch_proto::now_millis() - at_ms).max(0) as u64)
}

/// A `.env` file state of `keys` numeric settings; `version` is SETTING_NUMBER_0 and the
/// content hash.
pub fn file_state(path: &str, keys: usize, version: u64) -> v1::FileState {
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

/// A virtual agent: its stream to the server.
pub struct SimAgent {
    pub tx: AgentTx,
    pub inbound: tonic::Streaming<v1::ServerMessage>,
}

pub async fn connect_agent(url: &str, host_id: &str) -> anyhow::Result<SimAgent> {
    connect_agent_labels(url, host_id, [("sim".to_string(), "true".to_string())].into()).await
}

pub async fn connect_agent_labels(
    url: &str,
    host_id: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<SimAgent> {
    let identity = if SimTls::on() { Some(SimTls::mint(host_id)?) } else { None };
    connect_agent_as(url, host_id, labels, identity).await
}

/// A virtual agent presenting `identity` (cert, key) under `--tls`.
pub async fn connect_agent_as(
    url: &str,
    host_id: &str,
    labels: std::collections::BTreeMap<String, String>,
    identity: Option<(String, String)>,
) -> anyhow::Result<SimAgent> {
    let ch = endpoint(url, identity)?.connect_timeout(Duration::from_secs(20)).connect().await?;
    let (tx, inbound) =
        open_agent_stream(ch, hello(host_id, labels, "sim", "sim")).await.context("expected a welcome")?;
    Ok(SimAgent { tx, inbound })
}

pub fn snapshot(seq: u64, full: bool, files: Vec<v1::FileState>) -> v1::AgentMessage {
    driftwatch_tests::gateway::snapshot(v1::Snapshot { seq, full, files, ..Default::default() })
}

/// The rule the `subscribers` and `notify` scenarios fire and resolve: LEVEL above 100.
pub fn level_rules(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.join("bench-rules");
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("bench.yaml"),
        "groups:\n  - name: bench\n    rules:\n      - name: level-above-100\n        target: {file: \"*.env\", key: LEVEL}\n        expr: \"is_number(value) && value > 100\"\n        severity: high\n",
    )?;
    Ok(d)
}

/// One agent whose file's LEVEL flips above and below the line of [`level_rules`]: every
/// change is one alert event (fired, then resolved, ...).
pub struct LevelFlipper {
    agent: SimAgent,
    changes: u64,
}

impl LevelFlipper {
    pub async fn connect(url: &str, host: &str) -> anyhow::Result<Self> {
        Ok(Self { agent: connect_agent(url, host).await?, changes: 0 })
    }

    /// The next change: LEVEL 500 (fires) on even changes, 1 (resolves) on odd ones.
    pub fn flip(&mut self) -> anyhow::Result<()> {
        let i = self.changes;
        self.changes += 1;
        let level = if i.is_multiple_of(2) { 500 } else { 1 };
        let mut f = file_state("/etc/sim/app.env", 2, i + 1);
        f.keys.push(v1::KeyValue { key: "LEVEL".into(), value: Some(v1::Value::int(level)) });
        self.agent.tx.send(snapshot(i + 1, i == 0, vec![f])).context("the agent's stream ended")?;
        Ok(())
    }
}
