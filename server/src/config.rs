//! Server configuration: a TOML file that mirrors the flags. Flags win over
//! `DRIFTWATCH_*` environment variables, which win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ServerError;
pub use crate::limits::config::LimitsFile;

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    /// SQLite file `driftwatch.db` inside this directory.
    DataDir(PathBuf),
    /// `sqlite:///abs/path.db` or `sqlite://relative.db`.
    SqliteFile(PathBuf),
}

/// The on-disk/TOML shape. Every field optional so a file can set only what it needs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub database: Option<String>,
    pub rules: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    /// A file holding the token `/metrics` scrapers must send (`Authorization: Bearer`).
    /// Required when `metrics_listen` is not a loopback address.
    pub metrics_token_file: Option<PathBuf>,
    /// Export `driftwatch_host_connected{host}` and `..._last_seen_timestamp_seconds{host}`
    /// (two series per known host; default true). Large fleets that alert on the
    /// `driftwatch_hosts{state}` totals instead can turn them off.
    pub metrics_per_host: Option<bool>,
    /// Where operators look at driftwatch: the Grafana base URL the dashboard
    /// (`deploy/grafana/driftwatch.json`) is imported into. Notifications link there
    /// (`crate::notify::links`); without it they carry no link.
    pub external_url: Option<String>,
    pub insecure: Option<bool>,
    #[serde(default)]
    pub access: AccessFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub retention: RetentionFile,
    /// `[[notifiers]]`: webhooks and Alertmanagers (see `crate::notify`).
    #[serde(default)]
    pub notifiers: Vec<crate::notify::NotifierFile>,
    #[serde(default)]
    pub remediation: RemediationFile,
    /// More names for the built-in server certificate (`--tls-san`, repeatable).
    pub tls_san: Option<Vec<String>>,
    #[serde(default)]
    pub tls: TlsFile,
    /// HTTP/2 ping to a client after this long without hearing from it. Default `30s`.
    pub keepalive_interval: Option<String>,
    /// A ping unanswered this long closes the connection (and the agent's stream:
    /// the host goes offline). Default `10s`.
    pub keepalive_timeout: Option<String>,
}

/// `[access]`: what operator calls need beyond the role table (`crate::access::table`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// Serve gRPC reflection without credentials (default: the viewer role).
    pub open_reflection: Option<bool>,
}

/// `[tls]`: bring your own PKI. Without `cert`/`key` the server runs its built-in CA
/// in `DATA/tls`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Server certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
    /// CA bundle that agent and operator client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Lifetime of agent certificates the server issues (default 30d).
    pub cert_lifetime: Option<String>,
    /// How often the certificate files are checked for changes (default 10s).
    pub reload_interval: Option<String>,
}

/// `[remediation]`: how often rules with `remediate:` may correct one host's file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationFile {
    /// Least time between two attempts on one host's file (default 60s).
    pub min_interval: Option<String>,
    /// Most attempts on one host's file within `window` before giving up (default 3).
    pub max_attempts: Option<u32>,
    /// Default 1h.
    pub window: Option<String>,
}

/// `[retention]`: durations as "72h", "30d".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Resolved alerts and alert events (default 72h). Firing alerts are never pruned.
    pub alerts: Option<String>,
    /// Raw resource samples before they are rolled up into 5-minute buckets (default 24h).
    pub raw_resources: Option<String>,
    /// Resource rollups (default 30d).
    pub rollups: Option<String>,
    /// How often retention runs (default 10m).
    pub interval: Option<String>,
    /// Audit events (default 90d).
    pub audit: Option<String>,
    /// A host offline this long is removed from the fleet and the store (default 30d;
    /// "0" keeps offline hosts forever).
    pub offline_hosts: Option<String>,
    /// File versions (history) older than this go, except each file's newest
    /// (default "0": no age limit).
    pub file_history: Option<String>,
    /// Versions kept per file, newest first (default 100; 0: no count limit).
    pub file_history_versions: Option<usize>,
}

/// Resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub rules: Option<PathBuf>,
    /// None disables the metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// What `/metrics` scrapers must send as `Authorization: Bearer` (`/healthz` stays open).
    pub metrics_token: Option<String>,
    /// Per-host series on `/metrics` (`metrics_per_host`).
    pub metrics_per_host: bool,
    /// `external_url`, checked (absolute http(s), no query or fragment).
    pub external_url: Option<reqwest::Url>,
    pub insecure: bool,
    pub access: crate::access::Policy,
    /// `[limits]`, validated.
    pub limits: crate::limits::Limits,
    pub heartbeat_interval: Duration,
    pub max_batch: usize,
    pub retention: crate::retention::Retention,
    /// Audit events older than this are pruned (`[retention] audit`).
    pub audit_retention: Duration,
    /// `[[notifiers]]`, validated.
    pub notifiers: Vec<crate::notify::NotifierConfig>,
    /// Alert subscribers: events one may fall behind, and how long it may take
    /// nothing, before it is cut off with its resume id.
    pub subscriber_ring: usize,
    pub subscriber_stall: Duration,
    pub remediation: crate::changes::remediate::RemediationSettings,
    /// None: `--insecure` (plaintext, loopback only).
    pub tls: Option<crate::tls::TlsConfig>,
    pub keepalive: Keepalive,
}

/// HTTP/2 pings to every client.
pub use driftwatch_proto::keepalive::Keepalive;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DATA_DIR: &str = "./driftwatch-data";
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

impl ServerConfig {
    /// A loopback development config storing under `data`; ports chosen by the OS.
    pub fn for_tests(data: impl Into<PathBuf>) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("literal"),
            storage: StorageConfig::DataDir(data.into()),
            rules: None,
            metrics_listen: Some("127.0.0.1:0".parse().expect("literal")),
            metrics_token: None,
            metrics_per_host: true,
            external_url: None,
            insecure: true,
            access: Default::default(),
            limits: crate::limits::Limits::default(),
            heartbeat_interval: Duration::from_secs(15),
            max_batch: 2_000,
            retention: crate::retention::Retention::default(),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            notifiers: Vec::new(),
            subscriber_ring: crate::hub::RING,
            subscriber_stall: Duration::from_secs(10),
            remediation: Default::default(),
            tls: None,
            keepalive: Keepalive::default(),
        }
    }

    /// Like [`ServerConfig::for_tests`], but over TLS with the built-in CA in `data/tls`.
    pub fn for_tests_tls(data: impl Into<PathBuf>) -> Self {
        let data = data.into();
        let mut c = Self::for_tests(data.clone());
        c.insecure = false;
        c.tls = Some(crate::tls::TlsConfig {
            source: crate::tls::TlsSource::BuiltIn {
                dir: data.join("tls"),
                sans: vec!["localhost".into(), "127.0.0.1".into()],
            },
            cert_lifetime: driftwatch_pki::DEFAULT_CERT_LIFETIME,
            reload_interval: crate::tls::DEFAULT_RELOAD_INTERVAL,
        });
        c
    }

    /// The directory the server keeps its files in (`admin.token`, `tls/`).
    pub fn data_dir(&self) -> PathBuf {
        match &self.storage {
            StorageConfig::DataDir(d) => d.clone(),
            StorageConfig::SqliteFile(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// Path of the SQLite database file.
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.storage {
            StorageConfig::DataDir(d) => d.join("driftwatch.db"),
            StorageConfig::SqliteFile(p) => p.clone(),
        }
    }

    /// Merge a parsed file (lowest precedence) under explicit overrides, then validate,
    /// reporting every problem at once as `source: field: message`.
    pub fn resolve(file: ServerFile, source: &str) -> Result<Self, ServerError> {
        let mut errors = Vec::new();
        let mut field_err = |field: &str, msg: String| errors.push(format!("{source}: {field}: {msg}"));

        let listen =
            parse_addr(file.listen.as_deref().unwrap_or(DEFAULT_LISTEN)).map_err(|e| field_err("listen", e)).ok();
        let metrics_listen = match file.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
            "" | "off" | "none" => Some(None),
            s => parse_addr(s).map(Some).map_err(|e| field_err("metrics_listen", e)).ok(),
        };
        let storage = match (&file.data, &file.database) {
            (Some(_), Some(_)) => {
                field_err("database", "give either data (a directory) or database (a URL), not both".into());
                None
            }
            (_, Some(url)) => parse_database_url(url).map_err(|e| field_err("database", e)).ok(),
            (Some(d), None) => Some(StorageConfig::DataDir(d.clone())),
            (None, None) => Some(StorageConfig::DataDir(PathBuf::from(DEFAULT_DATA_DIR))),
        };
        let rules = match file.rules.clone() {
            Some(r) => {
                if !r.is_dir() {
                    field_err("rules", format!("{} is not a directory", r.display()));
                }
                Some(r)
            }
            None => Some(PathBuf::from("./rules")).filter(|p| p.is_dir()),
        };
        let insecure = file.insecure.unwrap_or(false);
        let external_url = file
            .external_url
            .as_deref()
            .and_then(|u| crate::notify::links::check_external_url(u).map_err(|e| field_err("external_url", e)).ok());
        let l = &file.limits;
        let limits = crate::limits::config::resolve(l, &mut field_err);
        let mut heartbeat_interval = Duration::from_secs(15);
        if let Some(v) = &l.heartbeat_interval {
            match driftwatch_proto::duration::parse(v) {
                Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) => heartbeat_interval = d,
                Ok(_) => field_err("limits.heartbeat_interval", "must be between 1s and 1h".into()),
                Err(e) => field_err("limits.heartbeat_interval", e),
            }
        }
        let max_batch = l.max_batch.unwrap_or(2_000);
        if max_batch == 0 {
            field_err("limits.max_batch", "must be at least 1".into());
        }
        let mut retention = crate::retention::Retention::default();
        let mut audit_retention = DEFAULT_AUDIT_RETENTION;
        let r = &file.retention;
        for (field, value, slot, min) in [
            ("retention.alerts", &r.alerts, &mut retention.alerts, Duration::from_secs(60)),
            ("retention.audit", &r.audit, &mut audit_retention, Duration::from_secs(3600)),
            ("retention.raw_resources", &r.raw_resources, &mut retention.raw_resources, Duration::from_secs(3600)),
            ("retention.rollups", &r.rollups, &mut retention.rollups, Duration::from_secs(3600)),
            ("retention.interval", &r.interval, &mut retention.interval, Duration::from_secs(1)),
        ] {
            if let Some(v) = value {
                match driftwatch_proto::duration::parse(v) {
                    Ok(d) if d >= min => *slot = d,
                    Ok(_) => field_err(field, format!("must be at least {}", driftwatch_proto::duration::format(min))),
                    Err(e) => field_err(field, e),
                }
            }
        }
        // Removing hosts and history loses data: "0" turns each off, and a value is at
        // least an hour (a mistyped "30m" for "30d" must not empty the fleet).
        for (field, value, slot) in [
            ("retention.offline_hosts", &r.offline_hosts, &mut retention.offline_hosts),
            ("retention.file_history", &r.file_history, &mut retention.file_history),
        ] {
            if let Some(v) = value {
                match driftwatch_proto::duration::parse(v) {
                    Ok(d) if d.is_zero() || d >= Duration::from_secs(3600) => *slot = d,
                    Ok(_) => field_err(field, "must be \"0\" (off) or at least 1h".into()),
                    Err(e) => field_err(field, e),
                }
            }
        }
        if let Some(n) = r.file_history_versions {
            retention.file_history_versions = n;
        }
        let (keepalive, problems) =
            Keepalive::resolve(file.keepalive_interval.as_deref(), file.keepalive_timeout.as_deref());
        for (field, message) in problems {
            field_err(field, message);
        }
        let mut remediation = crate::changes::remediate::RemediationSettings::default();
        let rm = &file.remediation;
        for (field, value, slot) in [
            ("remediation.min_interval", &rm.min_interval, &mut remediation.min_interval),
            ("remediation.window", &rm.window, &mut remediation.window),
        ] {
            if let Some(v) = value {
                match driftwatch_proto::duration::parse(v) {
                    Ok(d) if !d.is_zero() => *slot = d,
                    Ok(_) => field_err(field, "must be more than 0".into()),
                    Err(e) => field_err(field, e),
                }
            }
        }
        match rm.max_attempts {
            Some(0) => field_err("remediation.max_attempts", "must be at least 1".into()),
            Some(n) => remediation.max_attempts = n,
            None => {}
        }
        let (notifiers, notifier_errors) = crate::notify::config::resolve(&file.notifiers);
        for (field, msg) in notifier_errors {
            field_err(&field, msg);
        }
        if let Some(addr) = listen
            && insecure
            && !addr.ip().is_loopback()
        {
            field_err(
                "listen",
                format!("--insecure is for loopback development only; refusing to serve plaintext on {addr}"),
            );
        }
        let metrics_token = file.metrics_token_file.as_deref().and_then(|f| {
            driftwatch_telemetry::endpoint::read_token_file(f).map_err(|e| field_err("metrics_token_file", e)).ok()
        });
        if let Some(Some(addr)) = metrics_listen
            && let Some(why) = driftwatch_telemetry::endpoint::listen_problem(
                addr,
                file.metrics_token_file.is_some(),
                "metrics_token_file",
            )
        {
            field_err("metrics_listen", why);
        }
        let tls = if insecure {
            if file.tls.cert.is_some() || file.tls.key.is_some() || file.tls.client_ca.is_some() {
                field_err("tls", "--insecure serves plaintext; remove [tls] or --insecure".into());
            }
            None
        } else {
            resolve_tls(&file, listen, storage.as_ref(), &mut field_err)
        };
        if !errors.is_empty() {
            return Err(ServerError::Config(errors));
        }
        Ok(Self {
            listen: listen.expect("checked"),
            storage: storage.expect("checked"),
            rules,
            metrics_listen: metrics_listen.expect("checked"),
            metrics_token,
            metrics_per_host: file.metrics_per_host.unwrap_or(true),
            external_url,
            insecure,
            access: crate::access::Policy { open_reflection: file.access.open_reflection.unwrap_or(false) },
            limits,
            heartbeat_interval,
            max_batch,
            retention,
            audit_retention,
            notifiers,
            subscriber_ring: crate::hub::RING,
            subscriber_stall: Duration::from_secs(10),
            remediation,
            tls,
            keepalive,
        })
    }

    /// Read and parse a TOML config file.
    pub fn load_file(path: &Path) -> Result<ServerFile, ServerError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ServerError::Config(vec![format!("{}: {e}", path.display())]))?;
        toml::from_str(&text).map_err(|e| ServerError::Config(vec![format!("{}: {}", path.display(), e.message())]))
    }
}

/// `[tls]` and `--tls-san` → where the listener's certificates come from.
fn resolve_tls(
    file: &ServerFile,
    listen: Option<SocketAddr>,
    storage: Option<&StorageConfig>,
    field_err: &mut impl FnMut(&str, String),
) -> Option<crate::tls::TlsConfig> {
    let t = &file.tls;
    let mut duration = |field: &str, v: &Option<String>, default: Duration, min: Duration| match v {
        None => default,
        Some(v) => match driftwatch_proto::duration::parse(v) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                field_err(field, format!("must be at least {}", driftwatch_proto::duration::format(min)));
                default
            }
            Err(e) => {
                field_err(field, e);
                default
            }
        },
    };
    let cert_lifetime =
        duration("tls.cert_lifetime", &t.cert_lifetime, driftwatch_pki::DEFAULT_CERT_LIFETIME, Duration::from_secs(60));
    let reload_interval = duration(
        "tls.reload_interval",
        &t.reload_interval,
        crate::tls::DEFAULT_RELOAD_INTERVAL,
        Duration::from_millis(100),
    );
    let source = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            for (field, p) in
                [("tls.cert", Some(cert)), ("tls.key", Some(key)), ("tls.client_ca", t.client_ca.as_ref())]
            {
                if let Some(p) = p
                    && !p.is_file()
                {
                    field_err(field, format!("{} is not a readable file", p.display()));
                }
            }
            if file.tls_san.as_ref().is_some_and(|s| !s.is_empty()) {
                field_err("tls_san", "names go into the built-in CA's server certificate; with [tls] cert they are the certificate's own".into());
            }
            crate::tls::TlsSource::Files { cert: cert.clone(), key: key.clone(), client_ca: t.client_ca.clone() }
        }
        (None, None) => {
            if t.client_ca.is_some() {
                field_err("tls.client_ca", "goes with tls.cert and tls.key (the built-in CA trusts its own)".into());
            }
            let dir = match storage? {
                StorageConfig::DataDir(d) => d.join("tls"),
                StorageConfig::SqliteFile(p) => p.parent().unwrap_or(Path::new(".")).join("tls"),
            };
            let sans = crate::tls::bootstrap::default_sans(file.tls_san.as_deref().unwrap_or(&[]), listen?);
            for s in &sans {
                if s.parse::<std::net::IpAddr>().is_err()
                    && !s.chars().all(|c| c.is_ascii_alphanumeric() || ".-*".contains(c))
                {
                    field_err("tls_san", format!("{s:?} is neither a DNS name nor an IP address"));
                }
            }
            crate::tls::TlsSource::BuiltIn { dir, sans }
        }
        _ => {
            field_err("tls", "give both cert and key, or neither (the built-in CA)".into());
            return None;
        }
    };
    Some(crate::tls::TlsConfig { source, cert_lifetime, reload_interval })
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| format!("'{s}' is not an address like 127.0.0.1:50051"))
}

fn parse_database_url(url: &str) -> Result<StorageConfig, String> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/driftwatch/driftwatch.db".into());
        }
        return Ok(StorageConfig::SqliteFile(PathBuf::from(rest)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err("PostgreSQL storage is not available in this build; use --data DIR (SQLite)".into());
    }
    Err(format!("unsupported database URL scheme in '{}'", url.split("://").next().unwrap_or(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServerFile {
        ServerFile { insecure: Some(true), ..Default::default() }
    }

    #[test]
    fn defaults_resolve() {
        let c = ServerConfig::resolve(base(), "flags").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.metrics_listen.unwrap().to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(c.storage, StorageConfig::DataDir(PathBuf::from(DEFAULT_DATA_DIR)));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let f = ServerFile {
            listen: Some("nonsense".into()),
            metrics_listen: Some("also:bad:x".into()),
            database: Some("mysql://x".into()),
            limits: LimitsFile { max_message_bytes: Some(1), max_agents: Some(0), ..Default::default() },
            ..base()
        };
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs.iter().all(|e| e.starts_with("server.toml: ")));
        assert!(errs.iter().any(|e| e.contains("listen: 'nonsense'")));
        assert!(errs.iter().any(|e| e.contains("limits.max_agents")));
    }

    #[test]
    fn external_url_is_an_absolute_http_url() {
        let f = ServerFile { external_url: Some("https://grafana.example.com/ops".into()), ..base() };
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.external_url.unwrap().as_str(), "https://grafana.example.com/ops");
        assert_eq!(ServerConfig::resolve(base(), "server.toml").unwrap().external_url, None);
        assert!(ServerConfig::resolve(base(), "server.toml").unwrap().metrics_per_host, "on by default");
        let f = ServerFile { metrics_per_host: Some(false), ..base() };
        assert!(!ServerConfig::resolve(f, "server.toml").unwrap().metrics_per_host);
        let f = ServerFile { external_url: Some("grafana.example.com".into()), ..base() };
        let err = ServerConfig::resolve(f, "server.toml").unwrap_err().to_string();
        assert!(err.contains("server.toml: external_url: \"grafana.example.com\" is not a URL"), "{err}");
    }

    #[test]
    fn metrics_off_loopback_need_a_token_file_and_access_opens_reflection() {
        let d = tempfile::tempdir().unwrap();
        let f = ServerFile { metrics_listen: Some("0.0.0.0:9464".into()), ..base() };
        let err = ServerConfig::resolve(f, "server.toml").unwrap_err().to_string();
        assert!(err.contains("metrics_listen: 0.0.0.0:9464 leaves this host: set metrics_token_file"), "{err}");
        let short = d.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let f = ServerFile { metrics_listen: Some("0.0.0.0:9464".into()), metrics_token_file: Some(short), ..base() };
        let err = ServerConfig::resolve(f, "server.toml").unwrap_err().to_string();
        assert!(err.contains("metrics_token_file") && err.contains("at least 16"), "{err}");
        let good = d.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let f = ServerFile {
            metrics_listen: Some("0.0.0.0:9464".into()),
            metrics_token_file: Some(good),
            access: AccessFile { open_reflection: Some(true) },
            ..base()
        };
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.metrics_token.as_deref(), Some("0123456789abcdef0123"));
        assert!(c.access.open_reflection);
        let c = ServerConfig::resolve(base(), "server.toml").unwrap();
        assert!(c.metrics_token.is_none() && !c.access.open_reflection, "loopback metrics need no token");
        let toml_err = toml::from_str::<ServerFile>("[access]\nopen_reflection = true\nroles = 1\n").unwrap_err();
        assert!(toml_err.to_string().contains("unknown field `roles`"), "{toml_err}");
    }

    #[test]
    fn plaintext_refused_off_loopback_and_tls_is_the_default() {
        let f = ServerFile { listen: Some("0.0.0.0:50051".into()), ..base() };
        let err = ServerConfig::resolve(f, "flags").unwrap_err().to_string();
        assert!(err.contains("loopback development only"), "{err}");
        let f = ServerFile {
            listen: Some("0.0.0.0:50051".into()),
            data: Some("/var/lib/dw".into()),
            tls_san: Some(vec!["dw.example".into()]),
            ..Default::default()
        };
        let c = ServerConfig::resolve(f, "flags").unwrap();
        let Some(crate::tls::TlsConfig { source: crate::tls::TlsSource::BuiltIn { dir, sans }, .. }) = c.tls else {
            panic!("built-in CA expected")
        };
        assert_eq!(dir, PathBuf::from("/var/lib/dw/tls"));
        assert_eq!(sans[0], "dw.example");
        assert!(sans.contains(&"localhost".to_string()));
    }

    #[test]
    fn tls_files_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let f: ServerFile = toml::from_str(&format!(
            "tls_san = [\"a\"]\n[tls]\ncert = {cert:?}\nclient_ca = \"/nope/ca.pem\"\ncert_lifetime = \"1s\"\nreload_interval = \"soon\""
        ))
        .unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        let text = errs.join("\n");
        for want in ["tls: give both cert and key", "tls.cert_lifetime: must be at least 1m", "tls.reload_interval"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let f: ServerFile = toml::from_str(&format!(
            "tls_san = [\"a\"]\n[tls]\ncert = {cert:?}\nkey = {cert:?}\nclient_ca = \"/nope/ca.pem\""
        ))
        .unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        let text = errs.join("\n");
        for want in ["tls.client_ca: /nope/ca.pem is not a readable file", "tls_san: names go into the built-in"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let f: ServerFile = toml::from_str("insecure = true\n[tls]\nclient_ca = \"/x\"").unwrap();
        assert!(ServerConfig::resolve(f, "f").unwrap_err().to_string().contains("--insecure serves plaintext"));
    }

    #[test]
    fn keepalive_defaults_and_bounds() {
        let c = ServerConfig::resolve(toml::from_str("insecure = true").unwrap(), "s").unwrap();
        assert_eq!(c.keepalive, Keepalive::default());
        let f = toml::from_str("insecure = true\nkeepalive_interval = \"2s\"\nkeepalive_timeout = \"1s\"").unwrap();
        let k = ServerConfig::resolve(f, "s").unwrap().keepalive;
        assert_eq!((k.interval, k.timeout), (Duration::from_secs(2), Duration::from_secs(1)));
        let f = toml::from_str("insecure = true\nkeepalive_interval = \"0s\"\nkeepalive_timeout = \"1d\"").unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "s") else { panic!() };
        let text = errs.join("\n");
        assert!(text.contains("s: keepalive_interval: must be between 1s and 1h"), "{text}");
        assert!(text.contains("s: keepalive_timeout: must be between 1s and 10m"), "{text}");
    }

    #[test]
    fn database_urls() {
        assert_eq!(parse_database_url("sqlite:///var/x.db").unwrap(), StorageConfig::SqliteFile("/var/x.db".into()));
        assert!(parse_database_url("postgres://h/db").unwrap_err().contains("not available"));
        assert!(parse_database_url("sqlite://").is_err());
    }

    #[test]
    fn retention_durations() {
        let f: ServerFile =
            toml::from_str("insecure = true\n[retention]\nalerts = \"7d\"\ninterval = \"30s\"").unwrap();
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.retention.alerts, Duration::from_secs(7 * 86400));
        assert_eq!(c.retention.interval, Duration::from_secs(30));
        assert_eq!(c.retention.raw_resources, Duration::from_secs(86400));
        assert_eq!(c.audit_retention, Duration::from_secs(90 * 86400), "audit default");
        let f: ServerFile = toml::from_str("insecure = true\n[retention]\naudit = \"400d\"").unwrap();
        assert_eq!(ServerConfig::resolve(f, "server.toml").unwrap().audit_retention, Duration::from_secs(400 * 86400));
        let f: ServerFile =
            toml::from_str("insecure = true\n[retention]\nalerts = \"soon\"\nrollups = \"1s\"\naudit = \"10m\"")
                .unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("retention.audit: must be at least 1h")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("server.toml: retention.alerts:")));
        assert!(errs.iter().any(|e| e.contains("retention.rollups: must be at least 1h")));
        // The one grammar of every config: combined units and fractions both work.
        let f: ServerFile = toml::from_str(
            "insecure = true\n[retention]\nalerts = \"1h30m\"\nraw_resources = \"1.5h\"\n[limits]\nheartbeat_interval = \"90s\"",
        )
        .unwrap();
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.retention.alerts, Duration::from_secs(5400));
        assert_eq!(c.retention.raw_resources, Duration::from_secs(5400));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(90));
    }

    #[test]
    fn limits_have_defaults_ranges_and_every_error_is_named() {
        use crate::limits::Limits;
        let c = ServerConfig::resolve(base(), "flags").unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.retention.offline_hosts, Duration::from_secs(30 * 86400));
        assert_eq!((c.retention.file_history, c.retention.file_history_versions), (Duration::ZERO, 100));
        let f: ServerFile = toml::from_str(
            "insecure = true\n[limits]\nmax_files_per_host = 5\nmax_bytes_per_host = 4096\nmax_labels = 3\n\
             max_label_key_bytes = 20\nrequest_timeout = \"5s\"\nmax_concurrent_streams = 8\n\
             max_active_silences = 7\n[retention]\noffline_hosts = \"0\"\nfile_history = \"14d\"\n\
             file_history_versions = 0",
        )
        .unwrap();
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        let l = c.limits;
        assert_eq!((l.max_files_per_host, l.max_bytes_per_host, l.max_labels), (5, 4096, 3));
        assert_eq!((l.max_label_key_bytes, l.max_concurrent_streams, l.max_active_silences), (20, 8, 7));
        assert_eq!(l.request_timeout, Duration::from_secs(5));
        assert_eq!(l.max_keys_per_file, Limits::default().max_keys_per_file, "unset keys keep their default");
        assert_eq!(c.retention.offline_hosts, Duration::ZERO, "\"0\" turns host expiry off");
        assert_eq!((c.retention.file_history, c.retention.file_history_versions), (Duration::from_secs(14 * 86400), 0));

        let f: ServerFile = toml::from_str(
            "insecure = true\n[limits]\nmax_files_per_host = 0\nmax_bytes_per_host = 10\nmax_keys_per_file = 0\n\
             max_labels = 0\nmax_label_key_bytes = 64\nmax_label_value_bytes = 0\n\
             max_subscribers_per_principal = 0\nmax_active_silences = 0\nmax_rollouts_per_principal = 0\n\
             max_concurrent_streams = 0\nmax_operator_requests = 0\nrequest_timeout = \"0s\"\n\
             [retention]\noffline_hosts = \"30m\"\nfile_history = \"soon\"",
        )
        .unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        assert_eq!(errs.len(), 14, "{errs:#?}");
        for key in [
            "limits.max_files_per_host: must be at least 1",
            "limits.max_bytes_per_host: must be at least 1024",
            "limits.max_keys_per_file",
            "limits.max_labels: must be between 1 and 1024",
            "limits.max_label_key_bytes: must be between 1 and 63 (the label grammar's bound)",
            "limits.max_label_value_bytes",
            "limits.max_subscribers_per_principal",
            "limits.max_active_silences",
            "limits.max_rollouts_per_principal",
            "limits.max_concurrent_streams",
            "limits.max_operator_requests",
            "limits.request_timeout: must be between 1s and 1h",
            "retention.offline_hosts: must be \"0\" (off) or at least 1h",
            "retention.file_history:",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(&format!("server.toml: {key}"))), "{key} in {errs:#?}");
        }
        assert!(toml::from_str::<ServerFile>("[limits]\nmax_file = 3").is_err(), "unknown keys are errors");
    }

    #[test]
    fn example_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/server.toml");
        let f = ServerConfig::load_file(&path).unwrap();
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.retention.alerts, Duration::from_secs(72 * 3600));
        assert_eq!(c.limits, crate::limits::Limits::default(), "the example shows the defaults");
        let tls = c.tls.expect("TLS by default");
        assert!(
            matches!(&tls.source, crate::tls::TlsSource::BuiltIn { sans, .. } if sans[0] == "driftwatch.example.com")
        );
    }

    #[test]
    fn notifier_problems_are_reported_with_the_others() {
        let f: ServerFile = toml::from_str(
            "insecure = true\nlisten = \"bad\"\n[[notifiers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://x/\"\nca_file = \"/nonexistent/ca.pem\"\n\n[[notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"http://127.0.0.1:9093\"]\n",
        )
        .unwrap();
        let Err(ServerError::Config(errs)) = ServerConfig::resolve(f, "server.toml") else { panic!() };
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("server.toml: listen:")));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("server.toml: notifiers[0].ca_file:") && e.contains("/nonexistent/ca.pem")),
            "{errs:#?}"
        );
        let f: ServerFile = toml::from_str(
            "insecure = true\n[[notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"http://127.0.0.1:9093\"]\n",
        )
        .unwrap();
        let c = ServerConfig::resolve(f, "server.toml").unwrap();
        assert_eq!(c.notifiers.len(), 1);
        assert!(
            toml::from_str::<ServerFile>("[[notifiers]]\nname = \"x\"\nsecret = \"inline\"").is_err(),
            "unknown fields"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<ServerFile>("listn = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
