//! Limits on every input: what each one is, its value, the pure checks, and the one
//! way a request past a limit is refused (a status naming the limit, its value and the
//! config key that raises it, counted in `driftwatch_limit_hits_total{limit}`).
//!
//! Where each is enforced: per host in `gateway` (Hello labels, files, bytes, keys
//! per file) and `fleet` (`SetHostLabels`); per principal in `alerts` (`Subscribe`),
//! `changes` (`WatchRollout`, rollouts); silences in the engine's command queue (one
//! sequencer, so two creates cannot both take the last slot); on the transport in
//! `transport` (a tower layer: operator requests in flight, request deadlines,
//! streams per connection). Retention-like limits (offline hosts, file history) are
//! in `crate::retention`.

pub mod config;
pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::principal::Principal;

/// Resolved limits (`[limits]` in the server config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message an agent may send, in bytes.
    pub max_message_bytes: usize,
    /// Agent streams held at once.
    pub max_agents: usize,
    /// Files one host may report.
    pub max_files_per_host: usize,
    /// Sum of the sizes of a host's file states as the server holds them (parsed,
    /// masked keys, encoded), not the files' sizes on disk.
    pub max_bytes_per_host: u64,
    /// Keys in one file state.
    pub max_keys_per_file: usize,
    /// Labels of one host (its agent's at Hello, or after `SetHostLabels`).
    pub max_labels: usize,
    pub max_label_key_bytes: usize,
    pub max_label_value_bytes: usize,
    /// `Alerts.Subscribe` and `Changes.WatchRollout` streams one principal holds open.
    pub max_subscribers_per_principal: usize,
    /// Silences not yet expired (active or pending), all principals together.
    pub max_active_silences: usize,
    /// Rollouts one principal has pending, running or paused.
    pub max_rollouts_per_principal: usize,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// Operator requests (every service but the agents') being handled at once.
    pub max_operator_requests: usize,
    /// Deadline of an operator request (a shorter `grpc-timeout` from the client wins).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_agents: 10_000,
            max_files_per_host: 10_000,
            max_bytes_per_host: 128 * 1024 * 1024,
            max_keys_per_file: 10_000,
            max_labels: 64,
            max_label_key_bytes: LABEL_KEY_BYTES,
            max_label_value_bytes: LABEL_VALUE_BYTES,
            max_subscribers_per_principal: 64,
            max_active_silences: 1_000,
            max_rollouts_per_principal: 10,
            max_concurrent_streams: 128,
            max_operator_requests: 256,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The label grammar's bounds (a key of at most 63 bytes, a value of at most 253, as
/// `SetHostLabels` and enrollment tokens check): the limits may lower them, not raise them.
pub const LABEL_KEY_BYTES: usize = 63;
pub const LABEL_VALUE_BYTES: usize = 253;

/// One limit, named by its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxMessageBytes,
    MaxAgents,
    MaxFilesPerHost,
    MaxBytesPerHost,
    MaxKeysPerFile,
    MaxLabels,
    MaxLabelKeyBytes,
    MaxLabelValueBytes,
    MaxSubscribersPerPrincipal,
    MaxActiveSilences,
    MaxRolloutsPerPrincipal,
    MaxConcurrentStreams,
    MaxOperatorRequests,
    RequestTimeout,
}

impl Limit {
    /// Every limit (each one's metric series exists from the start).
    pub const ALL: [Limit; 14] = [
        Limit::MaxMessageBytes,
        Limit::MaxAgents,
        Limit::MaxFilesPerHost,
        Limit::MaxBytesPerHost,
        Limit::MaxKeysPerFile,
        Limit::MaxLabels,
        Limit::MaxLabelKeyBytes,
        Limit::MaxLabelValueBytes,
        Limit::MaxSubscribersPerPrincipal,
        Limit::MaxActiveSilences,
        Limit::MaxRolloutsPerPrincipal,
        Limit::MaxConcurrentStreams,
        Limit::MaxOperatorRequests,
        Limit::RequestTimeout,
    ];

    /// The key in `[limits]`, also the `limit` label of its metric.
    pub const fn key(self) -> &'static str {
        match self {
            Limit::MaxMessageBytes => "max_message_bytes",
            Limit::MaxAgents => "max_agents",
            Limit::MaxFilesPerHost => "max_files_per_host",
            Limit::MaxBytesPerHost => "max_bytes_per_host",
            Limit::MaxKeysPerFile => "max_keys_per_file",
            Limit::MaxLabels => "max_labels",
            Limit::MaxLabelKeyBytes => "max_label_key_bytes",
            Limit::MaxLabelValueBytes => "max_label_value_bytes",
            Limit::MaxSubscribersPerPrincipal => "max_subscribers_per_principal",
            Limit::MaxActiveSilences => "max_active_silences",
            Limit::MaxRolloutsPerPrincipal => "max_rollouts_per_principal",
            Limit::MaxConcurrentStreams => "max_concurrent_streams",
            Limit::MaxOperatorRequests => "max_operator_requests",
            Limit::RequestTimeout => "request_timeout",
        }
    }
}

impl Limits {
    /// The configured value of `limit`, as the config file writes it.
    pub fn value(&self, limit: Limit) -> String {
        match limit {
            Limit::MaxMessageBytes => self.max_message_bytes.to_string(),
            Limit::MaxAgents => self.max_agents.to_string(),
            Limit::MaxFilesPerHost => self.max_files_per_host.to_string(),
            Limit::MaxBytesPerHost => self.max_bytes_per_host.to_string(),
            Limit::MaxKeysPerFile => self.max_keys_per_file.to_string(),
            Limit::MaxLabels => self.max_labels.to_string(),
            Limit::MaxLabelKeyBytes => self.max_label_key_bytes.to_string(),
            Limit::MaxLabelValueBytes => self.max_label_value_bytes.to_string(),
            Limit::MaxSubscribersPerPrincipal => self.max_subscribers_per_principal.to_string(),
            Limit::MaxActiveSilences => self.max_active_silences.to_string(),
            Limit::MaxRolloutsPerPrincipal => self.max_rollouts_per_principal.to_string(),
            Limit::MaxConcurrentStreams => self.max_concurrent_streams.to_string(),
            Limit::MaxOperatorRequests => self.max_operator_requests.to_string(),
            Limit::RequestTimeout => format!("{:?}", driftwatch_proto::duration::format(self.request_timeout)),
        }
    }

    /// The labels of a host against the count and length limits; `whose` says where
    /// they came from (for the message).
    pub fn check_labels(&self, labels: &BTreeMap<String, String>, whose: &str) -> Result<(), Breach> {
        self.check_label_count(labels.len(), whose)?;
        labels.iter().try_for_each(|(k, v)| self.check_label(k, v, whose))
    }

    pub fn check_label_count(&self, count: usize, whose: &str) -> Result<(), Breach> {
        if count > self.max_labels {
            return Err(Breach::new(Limit::MaxLabels, format!("{whose}: {count} labels")));
        }
        Ok(())
    }

    pub fn check_label(&self, key: &str, value: &str, whose: &str) -> Result<(), Breach> {
        let shown: String = key.chars().take(80).collect();
        if key.len() > self.max_label_key_bytes {
            return Err(Breach::new(
                Limit::MaxLabelKeyBytes,
                format!("{whose}: label key {shown:?} is {} bytes", key.len()),
            ));
        }
        if value.len() > self.max_label_value_bytes {
            return Err(Breach::new(
                Limit::MaxLabelValueBytes,
                format!("{whose}: the value of label {shown:?} is {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    /// What a host holds after a snapshot, against the per-host limits.
    pub fn check_host(&self, host: &str, after: HostUsage) -> Result<(), Breach> {
        if after.files > self.max_files_per_host {
            return Err(Breach::new(Limit::MaxFilesPerHost, format!("host '{host}' would hold {} files", after.files)));
        }
        if after.bytes > self.max_bytes_per_host {
            return Err(Breach::new(
                Limit::MaxBytesPerHost,
                format!("host '{host}' would hold {} bytes of file state", after.bytes),
            ));
        }
        Ok(())
    }

    pub fn check_keys(&self, host: &str, path: &str, keys: usize) -> Result<(), Breach> {
        if keys > self.max_keys_per_file {
            return Err(Breach::new(Limit::MaxKeysPerFile, format!("host '{host}' sent {keys} keys for {path}")));
        }
        Ok(())
    }
}

/// A request past a limit: which limit, and what the request would have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub limit: Limit,
    pub what: String,
}

impl Breach {
    pub fn new(limit: Limit, what: impl Into<String>) -> Self {
        Self { limit, what: what.into() }
    }

    /// The status the offender gets, counted in the limit's metric.
    pub fn refuse(self, limits: &Limits, metrics: &Metrics) -> ServerError {
        metrics.limit_hit(self.limit.key(), 1);
        let message = message(self.limit, &limits.value(self.limit), &self.what);
        tracing::info!(limit = self.limit.key(), %message, "limit hit");
        match self.limit {
            Limit::MaxLabelKeyBytes | Limit::MaxLabelValueBytes => ServerError::InvalidArgument(message),
            Limit::RequestTimeout => ServerError::DeadlineExceeded(message),
            _ => ServerError::ResourceExhausted(message),
        }
    }
}

/// "<what>; the limit is <value> ([limits] <key> in the server config file raises it)".
pub fn message(limit: Limit, value: &str, what: &str) -> String {
    format!("{what}; the limit is {value} ([limits] {} in the server config file raises it)", limit.key())
}

/// Files and bytes of file state a host holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUsage {
    pub files: usize,
    pub bytes: u64,
}

/// What a host will hold once a snapshot is applied: its held files `(path, seq,
/// bytes)`, replaced by the snapshot's `(path, bytes)`. For a full listing
/// (`listing_from`: the seq its first part had) only what the listing has named so
/// far counts: the files it does not name go when it ends, so a listing is judged by
/// what it lists.
pub fn usage_after<'a>(
    held: impl Iterator<Item = (&'a str, u64, u64)>,
    incoming: &[(&str, u64)],
    listing_from: Option<u64>,
) -> HostUsage {
    let incoming: HashMap<&str, u64> = incoming.iter().copied().collect();
    let mut usage = HostUsage { files: incoming.len(), bytes: incoming.values().sum() };
    for (path, seq, bytes) in held {
        if incoming.contains_key(path) || listing_from.is_some_and(|first| seq < first) {
            continue;
        }
        usage.files += 1;
        usage.bytes += bytes;
    }
    usage
}

/// Open streams per principal, for `max_subscribers_per_principal`.
#[derive(Debug, Default)]
pub struct PrincipalSlots {
    held: Mutex<HashMap<String, usize>>,
}

/// One stream's place; given back when dropped (the stream ended or its client went).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<PrincipalSlots>,
    principal: String,
}

impl PrincipalSlots {
    /// A slot for `principal` if it holds fewer than `max`.
    pub fn take(self: &Arc<Self>, principal: &str, max: usize) -> Option<Slot> {
        let mut held = self.held.lock();
        let n = held.entry(principal.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), principal: principal.to_string() })
    }

    /// Slots `principal` holds now.
    pub fn held(&self, principal: &str) -> usize {
        self.held.lock().get(principal).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock();
        if let Some(n) = held.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.principal);
            }
        }
    }
}

/// Subscriber streams (`Alerts.Subscribe`, `Changes.WatchRollout`) per principal.
#[derive(Debug)]
pub struct Subscribers {
    slots: Arc<PrincipalSlots>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Subscribers {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { slots: Default::default(), limits, metrics })
    }

    /// A slot for one more stream of `principal`, or the refusal.
    pub fn admit(&self, principal: &Principal) -> Result<Slot, ServerError> {
        let max = self.limits.max_subscribers_per_principal;
        self.slots.take(principal.name(), max).ok_or_else(|| {
            let what = format!(
                "'{principal}' already has {} Subscribe/WatchRollout streams open",
                self.slots.held(principal.name())
            );
            Breach::new(Limit::MaxSubscribersPerPrincipal, what).refuse(&self.limits, &self.metrics)
        })
    }
}

/// Rollouts of `actor` that still hold a place (pending, running, paused).
pub fn active_rollouts<'a>(rollouts: impl IntoIterator<Item = (&'a str, i32)>, actor: &str) -> usize {
    rollouts.into_iter().filter(|(a, state)| *a == actor && !driftwatch_proto::rollout_is_terminal(*state)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::RolloutState;

    #[test]
    fn usage_counts_replacements_once_and_a_listing_only_what_it_names() {
        let held = [("/a", 5, 100), ("/b", 6, 200), ("/c", 9, 50)];
        let delta = usage_after(held.iter().copied(), &[("/b", 10), ("/d", 1)], None);
        assert_eq!(delta, HostUsage { files: 4, bytes: 100 + 10 + 50 + 1 });
        // A listing whose first part had seq 8: /a and /b (older) go unless it names them.
        let listing = usage_after(held.iter().copied(), &[("/a", 7)], Some(8));
        assert_eq!(listing, HostUsage { files: 2, bytes: 7 + 50 });
        // One path twice in a snapshot counts once (the last wins when applied).
        let twice = usage_after(std::iter::empty(), &[("/x", 1), ("/x", 3)], None);
        assert_eq!(twice, HostUsage { files: 1, bytes: 3 });
    }

    #[test]
    fn host_checks_name_the_limit_that_was_hit() {
        let limits =
            Limits { max_files_per_host: 2, max_bytes_per_host: 100, max_keys_per_file: 3, ..Default::default() };
        assert!(limits.check_host("h", HostUsage { files: 2, bytes: 100 }).is_ok(), "at the limit is fine");
        assert_eq!(limits.check_host("h", HostUsage { files: 3, bytes: 1 }).unwrap_err().limit, Limit::MaxFilesPerHost);
        assert_eq!(
            limits.check_host("h", HostUsage { files: 1, bytes: 101 }).unwrap_err().limit,
            Limit::MaxBytesPerHost
        );
        assert!(limits.check_keys("h", "/a", 3).is_ok());
        assert_eq!(limits.check_keys("h", "/a", 4).unwrap_err().limit, Limit::MaxKeysPerFile);
    }

    #[test]
    fn labels_are_checked_for_count_and_lengths() {
        let limits = Limits { max_labels: 2, max_label_key_bytes: 3, max_label_value_bytes: 4, ..Default::default() };
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(limits.check_labels(&labels(&[("env", "prod"), ("a", "")]), "hello").is_ok());
        let too_many = limits.check_labels(&labels(&[("a", "1"), ("b", "2"), ("c", "3")]), "hello").unwrap_err();
        assert_eq!(too_many.limit, Limit::MaxLabels);
        assert_eq!(too_many.what, "hello: 3 labels");
        assert_eq!(limits.check_labels(&labels(&[("long", "1")]), "x").unwrap_err().limit, Limit::MaxLabelKeyBytes);
        assert_eq!(limits.check_labels(&labels(&[("k", "12345")]), "x").unwrap_err().limit, Limit::MaxLabelValueBytes);
    }

    #[test]
    fn a_refusal_names_the_limit_its_value_and_key_and_is_counted() {
        let metrics = Metrics::new();
        let limits = Limits { max_files_per_host: 7, ..Default::default() };
        let e = Breach::new(Limit::MaxFilesPerHost, "host 'h' would hold 8 files").refuse(&limits, &metrics);
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "host 'h' would hold 8 files; the limit is 7 ([limits] max_files_per_host in the server config file raises it)"
        );
        assert_eq!(metrics.limit_hits("max_files_per_host"), 1);
        let e = Breach::new(Limit::MaxLabelKeyBytes, "x").refuse(&limits, &metrics);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
        let e = Breach::new(Limit::RequestTimeout, "x").refuse(&limits, &metrics);
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("the limit is \"1m\""), "{}", status.message());
    }

    #[test]
    fn slots_are_per_principal_and_come_back_when_dropped() {
        let slots = Arc::new(PrincipalSlots::default());
        let a1 = slots.take("alice", 2).unwrap();
        let _a2 = slots.take("alice", 2).unwrap();
        assert!(slots.take("alice", 2).is_none(), "alice is at her limit");
        let _b = slots.take("bob", 2).expect("bob is not affected");
        drop(a1);
        assert_eq!(slots.held("alice"), 1);
        assert!(slots.take("alice", 2).is_some(), "a closed stream gives its place back");
    }

    #[test]
    fn only_unfinished_rollouts_of_the_actor_count() {
        let r = [
            ("alice", RolloutState::Running as i32),
            ("alice", RolloutState::Paused as i32),
            ("alice", RolloutState::Pending as i32),
            ("alice", RolloutState::Succeeded as i32),
            ("bob", RolloutState::Running as i32),
        ];
        assert_eq!(active_rollouts(r, "alice"), 3);
        assert_eq!(active_rollouts(r, "bob"), 1);
    }
}
