//! Agent configuration: a TOML file that mirrors the flags. Flags win over
//! `DRIFTWATCH_*` environment variables, which win over the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_formats::{Format, Limits};
use serde::Deserialize;

use crate::error::AgentError;
use crate::hostroot::HostRoot;
use crate::resources::ProcessGroup;
use crate::watch::WatchPattern;

/// One entry of `watch`: a path or glob, optionally with a format override.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WatchEntry {
    /// `"/etc/app/*.yaml"` or `"ini:/etc/app/legacy.conf"`.
    Plain(String),
    Table {
        path: String,
        format: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGroupFile {
    pub name: String,
    /// Glob on the process name, e.g. `chrom*`.
    pub pattern: String,
}

/// `[backups]`: retention of the local backup store (`<state_dir>/backups`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsFile {
    /// Backups kept per path (newest first). Default 20.
    pub keep: Option<usize>,
    /// Backups older than this are dropped. Default `30d`.
    pub max_age: Option<String>,
}

/// One `[[files]]` entry: commands the agent runs after writing a matching file.
/// Commands come only from here, never from the server.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCommandsFile {
    /// An absolute path or glob (matched against the canonical path written).
    pub path: String,
    /// argv of the reload command; no shell unless written as `["sh", "-c", "..."]`.
    pub reload: Option<Vec<String>>,
    /// argv of the health check, run after the reload.
    pub health: Option<Vec<String>>,
    /// Per command. Default `30s`.
    pub timeout: Option<String>,
}

/// The TOML shape. Every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// `https://HOST:PORT` (with `ca_file`), or `http://` to a loopback address (with `insecure`).
    pub server: Option<String>,
    /// PEM bundle of the CA(s) to trust for the server (the server's `DATA/tls/ca.pem`).
    /// Needed with `https://`; the system's roots are never used for the fleet CA.
    pub ca_file: Option<PathBuf>,
    /// File holding an enrollment token (`driftwatch enroll-token create`), read when the
    /// agent has to enroll: first start, or after its certificate expired.
    pub enroll_token_file: Option<PathBuf>,
    pub host_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub watch: Vec<WatchEntry>,
    pub resource_interval: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub insecure: Option<bool>,
    /// File holding the fleet's masking key (any bytes, at least 16).
    pub fleet_key_file: Option<PathBuf>,
    pub max_file_bytes: Option<u64>,
    pub spool_max_bytes: Option<u64>,
    pub debounce: Option<String>,
    pub rescan_interval: Option<String>,
    #[serde(default)]
    pub process_groups: Vec<ProcessGroupFile>,
    /// Absolute paths (a file, or a directory and everything below it) and globs the
    /// agent may write when the server asks. Empty: nothing is writable.
    #[serde(default)]
    pub writable: Vec<String>,
    pub backups: Option<BackupsFile>,
    #[serde(default)]
    pub files: Vec<FileCommandsFile>,
    /// HTTP/2 ping to the server after this long without hearing from it. Default `30s`.
    pub keepalive_interval: Option<String>,
    /// A ping unanswered this long means the server is gone: the stream is dropped and
    /// the agent reconnects. Default `10s`.
    pub keepalive_timeout: Option<String>,
    /// Address of the agent's own Prometheus `/metrics` and `/healthz` (`--metrics-listen`).
    /// Default off.
    pub metrics_listen: Option<String>,
    /// A file holding the token `/metrics` scrapers must send (`Authorization: Bearer`).
    /// Required when `metrics_listen` is not a loopback address.
    pub metrics_token_file: Option<PathBuf>,
    /// How long `/healthz` stays 200 while the server cannot be reached (since the
    /// agent started, or since the stream was lost). Default `5m`.
    pub healthz_grace: Option<String>,
    /// Where the node's file system is mounted when the agent runs in a container
    /// (`/host`): `watch`, `writable` and `[[files]]` stay node paths, read and written
    /// below this directory (`--path-prefix`, see `hostroot`).
    pub path_prefix: Option<PathBuf>,
}

/// Resolved `[backups]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupPolicy {
    pub keep: usize,
    pub max_age: Duration,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        Self { keep: 20, max_age: Duration::from_secs(30 * 86400) }
    }
}

/// Resolved `[[files]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCommands {
    /// Absolute path or glob.
    pub path: String,
    pub reload: Option<Vec<String>>,
    pub health: Option<Vec<String>>,
    pub timeout: Duration,
}

pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How a silent server is noticed: HTTP/2 pings on the agent's connection.
pub use driftwatch_proto::keepalive::Keepalive;

/// Resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    /// The server URL's host, the name its TLS certificate must carry.
    pub server_host: String,
    /// `https://`: TLS with `ca_file`, enrollment and a client certificate.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub enroll_token_file: Option<PathBuf>,
    /// The configured (proposed) host id; over TLS the one in the certificate is used.
    pub host_id: String,
    pub labels: BTreeMap<String, String>,
    pub watch: Vec<WatchPattern>,
    /// Zero disables resource sampling.
    pub resource_interval: Duration,
    pub state_dir: PathBuf,
    pub insecure: bool,
    pub fleet_key_file: Option<PathBuf>,
    pub limits: Limits,
    pub spool_max_bytes: u64,
    pub debounce: Duration,
    pub rescan_interval: Duration,
    pub process_groups: Vec<ProcessGroup>,
    /// Absolute paths and globs the agent may write (see `apply::allow`). Empty: none.
    pub writable: Vec<String>,
    pub backups: BackupPolicy,
    pub files: Vec<FileCommands>,
    pub keepalive: Keepalive,
    /// The agent's `/metrics` and `/healthz`; None: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What `/metrics` scrapers must send as `Authorization: Bearer` (`/healthz` stays open).
    pub metrics_token: Option<String>,
    /// How long `/healthz` stays 200 without a connection to the server.
    pub healthz_grace: Duration,
    /// The node's `/` locally (`path_prefix`); default: the agent's own `/`.
    pub host_root: HostRoot,
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
pub const DEFAULT_STATE_DIR: &str = "./driftwatch-agent-state";
/// `/healthz` is 503 once the agent has been without its server this long.
pub const DEFAULT_HEALTHZ_GRACE: Duration = Duration::from_secs(300);

impl AgentConfig {
    /// Read and parse a TOML config file.
    pub fn load_file(path: &Path) -> Result<AgentFile, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
        toml::from_str(&text).map_err(|e| AgentError::Config(format!("{}: {}", path.display(), e.message())))
    }

    /// Resolve defaults and validate, reporting every problem at once as `source: field: message`.
    pub fn resolve(file: AgentFile, source: &str) -> Result<Self, AgentError> {
        let mut errors: Vec<String> = Vec::new();
        let mut err = |field: &str, msg: String| errors.push(format!("{source}: {field}: {msg}"));

        let server = file.server.unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let insecure = file.insecure.unwrap_or(false);
        let host_id = file.host_id.unwrap_or_else(default_host_id);
        if host_id.is_empty()
            || host_id.len() > 253
            || !host_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        {
            err("host_id", format!("'{host_id}' must be 1-253 characters of A-Z a-z 0-9 . _ - :"));
        }
        let (tls, server_host) = match server_url(&server) {
            Err(e) => {
                err("server", e);
                (false, String::new())
            }
            Ok((tls, host)) => (tls, host),
        };
        if tls {
            match &file.ca_file {
                None => err(
                    "ca_file",
                    format!(
                        "an https:// server needs ca_file (--ca-file): the PEM of the server's CA \
                         (DATA/tls/ca.pem on the server); the system's roots are not trusted for {server}"
                    ),
                ),
                Some(p) => {
                    if let Err(e) = check_ca_file(p) {
                        err("ca_file", e);
                    }
                }
            }
            if insecure {
                err("insecure", "is for plaintext http:// on loopback; remove it for an https:// server".into());
            }
            if let Err(e) = driftwatch_pki::check_name(&host_id) {
                err("host_id", format!("an enrolled host id goes into its certificate: {e}"));
            }
        } else if !server_host.is_empty() {
            if !is_loopback(&server_host) {
                err(
                    "server",
                    format!(
                        "plaintext http:// is for loopback development only (127.0.0.0/8, ::1, localhost); \
                         use https://{server_host}:PORT with ca_file"
                    ),
                );
            } else if !insecure {
                err("insecure", "plaintext http:// needs --insecure (loopback development only)".into());
            }
            if file.ca_file.is_some() {
                err("ca_file", "is for an https:// server; the server URL is http://".into());
            }
            if file.enroll_token_file.is_some() {
                err("enroll_token_file", "enrollment needs an https:// server (and ca_file)".into());
            }
        }
        for (k, v) in &file.labels {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
                err(&format!("labels.{k}"), "label names use A-Z a-z 0-9 . _ - /".into());
            }
            if v.chars().any(|c| c == ',' || c == '=' || c == '!' || c.is_whitespace()) {
                err(&format!("labels.{k}"), format!("label value '{v}' may not contain , = ! or spaces"));
            }
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut watch = Vec::new();
        for (i, w) in file.watch.iter().enumerate() {
            match parse_watch(w, &cwd) {
                Ok(p) => watch.push(p),
                Err(e) => err(&format!("watch[{i}]"), e),
            }
        }
        if watch.is_empty() {
            err("watch", "nothing to watch: give at least one path or glob".into());
        }
        let mut duration = |field: &str, v: Option<&str>, default: Duration| match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                err(field, e);
                default
            }),
        };
        let resource_interval =
            duration("resource_interval", file.resource_interval.as_deref(), Duration::from_secs(10));
        let debounce = duration("debounce", file.debounce.as_deref(), Duration::from_millis(5));
        let rescan_interval = duration("rescan_interval", file.rescan_interval.as_deref(), Duration::from_secs(60));
        if !resource_interval.is_zero() && resource_interval < Duration::from_millis(100) {
            err("resource_interval", "must be 0 (off) or at least 100ms".into());
        }
        if debounce > Duration::from_secs(10) {
            err("debounce", "must be at most 10s".into());
        }
        if rescan_interval < Duration::from_secs(1) {
            err("rescan_interval", "must be at least 1s".into());
        }
        let (keepalive, problems) =
            Keepalive::resolve(file.keepalive_interval.as_deref(), file.keepalive_timeout.as_deref());
        for (field, message) in problems {
            err(field, message);
        }
        let max_file_bytes = file.max_file_bytes.unwrap_or(1024 * 1024);
        if !(1024..=256 * 1024 * 1024).contains(&max_file_bytes) {
            err("max_file_bytes", "must be between 1024 and 268435456".into());
        }
        let spool_max_bytes = file.spool_max_bytes.unwrap_or(64 * 1024 * 1024);
        if spool_max_bytes < 64 * 1024 {
            err("spool_max_bytes", "must be at least 65536".into());
        }
        let mut process_groups = Vec::new();
        for (i, g) in file.process_groups.iter().enumerate() {
            if g.name.is_empty() || g.pattern.is_empty() {
                err(&format!("process_groups[{i}]"), "name and pattern are required".into());
            } else if let Err(e) = globset::Glob::new(&g.pattern) {
                err(&format!("process_groups[{i}].pattern"), e.to_string());
            } else {
                process_groups.push(ProcessGroup { name: g.name.clone(), pattern: g.pattern.clone() });
            }
        }
        if let Some(k) = &file.fleet_key_file
            && !k.is_file()
        {
            err("fleet_key_file", format!("{} does not exist", k.display()));
        }
        for (i, w) in file.writable.iter().enumerate() {
            if let Err(e) = check_write_pattern(w) {
                err(&format!("writable[{i}]"), e);
            }
        }
        let b = file.backups.unwrap_or_default();
        let defaults = BackupPolicy::default();
        let keep = b.keep.unwrap_or(defaults.keep);
        if !(1..=10_000).contains(&keep) {
            err("backups.keep", "must be between 1 and 10000".into());
        }
        let max_age = opt_duration(b.max_age.as_deref(), defaults.max_age).unwrap_or_else(|e| {
            err("backups.max_age", e);
            defaults.max_age
        });
        if max_age < Duration::from_secs(60) {
            err("backups.max_age", "must be at least 1m".into());
        }
        let mut files = Vec::new();
        for (i, f) in file.files.iter().enumerate() {
            let field = format!("files[{i}]");
            if let Err(e) = check_write_pattern(&f.path) {
                err(&format!("{field}.path"), e);
            }
            for (name, argv) in [("reload", &f.reload), ("health", &f.health)] {
                if let Some(argv) = argv
                    && (argv.is_empty() || argv[0].is_empty())
                {
                    err(
                        &format!("{field}.{name}"),
                        "must be a non-empty argv list, e.g. [\"systemctl\", \"reload\", \"app\"]".into(),
                    );
                }
            }
            if f.reload.is_none() && f.health.is_none() {
                err(&field, "declares neither reload nor health".into());
            }
            let timeout = opt_duration(f.timeout.as_deref(), DEFAULT_COMMAND_TIMEOUT).unwrap_or_else(|e| {
                err(&format!("{field}.timeout"), e);
                DEFAULT_COMMAND_TIMEOUT
            });
            if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(3600) {
                err(&format!("{field}.timeout"), "must be between 10ms and 1h".into());
            }
            files.push(FileCommands {
                path: f.path.clone(),
                reload: f.reload.clone(),
                health: f.health.clone(),
                timeout,
            });
        }
        let metrics_listen = match file.metrics_listen.as_deref().map(str::trim) {
            None | Some("" | "off" | "none") => None,
            Some(a) => a
                .parse::<std::net::SocketAddr>()
                .map_err(|_| err("metrics_listen", format!("'{a}' must be IP:PORT, e.g. 127.0.0.1:9465 (or off)")))
                .ok(),
        };
        use driftwatch_telemetry::endpoint::{listen_problem, read_token_file};
        let metrics_token = file
            .metrics_token_file
            .as_deref()
            .and_then(|f| read_token_file(f).map_err(|e| err("metrics_token_file", e)).ok());
        if let Some(addr) = metrics_listen
            && let Some(why) = listen_problem(addr, file.metrics_token_file.is_some(), "metrics_token_file")
        {
            err("metrics_listen", why);
        }
        let healthz_grace = opt_duration(file.healthz_grace.as_deref(), DEFAULT_HEALTHZ_GRACE).unwrap_or_else(|e| {
            err("healthz_grace", e);
            DEFAULT_HEALTHZ_GRACE
        });
        let host_root = match &file.path_prefix {
            None => HostRoot::default(),
            Some(p) => HostRoot::new(p).unwrap_or_else(|e| {
                err("path_prefix", e);
                HostRoot::default()
            }),
        };
        if file.path_prefix.is_some() {
            // Node paths below the prefix: a `..` could leave it.
            for (i, w) in watch.iter().enumerate() {
                if Path::new(&w.pattern).components().any(|c| c == std::path::Component::ParentDir) {
                    err(&format!("watch[{i}]"), format!("'{}' may not contain '..' with path_prefix", w.pattern));
                }
            }
        }
        if !errors.is_empty() {
            return Err(AgentError::Config(errors.join("\n  ")));
        }
        Ok(Self {
            server,
            server_host,
            tls,
            ca_file: file.ca_file,
            enroll_token_file: file.enroll_token_file,
            host_id,
            labels: file.labels,
            watch,
            resource_interval,
            state_dir: file.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            insecure,
            fleet_key_file: file.fleet_key_file,
            limits: Limits { max_file_bytes, ..Limits::default() },
            spool_max_bytes,
            debounce,
            rescan_interval,
            process_groups,
            writable: file.writable,
            backups: BackupPolicy { keep, max_age },
            files,
            keepalive,
            metrics_listen,
            metrics_token,
            healthz_grace,
            host_root,
        })
    }
}

/// `http(s)://HOST[:PORT]`: (TLS, host without IPv6 brackets).
fn server_url(server: &str) -> Result<(bool, String), String> {
    let bad = || format!("'{server}' must be a URL like https://driftwatch.example:50051 (or http://127.0.0.1:50051)");
    let uri: tonic::codegen::http::Uri = server.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("'{server}' must be a server address without a path"));
    }
    Ok((tls, host.trim_start_matches('[').trim_end_matches(']').to_string()))
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The CA file exists and holds at least one PEM certificate.
fn check_ca_file(p: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    driftwatch_pki::certs_from_pem(&text).map(|_| ()).map_err(|e| format!("{}: {e}", p.display()))
}

fn parse_watch(w: &WatchEntry, cwd: &Path) -> Result<WatchPattern, String> {
    let (path, format) = match w {
        WatchEntry::Plain(s) => match s.split_once(':') {
            Some((f, rest)) if driftwatch_formats::parse_format_name(f).is_some() && !rest.is_empty() => {
                (rest.to_string(), driftwatch_formats::parse_format_name(f))
            }
            _ => (s.clone(), None),
        },
        WatchEntry::Table { path, format } => {
            let f = match format {
                None => None,
                Some(name) => Some(driftwatch_formats::parse_format_name(name).ok_or_else(|| {
                    format!(
                        "unknown format '{name}' (env, ini, yaml, json, toml, keyword, sysctl, nginx, systemd, text)"
                    )
                })?),
            };
            (path.clone(), f)
        }
    };
    if path.trim().is_empty() {
        return Err("empty path".into());
    }
    let abs = if Path::new(&path).is_absolute() { PathBuf::from(&path) } else { cwd.join(&path) };
    let pattern = abs.to_string_lossy().into_owned();
    if pattern.contains(['*', '?', '[']) {
        globset::Glob::new(&pattern).map_err(|e| format!("bad glob '{path}': {e}"))?;
    }
    Ok(WatchPattern { pattern, format: format.map(|f: Format| f) })
}

/// A `writable` or `[[files]]` path: absolute (relative paths are refused here, unlike
/// `watch`: what may be written must not depend on the working directory), no `..`,
/// and a valid glob when it has glob characters.
fn check_write_pattern(p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        return Err("empty path".into());
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("'{p}' must be an absolute path or glob"));
    }
    if path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("'{p}' may not contain a '..' component"));
    }
    if p.contains(['*', '?', '[', '{']) {
        globset::Glob::new(p).map_err(|e| format!("bad glob '{p}': {e}"))?;
    }
    Ok(())
}

fn opt_duration(v: Option<&str>, default: Duration) -> Result<Duration, String> {
    v.map_or(Ok(default), parse_duration)
}

/// The one duration grammar of every driftwatch config and flag (`driftwatch_proto::duration`):
/// `250ms`, `90s`, `1h30m`, `1.5h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    driftwatch_proto::duration::parse(s)
}

/// The machine's host name, or "localhost".
pub fn default_host_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_string();
        }
    }
    "localhost".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AgentFile {
        AgentFile { insecure: Some(true), watch: vec![WatchEntry::Plain("/etc/app/.env".into())], ..Default::default() }
    }

    #[test]
    fn durations_use_the_shared_grammar_and_name_the_field() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        let mut f = base();
        f.resource_interval = Some("1x".into());
        f.backups = Some(BackupsFile { max_age: Some("1h30m".into()), ..Default::default() });
        let errs = AgentConfig::resolve(f, "agent.toml").unwrap_err().to_string();
        assert!(errs.contains("agent.toml: resource_interval: invalid duration \"1x\": unknown unit"), "{errs}");
        assert!(!errs.contains("max_age"), "{errs}");
    }

    #[test]
    fn path_prefix_is_an_existing_directory_and_keeps_watch_paths_below_it() {
        let d = tempfile::tempdir().unwrap();
        let mut f = base();
        f.path_prefix = Some(d.path().to_path_buf());
        let c = AgentConfig::resolve(f, "agent.toml").unwrap();
        assert_eq!(c.host_root.prefix(), Some(std::fs::canonicalize(d.path()).unwrap().as_path()));
        assert_eq!(c.watch[0].pattern, "/etc/app/.env", "watch paths stay node paths");
        let mut f = base();
        f.path_prefix = Some(d.path().join("missing"));
        f.watch.push(WatchEntry::Plain("/etc/../root/.env".into()));
        let errs = AgentConfig::resolve(f, "agent.toml").unwrap_err().to_string();
        assert!(errs.contains("agent.toml: path_prefix:") && errs.contains("missing"), "{errs}");
        assert!(errs.contains("watch[1]: '/etc/../root/.env' may not contain '..' with path_prefix"), "{errs}");
    }

    #[test]
    fn keepalive_defaults_and_bounds() {
        assert_eq!(AgentConfig::resolve(base(), "agent.toml").unwrap().keepalive, Keepalive::default());
        let mut f = base();
        (f.keepalive_interval, f.keepalive_timeout) = (Some("2s".into()), Some("1500ms".into()));
        let k = AgentConfig::resolve(f, "agent.toml").unwrap().keepalive;
        assert_eq!((k.interval, k.timeout), (Duration::from_secs(2), Duration::from_millis(1500)));
        let mut f = base();
        (f.keepalive_interval, f.keepalive_timeout) = (Some("100ms".into()), Some("1h".into()));
        let errs = AgentConfig::resolve(f, "agent.toml").unwrap_err().to_string();
        assert!(errs.contains("keepalive_interval: must be between 1s and 1h"), "{errs}");
        assert!(errs.contains("keepalive_timeout: must be between 1s and 10m"), "{errs}");
    }

    #[test]
    fn defaults_and_format_prefix() {
        let mut f = base();
        f.watch.push(WatchEntry::Plain("ini:/etc/legacy.conf".into()));
        f.watch.push(WatchEntry::Table { path: "/etc/x.cfg".into(), format: Some("toml".into()) });
        let c = AgentConfig::resolve(f, "agent.toml").unwrap();
        assert_eq!(c.resource_interval, Duration::from_secs(10));
        assert_eq!(c.watch[1].pattern, "/etc/legacy.conf");
        assert_eq!(c.watch[1].format, Some(Format::Ini));
        assert_eq!(c.watch[2].format, Some(Format::Toml));
        assert_eq!(c.limits.max_file_bytes, 1024 * 1024);
    }

    #[test]
    fn every_error_reported_with_source_and_field() {
        let f = AgentFile {
            server: Some("127.0.0.1:50051".into()),
            host_id: Some("bad host".into()),
            resource_interval: Some("soon".into()),
            watch: vec![WatchEntry::Table { path: "/x".into(), format: Some("xml".into()) }],
            process_groups: vec![ProcessGroupFile { name: "b".into(), pattern: "[".into() }],
            insecure: Some(true),
            ..Default::default()
        };
        let AgentError::Config(msg) = AgentConfig::resolve(f, "agent.toml").unwrap_err() else { panic!() };
        for field in ["server", "host_id", "resource_interval", "watch[0]", "process_groups[0].pattern", "watch:"] {
            assert!(msg.contains(&format!("agent.toml: {field}")), "missing {field} in {msg}");
        }
    }

    #[test]
    fn relative_watch_paths_become_absolute() {
        let mut f = base();
        f.watch = vec![WatchEntry::Plain("configs/*.yaml".into())];
        let c = AgentConfig::resolve(f, "flags").unwrap();
        assert!(Path::new(&c.watch[0].pattern).is_absolute());
        assert!(c.watch[0].pattern.ends_with("configs/*.yaml"));
    }

    #[test]
    fn unknown_fields_rejected() {
        assert!(toml::from_str::<AgentFile>("serverr = 'x'").is_err());
        assert!(toml::from_str::<AgentFile>("[[files]]\npath = '/x'\nrelaod = ['true']").is_err());
        assert!(toml::from_str::<AgentFile>("[backups]\nkeeep = 3").is_err());
    }

    #[test]
    fn writable_backups_and_files() {
        let c = AgentConfig::resolve(base(), "agent.toml").unwrap();
        assert!(c.writable.is_empty(), "nothing writable by default");
        assert_eq!(c.backups, BackupPolicy { keep: 20, max_age: Duration::from_secs(30 * 86400) });
        let mut f: AgentFile = toml::from_str(
            r#"
            writable = ["/etc/web2img/.env", "/etc/app/conf.d", "/etc/app/*.yaml"]
            [backups]
            keep = 5
            max_age = "7d"
            [[files]]
            path = "/etc/web2img/.env"
            reload = ["systemctl", "reload", "web2img"]
            health = ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
            timeout = "10s"
            [[files]]
            path = "/etc/app/*.yaml"
            health = ["true"]
            "#,
        )
        .unwrap();
        f.insecure = Some(true);
        f.watch = base().watch;
        let c = AgentConfig::resolve(f, "agent.toml").unwrap();
        assert_eq!(c.writable.len(), 3);
        assert_eq!(c.backups, BackupPolicy { keep: 5, max_age: Duration::from_secs(7 * 86400) });
        assert_eq!(c.files[0].timeout, Duration::from_secs(10));
        assert_eq!(c.files[0].reload.as_deref().unwrap()[0], "systemctl");
        assert_eq!(c.files[1].timeout, DEFAULT_COMMAND_TIMEOUT);
        assert!(c.files[1].reload.is_none());
    }

    #[test]
    fn bad_writable_and_files_reported_with_fields() {
        let mut f = base();
        f.writable = vec!["etc/app".into(), "/etc/../root/.ssh".into(), "/etc/[".into()];
        f.backups = Some(BackupsFile { keep: Some(0), max_age: Some("forever".into()) });
        f.files = vec![
            FileCommandsFile { path: "/etc/a".into(), reload: Some(vec![]), ..Default::default() },
            FileCommandsFile { path: "rel".into(), timeout: Some("1h30".into()), ..Default::default() },
        ];
        let AgentError::Config(msg) = AgentConfig::resolve(f, "agent.toml").unwrap_err() else { panic!() };
        for field in [
            "writable[0]: 'etc/app' must be an absolute",
            "writable[1]: '/etc/../root/.ssh' may not contain a '..'",
            "writable[2]: bad glob",
            "backups.keep",
            "backups.max_age",
            "files[0].reload",
            "files[1].path",
            "files[1]: declares neither",
            "files[1].timeout",
        ] {
            assert!(msg.contains(&format!("agent.toml: {field}")), "missing {field} in {msg}");
        }
    }

    fn ca_file(dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, driftwatch_pki::Ca::generate("test").unwrap().cert_pem()).unwrap();
        p
    }

    fn errors(f: AgentFile) -> String {
        let AgentError::Config(msg) = AgentConfig::resolve(f, "agent.toml").unwrap_err() else { panic!() };
        msg
    }

    #[test]
    fn https_needs_a_ca_file_and_uses_only_it() {
        let d = tempfile::tempdir().unwrap();
        let mut f = base();
        f.insecure = None;
        f.server = Some("https://dw.example:50051".into());
        let msg = errors(f.clone());
        assert!(msg.contains("agent.toml: ca_file: an https:// server needs ca_file (--ca-file)"), "{msg}");
        f.ca_file = Some(d.path().join("missing.pem"));
        assert!(errors(f.clone()).contains("agent.toml: ca_file: "), "a missing file is named");
        std::fs::write(d.path().join("junk.pem"), "not a certificate").unwrap();
        f.ca_file = Some(d.path().join("junk.pem"));
        assert!(errors(f.clone()).contains("agent.toml: ca_file: "), "a file without a certificate is named");
        f.ca_file = Some(ca_file(d.path()));
        f.enroll_token_file = Some(d.path().join("token")); // read when used, not now
        let c = AgentConfig::resolve(f.clone(), "agent.toml").unwrap();
        assert!(c.tls);
        assert_eq!(c.server_host, "dw.example");
        assert_eq!(c.enroll_token_file.as_deref(), Some(d.path().join("token").as_path()));
        f.server = Some("https://[::1]:50051".into());
        assert_eq!(AgentConfig::resolve(f.clone(), "agent.toml").unwrap().server_host, "::1");
        f.insecure = Some(true);
        assert!(errors(f.clone()).contains("agent.toml: insecure: is for plaintext http://"));
        f.insecure = None;
        f.host_id = Some("lat-2:eu".into());
        assert!(errors(f).contains("agent.toml: host_id: an enrolled host id"), "a colon cannot be in a SPIFFE id");
    }

    #[test]
    fn metrics_endpoint_is_off_by_default_and_needs_a_token_off_loopback() {
        let c = AgentConfig::resolve(base(), "agent.toml").unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.healthz_grace, DEFAULT_HEALTHZ_GRACE);
        let mut f = base();
        f.metrics_listen = Some("127.0.0.1:9465".into());
        f.healthz_grace = Some("30s".into());
        let c = AgentConfig::resolve(f.clone(), "agent.toml").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(c.healthz_grace, Duration::from_secs(30));
        f.metrics_listen = Some("off".into());
        assert_eq!(AgentConfig::resolve(f.clone(), "agent.toml").unwrap().metrics_listen, None);
        f.metrics_listen = Some("0.0.0.0:9465".into());
        f.healthz_grace = Some("5".into());
        let msg = errors(f.clone());
        assert!(
            msg.contains("agent.toml: metrics_listen: 0.0.0.0:9465 leaves this host: set metrics_token_file"),
            "{msg}"
        );
        assert!(msg.contains("agent.toml: healthz_grace: "), "{msg}");
        let d = tempfile::tempdir().unwrap();
        let token = d.path().join("metrics.token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        f.metrics_token_file = Some(token);
        f.healthz_grace = None;
        let c = AgentConfig::resolve(f.clone(), "agent.toml").unwrap();
        assert_eq!(c.metrics_token.as_deref(), Some("0123456789abcdef0123"));
        f.metrics_listen = Some("localhost".into());
        assert!(errors(f).contains("agent.toml: metrics_listen: 'localhost' must be IP:PORT"));
    }

    #[test]
    fn plaintext_only_to_loopback() {
        for server in ["http://127.0.0.1:50051", "http://127.3.4.5:1", "http://localhost:50051", "http://[::1]:50051"] {
            let mut f = base();
            f.server = Some(server.into());
            let c = AgentConfig::resolve(f, "agent.toml").unwrap_or_else(|e| panic!("{server}: {e}"));
            assert!(!c.tls, "{server}");
        }
        for server in ["http://10.0.0.5:50051", "http://dw.example:50051", "http://[::2]:1", "http://0.0.0.0:50051"] {
            let mut f = base();
            f.server = Some(server.into());
            let msg = errors(f);
            assert!(msg.contains("agent.toml: server: plaintext http:// is for loopback development only"), "{msg}");
            assert!(msg.contains("use https://"), "{msg}");
        }
        let mut f = base();
        f.insecure = None;
        assert!(errors(f).contains("agent.toml: insecure: plaintext http:// needs --insecure"));
    }

    #[test]
    fn tls_settings_with_a_plaintext_server_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut f = base();
        f.ca_file = Some(ca_file(d.path()));
        f.enroll_token_file = Some(d.path().join("token"));
        let msg = errors(f);
        assert!(msg.contains("agent.toml: ca_file: is for an https:// server"), "{msg}");
        assert!(msg.contains("agent.toml: enroll_token_file: enrollment needs an https:// server"), "{msg}");
    }

    #[test]
    fn server_must_be_an_address() {
        for server in ["127.0.0.1:50051", "ftp://x:1", "https://", "https://x:1/path", "http://127.0.0.1:1?q=1"] {
            let mut f = base();
            f.server = Some(server.into());
            assert!(errors(f).contains("agent.toml: server: "), "{server}");
        }
    }

    #[test]
    fn tls_keys_are_known() {
        let f: AgentFile = toml::from_str("ca_file = '/etc/driftwatch/ca.pem'\nenroll_token_file = '/etc/t'").unwrap();
        assert_eq!(f.ca_file.as_deref(), Some(Path::new("/etc/driftwatch/ca.pem")));
        assert!(toml::from_str::<AgentFile>("ca = '/x'").is_err());
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/agent.toml");
        let file = AgentConfig::load_file(&path).unwrap();
        let c = AgentConfig::resolve(file, "agent.toml").unwrap();
        assert!(!c.tls && c.insecure);
    }
}
