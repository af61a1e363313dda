//! The write vocabulary: [`Op`], one change to the store, and [`Batch`], the
//! ordered ops committed together.
//!
//! The server's writer thread gathers ops from many callers into one batch per
//! transaction (group commit); a backend applies them in order, all or none.

use crate::records::{
    AlertRecord, AuditRecord, BaselineRecord, EventRecord, FileRecord, HostRecord, IdentityRecord, OutboxRecord,
    QuarantineRecord, ResourceRecord, RolloutRecord, SilenceRecord,
};

/// One write, applied in order within a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the host row.
    Host(HostRecord),
    /// Make this the file's current version and append it to the file's history.
    File(FileRecord),
    /// The file is no longer watched: drop its current version (history stays).
    RemoveFile { host_id: String, path: String },
    /// Forget a host entirely (it expired): its row, current files, file history,
    /// resource samples and rollups.
    RemoveHost { host_id: String },
    /// Append a resource sample.
    Resource(ResourceRecord),
    /// The host's agent started a new spool (sequence numbers restart): every
    /// current file's seq becomes 0, older than anything the new spool sends.
    ResetFileSeqs { host_id: String },
    /// Append a baseline version (its `version` must be the next for its name).
    Baseline(BaselineRecord),
    /// Append an event.
    Event(EventRecord),
    /// Insert or replace an alert's current state.
    Alert(AlertRecord),
    /// Forget an alert (pruned after retention).
    RemoveAlert { fingerprint: String },
    /// Insert or replace a silence (by id).
    Silence(SilenceRecord),
    /// Delete a silence now, without waiting for retention.
    RemoveSilence { id: String },
    /// Queue a notification; a row with the same (notifier, event_id, repeat) wins.
    OutboxAdd(OutboxRecord),
    /// The notification was delivered.
    OutboxDelivered { id: i64, at_ms: i64 },
    /// A delivery attempt failed: count it, say why, and try again at `next_attempt_ms`.
    OutboxRetry { id: i64, attempts: u32, next_attempt_ms: i64, error: String },
    /// Every pending row of a notifier is due at `at_ms` at the latest (its endpoint recovered).
    OutboxRetryNow { notifier: String, at_ms: i64 },
    /// Drop a notifier's undelivered rows created before `created_before_ms` (its age limit).
    OutboxExpire { notifier: String, created_before_ms: i64 },
    /// Forget a notifier's rows delivered before `delivered_before_ms`.
    OutboxPrune { notifier: String, delivered_before_ms: i64 },
    /// Insert or replace a rollout (by id).
    PutRollout(RolloutRecord),
    /// Append an audit event (its id is assigned by the store).
    Audit(AuditRecord),
    /// Insert or replace an identity record (by kind and id).
    PutIdentity(IdentityRecord),
    /// Record a write that was refused (its id is assigned by the store); the oldest
    /// beyond [`QUARANTINE_KEEP`](crate::QUARANTINE_KEEP) go.
    Quarantine(QuarantineRecord),
}

impl Op {
    /// The op's name, for logs and for saying what a refused write held.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Host(_) => "host",
            Op::File(_) => "file",
            Op::RemoveFile { .. } => "remove_file",
            Op::RemoveHost { .. } => "remove_host",
            Op::Resource(_) => "resource",
            Op::ResetFileSeqs { .. } => "reset_file_seqs",
            Op::Baseline(_) => "baseline",
            Op::Event(_) => "event",
            Op::Alert(_) => "alert",
            Op::RemoveAlert { .. } => "remove_alert",
            Op::Silence(_) => "silence",
            Op::RemoveSilence { .. } => "remove_silence",
            Op::OutboxAdd(_) => "outbox_add",
            Op::OutboxDelivered { .. } => "outbox_delivered",
            Op::OutboxRetry { .. } => "outbox_retry",
            Op::OutboxRetryNow { .. } => "outbox_retry_now",
            Op::OutboxExpire { .. } => "outbox_expire",
            Op::OutboxPrune { .. } => "outbox_prune",
            Op::PutRollout(_) => "rollout",
            Op::Audit(_) => "audit",
            Op::PutIdentity(_) => "identity",
            Op::Quarantine(_) => "quarantine",
        }
    }
}

/// Operations committed together in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
