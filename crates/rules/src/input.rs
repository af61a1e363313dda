//! What rules are evaluated on: the host, a file snapshot with its metadata, a resource
//! metric's history, an agent's connectivity. Plain data borrowed by evaluation; imports
//! nothing of the crate.

use std::collections::BTreeMap;

use driftwatch_proto::v1::Value;

/// A host as the rules see it.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// File metadata visible as `meta`.
#[derive(Debug, Clone, Default)]
pub struct FileMeta {
    /// st_mode as the agent sends it; `meta.mode` shows only the permission bits (& 0o7777).
    pub mode: u32,
    /// st_mode of the directory holding the file; 0 when unknown. `meta.dir_mode` shows
    /// only the permission bits.
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// env, ini, yaml, json, toml, keyword, sysctl, nginx, systemd, text.
    pub format: String,
    pub exists: bool,
    pub parse_error: Option<String>,
}

/// One file snapshot to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct FileInput<'a> {
    pub path: &'a str,
    pub keys: &'a BTreeMap<String, Value>,
    pub meta: &'a FileMeta,
    /// The effective baseline's keys for this file, if any.
    pub baseline: Option<&'a BTreeMap<String, Value>>,
    /// The previous snapshot's keys of this file, if any.
    pub previous: Option<&'a BTreeMap<String, Value>>,
}

/// One resource metric's history to evaluate: samples `(time_ms, value)` in time order,
/// the last one being the current value.
#[derive(Debug, Clone, Copy)]
pub struct ResourceInput<'a> {
    pub metric: &'a str,
    pub samples: &'a [(i64, f64)],
    /// The baseline's expectation for this metric, if any.
    pub baseline: Option<f64>,
    /// End of the history window (usually the last sample's time).
    pub now_ms: i64,
}

/// Agent connectivity, for `target: {agent: offline}` rules.
#[derive(Debug, Clone, Copy)]
pub struct AgentInput {
    pub connected: bool,
    pub last_seen_ms: i64,
    pub now_ms: i64,
}
