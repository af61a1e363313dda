//! The rows the store keeps and returns, as plain data: no SQL here, so any
//! backend can read and write the same types.
//!
//! Payloads (`state`, `sample`, `payload`, `content`, `body`) are encoded
//! protobuf bytes the store never looks into; only the columns a query filters
//! or orders by are fields of their own.

use std::collections::BTreeMap;

// Hosts and their files.

/// A host as last known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRecord {
    pub host_id: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    /// The agent spool whose sequence numbers `last_seq` counts.
    pub spool_id: String,
    /// Highest snapshot seq of that spool stored.
    pub last_seq: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub dropped_snapshots: u64,
}

/// One version of one watched file (`state` is an encoded `FileState`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileRecord {
    pub host_id: String,
    pub path: String,
    pub seq: u64,
    pub updated_ms: i64,
    pub state: Vec<u8>,
}

/// A write the store could not take however often it was tried (it violated a
/// constraint, say), refused so that the rest of its batch could be stored. Kept so an
/// operator can see what was refused and why; only the newest
/// [`QUARANTINE_KEEP`] are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuarantineRecord {
    /// Assigned by the store (ignored on insert).
    pub id: i64,
    pub at_ms: i64,
    /// The host whose snapshot it was, or empty (a write of the server's own).
    pub host_id: String,
    /// The snapshot's seq in its host's spool, or 0.
    pub seq: u64,
    /// Why the store refused it.
    pub error: String,
    /// What it held (kinds of ops and the paths of files), never the values.
    pub detail: String,
}

/// How many [`QuarantineRecord`]s the store keeps (the oldest go first).
pub const QUARANTINE_KEEP: usize = 1000;

// Resource samples and their rollups.

/// One resource sample (`sample` is an encoded `ResourceSample`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceRecord {
    pub host_id: String,
    pub seq: u64,
    pub sampled_ms: i64,
    pub sample: Vec<u8>,
}

/// Decodes one raw sample blob into its (metric, value) pairs: samples are
/// opaque to the store, so downsampling asks the caller to read them.
pub type Extract = dyn Fn(&[u8]) -> Vec<(String, f64)>;

/// Aggregate of one metric of one host over the bucket starting at `bucket_ms`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RollupRecord {
    pub host_id: String,
    pub metric: String,
    /// Start of the bucket (a multiple of the bucket width, in ms since the epoch).
    pub bucket_ms: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl RollupRecord {
    pub fn mean(&self) -> f64 {
        if self.count == 0 { f64::NAN } else { self.sum / self.count as f64 }
    }
}

// Alerts, their events, silences and notifications.

/// One entry of the event log. Ids are assigned by the caller, strictly
/// increasing (see [`Store::max_event_id`](crate::Store::max_event_id)), so
/// subscribers can resume from one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventRecord {
    pub id: u64,
    pub kind: String,
    pub at_ms: i64,
    pub payload: Vec<u8>,
}

/// The current state of one alert, by fingerprint (`payload` is encoded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertRecord {
    pub fingerprint: String,
    pub updated_ms: i64,
    pub payload: Vec<u8>,
}

/// A silence (`payload` is encoded); it mutes matching alerts from `starts_ms`
/// until `ends_ms`, and is kept after it ends until retention prunes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SilenceRecord {
    pub id: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub updated_ms: i64,
    pub payload: Vec<u8>,
}

/// One notification waiting in (or delivered from) a notifier's outbox.
///
/// The row is written in the same transaction as the event it is about, so a
/// delivery is never lost and never invented. `(notifier, event_id, repeat)` is
/// unique: one event is one notification per notifier (adding it twice is a no-op);
/// `repeat` counts re-notifications of a still-firing alert (0: the event itself).
/// Rows of one `fingerprint` are delivered in id order. Delivered rows are kept
/// (with `delivered_ms`) until pruned: they are the notifier's memory of what it sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRecord {
    /// Assigned by the store (ignored on insert).
    pub id: i64,
    pub notifier: String,
    pub event_id: u64,
    pub repeat: u32,
    /// Ordering key: the alert's fingerprint.
    pub fingerprint: String,
    /// What kind of notification (the caller's vocabulary, e.g. "fired", "repeat").
    pub kind: String,
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub delivered_ms: Option<i64>,
    pub last_error: String,
}

/// One notifier's outbox at a glance (see [`Store::outbox_summary`](crate::Store::outbox_summary)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxSummary {
    /// Rows not delivered yet.
    pub pending: u64,
    /// Highest event id of any row, delivered or not (0 when none).
    pub max_event_id: u64,
}

// Changes: baselines, rollouts and the audit log.

/// One version of a named baseline (`content` is an encoded baseline payload).
/// Versions of a name count from 1; every change (pin, edit, delete) is a new
/// version with who, when and why, and old versions stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BaselineRecord {
    pub name: String,
    pub version: u64,
    /// The host it applies to, or empty when `selector` is used.
    pub host_id: String,
    /// A label selector (`env=production,service=web2img`), or empty.
    pub selector: String,
    pub content: Vec<u8>,
    pub author: String,
    pub reason: String,
    pub created_ms: i64,
    /// This version records the baseline's deletion.
    pub deleted: bool,
}

/// A rollout as stored: the state and times as columns (listing and filtering
/// without decoding), `body` the encoded `driftwatch.v1.Rollout`, opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolloutRecord {
    pub id: String,
    pub state: i32,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub body: Vec<u8>,
}

/// One durable fact about fleet identity: an enrollment token or an enrolled host,
/// keyed by (`kind`, `id`). `body` is the server's encoding, opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityRecord {
    /// `token` or `host`.
    pub kind: String,
    pub id: String,
    pub updated_ms: i64,
    pub body: Vec<u8>,
}

/// One entry of the audit log: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// Assigned by the store on insert (ignored there): strictly increasing, never
    /// reused, also after retention removed every row.
    pub id: u64,
    pub at_ms: i64,
    pub actor: String,
    /// Dotted, e.g. `baseline.pinned`, `rollout.started`.
    pub action: String,
    pub target: String,
    pub host_id: String,
    pub path: String,
    pub before_hash: String,
    pub after_hash: String,
    pub detail: String,
    pub change_id: String,
    /// The hash chain (`driftwatch_proto::audit_chain`): set by the store when it appends
    /// the record (ignored there), read back by [`Store::list_audit`](crate::Store::list_audit).
    pub prev_hash: String,
    pub hash: String,
}

/// Default page of [`Store::list_audit`](crate::Store::list_audit) (a `limit` of 0).
pub const AUDIT_PAGE_DEFAULT: usize = 100;
/// Largest page of [`Store::list_audit`](crate::Store::list_audit); larger limits are capped.
pub const AUDIT_PAGE_MAX: usize = 1000;

/// What [`Store::list_audit`](crate::Store::list_audit) returns; empty strings match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditFilter {
    /// Only ids above this (resume after the last one seen).
    pub after_id: u64,
    /// Only actions starting with this (`rollout.`, `correction`), case-sensitive.
    pub action_prefix: String,
    pub host_id: String,
    pub change_id: String,
    /// Highest ids first; default lowest first.
    pub newest_first: bool,
    /// 0: [`AUDIT_PAGE_DEFAULT`]; at most [`AUDIT_PAGE_MAX`].
    pub limit: usize,
}

impl AuditFilter {
    /// The page size `limit` asks for, defaulted and capped: part of the query's
    /// contract, so every backend pages the same.
    pub(crate) fn page_size(&self) -> usize {
        if self.limit == 0 { AUDIT_PAGE_DEFAULT } else { self.limit.min(AUDIT_PAGE_MAX) }
    }
}

// The store as a whole.

/// Row counts per table (see [`Store::stats`](crate::Store::stats)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub hosts: u64,
    pub files: u64,
    pub file_history: u64,
    pub resources: u64,
    pub resource_rollups: u64,
    pub baselines: u64,
    pub events: u64,
    pub alerts: u64,
    pub silences: u64,
    pub rollouts: u64,
    pub audit_events: u64,
}
