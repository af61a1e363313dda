//! Agent configuration: a TOML file that mirrors the flags. Flags win over
//! `DRIFTWATCH_*` environment variables, which win over the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_formats::{Format, Limits};
use serde::Deserialize;

use crate::error::AgentError;
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

/// The TOML shape. Every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub server: Option<String>,
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
}

/// Resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
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
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
pub const DEFAULT_STATE_DIR: &str = "./driftwatch-agent-state";

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
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            err("server", format!("'{server}' must be a URL like http://127.0.0.1:50051"));
        }
        let insecure = file.insecure.unwrap_or(false);
        if server.starts_with("https://") {
            err("server", "TLS is not available in this build; use http:// with --insecure on loopback".into());
        } else if !insecure {
            err("insecure", "plaintext http:// needs --insecure (loopback development only)".into());
        }
        let host_id = file.host_id.unwrap_or_else(default_host_id);
        if host_id.is_empty()
            || host_id.len() > 253
            || !host_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        {
            err("host_id", format!("'{host_id}' must be 1-253 characters of A-Z a-z 0-9 . _ - :"));
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
        if !errors.is_empty() {
            return Err(AgentError::Config(errors.join("\n  ")));
        }
        Ok(Self {
            server,
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
        })
    }
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
                Some(name) => Some(
                    driftwatch_formats::parse_format_name(name)
                        .ok_or_else(|| format!("unknown format '{name}' (env, ini, yaml, json, toml, text)"))?,
                ),
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

/// `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration like 250ms, 10s, 5m or 1h"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}' has an unknown unit (ms, s, m, h)")),
    };
    if !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
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
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
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
    }
}
