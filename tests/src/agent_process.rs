//! Real agents as OS processes: the `driftwatch-agent` binary of this build, each with
//! its own directory (config file, state dir, stderr log). Offline is a stopped
//! process; a restart is a new process on the same config and state dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use driftwatch_agent::AgentFile;
use driftwatch_agent::config::WatchEntry;
use toml::{Table, Value};

use crate::binaries::agent_binary;
use crate::process::ChildProcess;

/// How long a stopped agent may take to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `file` as the agent's TOML config (the shape of `deploy/examples/agent.toml`).
pub fn agent_toml(file: &AgentFile) -> String {
    let s = |v: &str| Value::from(v);
    let p = |v: &Path| Value::from(v.display().to_string());
    let list = |v: &[String]| Value::Array(v.iter().map(|x| s(x)).collect());
    let mut t = Table::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            t.insert(k.to_string(), v);
        }
    };
    put("server", file.server.as_deref().map(s));
    put("host_id", file.host_id.as_deref().map(s));
    put("insecure", file.insecure.map(Value::from));
    put("ca_file", file.ca_file.as_deref().map(p));
    put("enroll_token_file", file.enroll_token_file.as_deref().map(p));
    put("state_dir", file.state_dir.as_deref().map(p));
    put("fleet_key_file", file.fleet_key_file.as_deref().map(p));
    put("resource_interval", file.resource_interval.as_deref().map(s));
    put("debounce", file.debounce.as_deref().map(s));
    put("rescan_interval", file.rescan_interval.as_deref().map(s));
    put("max_file_bytes", file.max_file_bytes.map(|n| Value::from(n as i64)));
    put("spool_max_bytes", file.spool_max_bytes.map(|n| Value::from(n as i64)));
    put("metrics_listen", file.metrics_listen.as_deref().map(s));
    put("metrics_token_file", file.metrics_token_file.as_deref().map(p));
    put("healthz_grace", file.healthz_grace.as_deref().map(s));
    put("path_prefix", file.path_prefix.as_deref().map(p));
    let watch = file.watch.iter().map(|w| match w {
        WatchEntry::Plain(x) => s(x),
        WatchEntry::Table { path, format } => {
            let mut e = Table::new();
            e.insert("path".into(), s(path));
            if let Some(f) = format {
                e.insert("format".into(), s(f));
            }
            Value::Table(e)
        }
    });
    put("watch", Some(Value::Array(watch.collect())));
    put("writable", Some(list(&file.writable)));
    put("labels", Some(Value::Table(file.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect())));
    let files = file.files.iter().map(|f| {
        let mut e = Table::new();
        e.insert("path".into(), s(&f.path));
        for (k, v) in [("reload", &f.reload), ("health", &f.health)] {
            if let Some(argv) = v {
                e.insert(k.into(), list(argv));
            }
        }
        if let Some(x) = &f.timeout {
            e.insert("timeout".into(), s(x));
        }
        Value::Table(e)
    });
    put("files", Some(Value::Array(files.collect())));
    let groups = file.process_groups.iter().map(|g| {
        Value::Table([("name".to_string(), s(&g.name)), ("pattern".to_string(), s(&g.pattern))].into_iter().collect())
    });
    put("process_groups", Some(Value::Array(groups.collect())));
    if let Some(b) = &file.backups {
        let mut e = Table::new();
        if let Some(k) = b.keep {
            e.insert("keep".into(), Value::from(k as i64));
        }
        if let Some(a) = &b.max_age {
            e.insert("max_age".into(), s(a));
        }
        put("backups", Some(Value::Table(e)));
    }
    toml::to_string(&t).expect("an agent config serializes")
}

/// One agent process. Killed when dropped; its stderr (`<dir>/agent.log`) is printed
/// when the test fails.
pub struct AgentProcess {
    host_id: String,
    bin: PathBuf,
    config: PathBuf,
    log: Option<PathBuf>,
    log_filter: String,
    /// Run inside this network namespace (`ip netns exec`), for multi-host tests.
    netns: Option<String>,
    /// Environment variables set for every run of it (test hooks).
    env: Vec<(String, PathBuf)>,
    process: Option<ChildProcess>,
}

impl AgentProcess {
    /// Write `file` to `<dir>/agent.toml` and start this build's agent binary on it,
    /// logging at `info` to `<dir>/agent.log`.
    pub fn start(dir: &Path, file: &AgentFile) -> Self {
        let log = dir.join("agent.log");
        Self::spawn(agent_binary(), dir, file, "info", Some(&log)).expect("start the agent process")
    }

    /// Write `file` to `<dir>/agent.toml` and start `bin` on it with the log filter
    /// `log_filter`, stderr to `log` (inherited when `None`).
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        file: &AgentFile,
        log_filter: &str,
        log: Option<&Path>,
    ) -> std::io::Result<Self> {
        let mut a = Self::prepare(bin, dir, file, log_filter, log)?;
        a.launch()?;
        Ok(a)
    }

    /// Write `file` to `<dir>/agent.toml`; not started yet.
    fn prepare(
        bin: &Path,
        dir: &Path,
        file: &AgentFile,
        log_filter: &str,
        log: Option<&Path>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("agent.toml");
        std::fs::write(&config, agent_toml(file))?;
        Ok(Self {
            host_id: file.host_id.clone().unwrap_or_default(),
            bin: bin.to_path_buf(),
            config,
            log: log.map(Path::to_path_buf),
            log_filter: log_filter.to_string(),
            netns: None,
            env: Vec::new(),
            process: None,
        })
    }

    /// [`AgentProcess::start`] with the environment variables `env` set for this and
    /// every later run of it (e.g. `driftwatch_agent::run::ACK_LOG_ENV`).
    pub fn start_with_env(dir: &Path, file: &AgentFile, env: &[(&str, &Path)]) -> Self {
        let log = dir.join("agent.log");
        let mut a = Self::prepare(agent_binary(), dir, file, "info", Some(&log)).expect("write the agent config");
        a.env = env.iter().map(|(k, v)| (k.to_string(), v.to_path_buf())).collect();
        a.launch().expect("start the agent process");
        a
    }

    /// [`AgentProcess::start`] inside network namespace `ns` (see `crate::netns`).
    pub fn start_in_netns(ns: &str, dir: &Path, file: &AgentFile) -> Self {
        let log = dir.join("agent.log");
        let mut a = Self::prepare(agent_binary(), dir, file, "info", Some(&log)).expect("write the agent config");
        a.netns = Some(ns.to_string());
        a.launch().expect("start the agent process in its namespace");
        a
    }

    fn launch(&mut self) -> std::io::Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => crate::netns::Lab::command(ns, &self.bin),
            None => Command::new(&self.bin),
        };
        cmd.arg("--config").arg(&self.config).args(["--log", &self.log_filter]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = format!("driftwatch-agent {}", self.host_id);
        self.process = Some(ChildProcess::spawn(&name, cmd, self.log.as_deref())?);
        Ok(())
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The running process's id (`None` while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Its stderr so far, every run of it.
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Take the host offline: SIGTERM, killed if it has not drained within a deadline.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(STOP_GRACE).await;
        }
    }

    /// SIGKILL it (no drain, no flush) and reap it: a crashed host.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Start it again after [`stop`](Self::stop) or [`kill`](Self::kill): a new process on the same config and
    /// state dir (a restarted agent).
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "{} is still running", self.host_id);
        self.launch().expect("start the agent process again");
    }

    /// Start it again after [`stop`](Self::stop) with another config (the same state dir
    /// unless `file` names another).
    pub fn start_again_with(&mut self, file: &AgentFile) {
        std::fs::write(&self.config, agent_toml(file)).expect("write the agent config");
        self.start_again();
    }
}

#[cfg(test)]
mod tests {
    use driftwatch_agent::AgentConfig;
    use driftwatch_agent::config::{BackupsFile, FileCommandsFile, ProcessGroupFile};

    use super::*;

    /// What the harness writes is what the agent reads: every field through the agent's
    /// own loader and validation.
    #[test]
    fn the_config_file_reads_back_through_the_agents_loader() {
        let dir = tempfile::tempdir().unwrap();
        let file = AgentFile {
            writable: vec!["/etc/app".into()],
            files: vec![FileCommandsFile {
                path: "/etc/app/.env".into(),
                reload: Some(vec!["sh".into(), "-c".into(), "echo \"reloaded\"".into()]),
                health: None,
                timeout: Some("10s".into()),
            }],
            process_groups: vec![ProcessGroupFile { name: "load".into(), pattern: "dwload-*".into() }],
            debounce: Some("20ms".into()),
            backups: Some(BackupsFile { keep: Some(5), max_age: Some("1h".into()) }),
            watch: vec![
                WatchEntry::Plain("/etc/app/.env".into()),
                WatchEntry::Table { path: "/etc/app/legacy.conf".into(), format: Some("ini".into()) },
            ],
            ..crate::agent_file("http://127.0.0.1:1", "web-1", &dir.path().join("state"), &[])
        };
        assert!(
            agent_toml(&AgentFile { ca_file: Some("/ca.pem".into()), ..file.clone() })
                .contains("ca_file = \"/ca.pem\"")
        );
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, agent_toml(&file)).unwrap();
        let c = AgentConfig::resolve(AgentConfig::load_file(&p).unwrap(), "agent.toml").unwrap();
        assert_eq!((c.server.as_str(), c.host_id.as_str(), c.insecure), ("http://127.0.0.1:1", "web-1", true));
        assert_eq!(c.labels, file.labels);
        assert_eq!(c.watch.len(), 2);
        assert_eq!(c.writable, file.writable);
        assert_eq!(c.files[0].reload.as_deref(), file.files[0].reload.as_deref());
        assert_eq!(c.files[0].timeout, Duration::from_secs(10));
        assert_eq!((c.process_groups[0].name.as_str(), c.process_groups[0].pattern.as_str()), ("load", "dwload-*"));
        assert_eq!((c.debounce, c.resource_interval), (Duration::from_millis(20), Duration::ZERO));
        assert_eq!((c.backups.keep, c.backups.max_age), (5, Duration::from_secs(3600)));
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.fleet_key_file, file.fleet_key_file);
    }
}
