//! `[limits]` in server.toml: the file's shape and its validation into [`super::Limits`].

use serde::Deserialize;

use std::time::Duration;

/// `[limits]`: every input's bound (see `crate::limits::Limits` for what each means).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest message an agent may send, in bytes.
    pub max_message_bytes: Option<usize>,
    /// Most agent streams held at once.
    pub max_agents: Option<usize>,
    /// Time between agent heartbeats, pushed to agents in Welcome (default 15s).
    pub heartbeat_interval: Option<String>,
    /// Most files one host may report.
    pub max_files_per_host: Option<usize>,
    /// Most bytes of file state (parsed, as the server holds it) one host may have.
    pub max_bytes_per_host: Option<u64>,
    /// Most keys in one file.
    pub max_keys_per_file: Option<usize>,
    /// Most labels of one host.
    pub max_labels: Option<usize>,
    pub max_label_key_bytes: Option<usize>,
    pub max_label_value_bytes: Option<usize>,
    /// Most `Subscribe`/`WatchRollout` streams one principal holds open.
    pub max_subscribers_per_principal: Option<usize>,
    /// Most silences not yet expired, all together.
    pub max_active_silences: Option<usize>,
    /// Most pending, running or paused rollouts one principal has.
    pub max_rollouts_per_principal: Option<usize>,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<u32>,
    /// Operator requests handled at once (agents' streams are not counted).
    pub max_operator_requests: Option<usize>,
    /// Deadline of an operator request (default 60s).
    pub request_timeout: Option<String>,
    /// Snapshots coalesced into one store transaction at most.
    pub max_batch: Option<usize>,
}

/// `[limits]`: each key's default, and its range.
pub(crate) fn resolve(l: &LimitsFile, field_err: &mut impl FnMut(&str, String)) -> crate::limits::Limits {
    use crate::limits::{LABEL_KEY_BYTES, LABEL_VALUE_BYTES, Limits};
    let d = Limits::default();
    let mut check = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64, why: &str| match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(_) => {
            let range = if max == u64::MAX { format!("at least {min}") } else { format!("between {min} and {max}") };
            field_err(&format!("limits.{key}"), format!("must be {range}{why}"));
            default
        }
    };
    let any = u64::MAX;
    let n = |v: Option<usize>| v.map(|v| v as u64);
    // Agents send file states of up to 1 MiB each (larger ones lose their keys) in
    // snapshot parts of 256 KiB, so 2 MiB always fits one.
    let message = " (one agent message part is up to 2097152)";
    let grammar = " (the label grammar's bound)";
    let mut limits = Limits {
        max_message_bytes: check(
            "max_message_bytes",
            n(l.max_message_bytes),
            d.max_message_bytes as u64,
            2 * 1024 * 1024,
            256 * 1024 * 1024,
            message,
        ) as usize,
        max_agents: check("max_agents", n(l.max_agents), d.max_agents as u64, 1, any, "") as usize,
        max_files_per_host: check(
            "max_files_per_host",
            n(l.max_files_per_host),
            d.max_files_per_host as u64,
            1,
            any,
            "",
        ) as usize,
        max_bytes_per_host: check("max_bytes_per_host", l.max_bytes_per_host, d.max_bytes_per_host, 1024, any, ""),
        max_keys_per_file: check("max_keys_per_file", n(l.max_keys_per_file), d.max_keys_per_file as u64, 1, any, "")
            as usize,
        max_labels: check("max_labels", n(l.max_labels), d.max_labels as u64, 1, 1024, "") as usize,
        max_label_key_bytes: check(
            "max_label_key_bytes",
            n(l.max_label_key_bytes),
            d.max_label_key_bytes as u64,
            1,
            LABEL_KEY_BYTES as u64,
            grammar,
        ) as usize,
        max_label_value_bytes: check(
            "max_label_value_bytes",
            n(l.max_label_value_bytes),
            d.max_label_value_bytes as u64,
            1,
            LABEL_VALUE_BYTES as u64,
            grammar,
        ) as usize,
        max_subscribers_per_principal: check(
            "max_subscribers_per_principal",
            n(l.max_subscribers_per_principal),
            d.max_subscribers_per_principal as u64,
            1,
            any,
            "",
        ) as usize,
        max_active_silences: check(
            "max_active_silences",
            n(l.max_active_silences),
            d.max_active_silences as u64,
            1,
            any,
            "",
        ) as usize,
        max_rollouts_per_principal: check(
            "max_rollouts_per_principal",
            n(l.max_rollouts_per_principal),
            d.max_rollouts_per_principal as u64,
            1,
            any,
            "",
        ) as usize,
        max_concurrent_streams: check(
            "max_concurrent_streams",
            l.max_concurrent_streams.map(u64::from),
            d.max_concurrent_streams.into(),
            1,
            u32::MAX.into(),
            "",
        ) as u32,
        max_operator_requests: check(
            "max_operator_requests",
            n(l.max_operator_requests),
            d.max_operator_requests as u64,
            1,
            any,
            "",
        ) as usize,
        request_timeout: d.request_timeout,
    };
    if let Some(v) = &l.request_timeout {
        match driftwatch_proto::duration::parse(v) {
            Ok(t) if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) => limits.request_timeout = t,
            Ok(_) => field_err("limits.request_timeout", "must be between 1s and 1h".into()),
            Err(e) => field_err("limits.request_timeout", e),
        }
    }
    limits
}
