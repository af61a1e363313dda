//! driftwatch server storage: SQLite (WAL) as the embedded default.
//!
//! The store is the durable copy of the server's in-memory state. It is
//! synchronous and owned by one writer thread (group commit): callers hand it a
//! [`Batch`] of operations, applied in order in one transaction; when
//! [`Store::write_batch`] returns `Ok`, everything in it is on disk (WAL with
//! `synchronous = FULL`: the commit is fsynced), so acknowledgements may go out.
//!
//! Payloads (file states, resource samples) are stored as opaque encoded
//! protobuf bytes: this crate knows nothing of the wire types (it takes only the
//! audit hash chain's definition from `driftwatch_proto::audit_chain`), and never sees
//! a secret in clear because the agent masked it before it was sent.
//!
//! # Invariants
//!
//! - **Durable means committed.** WAL journal, `synchronous = FULL`: a commit
//!   that returned is fsynced, which is what makes the server's Ack honest.
//! - **One writer.** Every write (each [`Batch`], and retention) runs on the
//!   server's writer thread through one [`Store`]; other connections only read,
//!   and WAL keeps them from blocking the writer.
//! - **All or nothing, in order.** A batch is one transaction; its ops apply in
//!   the order given, and a failing op leaves nothing of the batch behind.
//! - **Failures say whether a retry can help.** [`StoreError::kind`] tells a full
//!   disk, a lock or an I/O error (retry later: the ops are fine) from ops that can
//!   never be stored ([`FailureKind::Data`]); only those may be refused, and a
//!   refusal is itself recorded ([`Op::Quarantine`]).
//! - **Schema by `user_version`.** Migrations run in order at open, each in its
//!   own transaction; a database newer than this build is refused, not guessed at.
//! - **The audit log is a hash chain.** Each record's hash covers its fields and the
//!   hash of the record before it, computed when it is appended (in id order, on the
//!   writer thread); retention removes only the oldest records and leaves an
//!   `audit.pruned` record naming the last removed one's hash.
//!
//! # Layout
//!
//! - `records`: what is stored and returned, and `batch`: the [`Op`]s that
//!   change it. Plain data with no SQL, so a second backend shares them.
//! - `error`: [`StoreError`], the crate's one error type, and [`FailureKind`].
//! - `sqlite`: the SQLite backend, [`Store`]: the connection and pragmas
//!   (`mod.rs`), schema and migrations (`schema`), the batch transaction
//!   (`write`), and reads and retention per domain (`hosts`, `resources`,
//!   `alerts`, `outbox`, `changes`, `audit`, and `quarantine`: refused writes).

mod batch;
mod error;
mod records;
mod sqlite;

pub use batch::{Batch, Op};
pub use error::{FailureKind, Result, StoreError};
pub use records::{
    AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, AlertRecord, AuditFilter, AuditRecord, BaselineRecord, EventRecord, Extract,
    FileRecord, HostRecord, IdentityRecord, OutboxRecord, OutboxSummary, QUARANTINE_KEEP, QuarantineRecord,
    ResourceRecord, RolloutRecord, RollupRecord, SilenceRecord, StoreStats,
};
pub use sqlite::Store;
