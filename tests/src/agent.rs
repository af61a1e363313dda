//! Real agents in this process (the `driftwatch_agent` library), and the config every
//! test agent starts from: also what an agent process's TOML file is written from
//! (`agent_process`).

use std::path::Path;

use driftwatch_agent::config::WatchEntry;
use driftwatch_agent::{AgentConfig, AgentFile, RunningAgent};
use driftwatch_server::RunningServer;

use crate::files::fleet_key;
use crate::server::server_url;

/// An agent config file for tests: label `env=test`, resource sampling off, plaintext,
/// the test directory's shared fleet key (next to `state_dir`).
pub fn agent_file(url: &str, host_id: &str, state_dir: &Path, watch: &[String]) -> AgentFile {
    AgentFile {
        server: Some(url.to_string()),
        host_id: Some(host_id.to_string()),
        labels: [("env".to_string(), "test".to_string())].into(),
        watch: watch.iter().cloned().map(WatchEntry::Plain).collect(),
        resource_interval: Some("0".into()),
        state_dir: Some(state_dir.to_path_buf()),
        insecure: Some(true),
        fleet_key_file: Some(fleet_key(state_dir.parent().unwrap_or(state_dir))),
        ..Default::default()
    }
}

/// [`agent_file`] resolved, for an agent in this process.
pub fn agent_config(server: &RunningServer, host_id: &str, state_dir: &Path, watch: &[String]) -> AgentConfig {
    agent_config_url(&server_url(server), host_id, state_dir, watch)
}

pub fn agent_config_url(url: &str, host_id: &str, state_dir: &Path, watch: &[String]) -> AgentConfig {
    AgentConfig::resolve(agent_file(url, host_id, state_dir, watch), "test").expect("valid agent config")
}

pub async fn start_agent(config: AgentConfig) -> RunningAgent {
    driftwatch_agent::start(config).await.expect("agent starts")
}
