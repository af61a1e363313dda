//! driftwatch server storage: SQLite (WAL) as the embedded default.
//!
//! The store is the durable copy of the server's in-memory state. It is
//! synchronous and owned by one writer thread (group commit): callers hand it a
//! [`Batch`] of operations, applied in order in one transaction; when
//! [`Store::write_batch`] returns `Ok`, everything in it is on disk (WAL with
//! `synchronous = FULL`: the commit is fsynced), so acknowledgements may go out.
//!
//! Payloads (file states, resource samples) are stored as opaque encoded
//! protobuf bytes: this crate knows nothing of the wire types, and never sees a
//! secret in clear because the agent masked it before it was sent.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

mod rollup;

pub use rollup::{Extract, RollupRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: database schema version {found} is newer than this build understands ({supported})")]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("{path}: stored host '{host}' has unreadable labels: {message}")]
    Corrupt { path: PathBuf, host: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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

/// One resource sample (`sample` is an encoded `ResourceSample`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceRecord {
    pub host_id: String,
    pub seq: u64,
    pub sampled_ms: i64,
    pub sample: Vec<u8>,
}

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

/// One entry of the event log. Ids are assigned by the caller, strictly
/// increasing (see [`Store::max_event_id`]), so subscribers can resume from one.
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

/// One notifier's outbox at a glance (see [`Store::outbox_summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxSummary {
    /// Rows not delivered yet.
    pub pending: u64,
    /// Highest event id of any row, delivered or not (0 when none).
    pub max_event_id: u64,
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
}

/// Default page of [`Store::list_audit`] (a `limit` of 0).
pub const AUDIT_PAGE_DEFAULT: usize = 100;
/// Largest page of [`Store::list_audit`]; larger limits are capped.
pub const AUDIT_PAGE_MAX: usize = 1000;

/// What [`Store::list_audit`] returns; empty strings match everything.
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

/// Row counts per table (see [`Store::stats`]).
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

/// One write, applied in order within a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the host row.
    Host(HostRecord),
    /// Make this the file's current version and append it to the file's history.
    File(FileRecord),
    /// The file is no longer watched: drop its current version (history stays).
    RemoveFile { host_id: String, path: String },
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

/// Schema migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: hosts, current files, file history, resource samples.
    "CREATE TABLE hosts (
        host_id TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        spool_id TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        dropped_snapshots INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE files (
        host_id TEXT NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (host_id, path)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE file_history (
        id INTEGER PRIMARY KEY,
        host_id TEXT NOT NULL,
        path TEXT NOT NULL,
        seq INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        state BLOB NOT NULL
     ) STRICT;
     CREATE INDEX file_history_by_file ON file_history (host_id, path, id);
     CREATE TABLE resources (
        id INTEGER PRIMARY KEY,
        host_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sampled_ms INTEGER NOT NULL,
        sample BLOB NOT NULL
     ) STRICT;
     CREATE INDEX resources_by_host_time ON resources (host_id, sampled_ms);",
    // 2: versioned baselines, the event log, alert states.
    "CREATE TABLE baselines (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        host_id TEXT NOT NULL,
        selector TEXT NOT NULL,
        content BLOB NOT NULL,
        author TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        PRIMARY KEY (name, version)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
     ) STRICT;
     CREATE INDEX events_by_time ON events (at_ms);
     -- High-water marks that must survive pruning (the event id).
     CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE alerts (
        fingerprint TEXT PRIMARY KEY,
        updated_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
     ) STRICT, WITHOUT ROWID;",
    // 3: silences, resource rollups (downsampled history), time index for raw-sample retention.
    "CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        starts_ms INTEGER NOT NULL,
        ends_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE resource_rollups (
        host_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        bucket_ms INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        PRIMARY KEY (host_id, metric, bucket_ms)
     ) STRICT, WITHOUT ROWID;
     -- One host over a window, in time order (the primary key orders by metric first).
     CREATE INDEX resource_rollups_by_host_time ON resource_rollups (host_id, bucket_ms, metric);
     -- Downsampling and pruning select raw samples by age across all hosts.
     CREATE INDEX resources_by_time ON resources (sampled_ms);",
    // 4: the notifiers' outbox (durable delivery: written with the event, resumed after a restart).
    "CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        notifier TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        repeat INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        last_error TEXT NOT NULL,
        UNIQUE (notifier, event_id, repeat)
     ) STRICT;
     -- The delivery queue: pending rows of one alert in order.
     CREATE INDEX outbox_pending ON outbox (notifier, fingerprint, id) WHERE delivered_ms IS NULL;
     -- The newest row per alert (repeat bookkeeping after a restart).
     CREATE INDEX outbox_by_alert ON outbox (notifier, fingerprint, id);",
    // 5: rollouts (encoded bodies, state and times as columns) and the audit log.
    "CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        body BLOB NOT NULL
     ) STRICT;
     -- Listing by state, newest first; and newest first without a state filter.
     CREATE INDEX rollouts_by_state ON rollouts (state, created_ms);
     CREATE INDEX rollouts_by_created ON rollouts (created_ms);
     -- AUTOINCREMENT: an id is never handed out twice, even after retention emptied the table.
     CREATE TABLE audit_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        host_id TEXT NOT NULL,
        path TEXT NOT NULL,
        before_hash TEXT NOT NULL,
        after_hash TEXT NOT NULL,
        detail TEXT NOT NULL,
        change_id TEXT NOT NULL
     ) STRICT;
     CREATE INDEX audit_events_by_time ON audit_events (at_ms);
     CREATE INDEX audit_events_by_action ON audit_events (action, id);
     CREATE INDEX audit_events_by_host ON audit_events (host_id, id);
     CREATE INDEX audit_events_by_change ON audit_events (change_id, id);",
];

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io { path: dir.to_path_buf(), message: e.to_string() })?;
        }
        let conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
        let mut store = Self { conn, path: path.to_path_buf() };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite(&self.path, e)
    }

    fn configure(&mut self) -> Result<()> {
        // WAL: readers never block the writer. synchronous=FULL: a returned commit
        // is fsynced, which is what makes an Ack honest.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(|e| self.err(e))?;
        self.conn.set_prepared_statement_cache_capacity(32);
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew { path: self.path.clone(), found: version, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(&self.path, e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(|e| sqlite(&self.path, e))?;
            tx.commit().map_err(|e| sqlite(&self.path, e))?;
            tracing::info!(db = %self.path.display(), version = i + 1, "database schema migrated");
        }
        Ok(())
    }

    /// Apply every operation in order, in one transaction. On error nothing is applied.
    pub fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Only the last version of a host row in a batch needs writing.
        let mut last_host: HashMap<&str, usize> = HashMap::new();
        for (i, op) in batch.ops.iter().enumerate() {
            if let Op::Host(h) = op {
                last_host.insert(h.host_id.as_str(), i);
            }
        }
        let path = self.path.clone();
        let e = |e| sqlite(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut host = tx
                .prepare_cached(
                    "INSERT INTO hosts (host_id, labels, agent_version, spool_id, last_seq, first_seen_ms, last_seen_ms, dropped_snapshots)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (host_id) DO UPDATE SET labels = ?2, agent_version = ?3, spool_id = ?4,
                        last_seq = ?5, first_seen_ms = ?6, last_seen_ms = ?7, dropped_snapshots = ?8",
                )
                .map_err(e)?;
            let mut file = tx
                .prepare_cached(
                    "INSERT INTO files (host_id, path, seq, updated_ms, state) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (host_id, path) DO UPDATE SET seq = ?3, updated_ms = ?4, state = ?5",
                )
                .map_err(e)?;
            let mut history = tx
                .prepare_cached(
                    "INSERT INTO file_history (host_id, path, seq, updated_ms, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(e)?;
            let mut remove = tx.prepare_cached("DELETE FROM files WHERE host_id = ?1 AND path = ?2").map_err(e)?;
            let mut reset = tx.prepare_cached("UPDATE files SET seq = 0 WHERE host_id = ?1").map_err(e)?;
            let mut baseline = tx
                .prepare_cached(
                    "INSERT INTO baselines (name, version, host_id, selector, content, author, reason, created_ms, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(e)?;
            let mut event = tx
                .prepare_cached("INSERT INTO events (id, kind, at_ms, payload) VALUES (?1, ?2, ?3, ?4)")
                .map_err(e)?;
            let mut event_mark = tx
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('event_id', ?1)
                     ON CONFLICT (name) DO UPDATE SET value = MAX(value, ?1)",
                )
                .map_err(e)?;
            let mut alert = tx
                .prepare_cached(
                    "INSERT INTO alerts (fingerprint, updated_ms, payload) VALUES (?1, ?2, ?3)
                     ON CONFLICT (fingerprint) DO UPDATE SET updated_ms = ?2, payload = ?3",
                )
                .map_err(e)?;
            let mut remove_alert = tx.prepare_cached("DELETE FROM alerts WHERE fingerprint = ?1").map_err(e)?;
            let mut resource = tx
                .prepare_cached("INSERT INTO resources (host_id, seq, sampled_ms, sample) VALUES (?1, ?2, ?3, ?4)")
                .map_err(e)?;
            let mut silence = tx
                .prepare_cached(
                    "INSERT INTO silences (id, starts_ms, ends_ms, updated_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET starts_ms = ?2, ends_ms = ?3, updated_ms = ?4, payload = ?5",
                )
                .map_err(e)?;
            let mut remove_silence = tx.prepare_cached("DELETE FROM silences WHERE id = ?1").map_err(e)?;
            let mut outbox_add = tx
                .prepare_cached(
                    "INSERT INTO outbox (notifier, event_id, repeat, fingerprint, kind, payload, attempts,
                        next_attempt_ms, created_ms, delivered_ms, last_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (notifier, event_id, repeat) DO NOTHING",
                )
                .map_err(e)?;
            for (i, op) in batch.ops.iter().enumerate() {
                match op {
                    Op::Host(h) => {
                        if last_host.get(h.host_id.as_str()) != Some(&i) {
                            continue;
                        }
                        let labels = serde_json::to_string(&h.labels).expect("string map serializes");
                        host.execute(params![
                            h.host_id,
                            labels,
                            h.agent_version,
                            h.spool_id,
                            h.last_seq as i64,
                            h.first_seen_ms,
                            h.last_seen_ms,
                            h.dropped_snapshots as i64
                        ])
                        .map_err(e)?;
                    }
                    Op::File(f) => {
                        let p = params![f.host_id, f.path, f.seq as i64, f.updated_ms, f.state];
                        file.execute(p).map_err(e)?;
                        history.execute(p).map_err(e)?;
                    }
                    Op::RemoveFile { host_id, path } => {
                        remove.execute(params![host_id, path]).map_err(e)?;
                    }
                    Op::ResetFileSeqs { host_id } => {
                        reset.execute(params![host_id]).map_err(e)?;
                    }
                    Op::Baseline(b) => {
                        baseline
                            .execute(params![
                                b.name,
                                b.version as i64,
                                b.host_id,
                                b.selector,
                                b.content,
                                b.author,
                                b.reason,
                                b.created_ms,
                                b.deleted
                            ])
                            .map_err(e)?;
                    }
                    Op::Event(ev) => {
                        event.execute(params![ev.id as i64, ev.kind, ev.at_ms, ev.payload]).map_err(e)?;
                        event_mark.execute(params![ev.id as i64]).map_err(e)?;
                    }
                    Op::Alert(a) => {
                        alert.execute(params![a.fingerprint, a.updated_ms, a.payload]).map_err(e)?;
                    }
                    Op::RemoveAlert { fingerprint } => {
                        remove_alert.execute(params![fingerprint]).map_err(e)?;
                    }
                    Op::Resource(r) => {
                        resource.execute(params![r.host_id, r.seq as i64, r.sampled_ms, r.sample]).map_err(e)?;
                    }
                    Op::Silence(si) => {
                        silence
                            .execute(params![si.id, si.starts_ms, si.ends_ms, si.updated_ms, si.payload])
                            .map_err(e)?;
                    }
                    Op::RemoveSilence { id } => {
                        remove_silence.execute(params![id]).map_err(e)?;
                    }
                    Op::OutboxAdd(o) => {
                        outbox_add
                            .execute(params![
                                o.notifier,
                                o.event_id as i64,
                                o.repeat,
                                o.fingerprint,
                                o.kind,
                                o.payload,
                                o.attempts,
                                o.next_attempt_ms,
                                o.created_ms,
                                o.delivered_ms,
                                o.last_error
                            ])
                            .map_err(e)?;
                    }
                    Op::OutboxDelivered { id, at_ms } => {
                        tx.prepare_cached("UPDATE outbox SET delivered_ms = ?2 WHERE id = ?1")
                            .and_then(|mut st| st.execute(params![id, at_ms]))
                            .map_err(e)?;
                    }
                    Op::OutboxRetry { id, attempts, next_attempt_ms, error } => {
                        tx.prepare_cached(
                            "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
                             WHERE id = ?1 AND delivered_ms IS NULL",
                        )
                        .and_then(|mut st| st.execute(params![id, attempts, next_attempt_ms, error]))
                        .map_err(e)?;
                    }
                    Op::OutboxRetryNow { notifier, at_ms } => {
                        tx.prepare_cached(
                            "UPDATE outbox SET next_attempt_ms = ?2
                             WHERE notifier = ?1 AND delivered_ms IS NULL AND next_attempt_ms > ?2",
                        )
                        .and_then(|mut st| st.execute(params![notifier, at_ms]))
                        .map_err(e)?;
                    }
                    Op::OutboxExpire { notifier, created_before_ms } => {
                        tx.prepare_cached(
                            "DELETE FROM outbox WHERE notifier = ?1 AND delivered_ms IS NULL AND created_ms < ?2",
                        )
                        .and_then(|mut st| st.execute(params![notifier, created_before_ms]))
                        .map_err(e)?;
                    }
                    Op::OutboxPrune { notifier, delivered_before_ms } => {
                        tx.prepare_cached("DELETE FROM outbox WHERE notifier = ?1 AND delivered_ms < ?2")
                            .and_then(|mut st| st.execute(params![notifier, delivered_before_ms]))
                            .map_err(e)?;
                    }
                    Op::PutRollout(r) => {
                        tx.prepare_cached(
                            "INSERT INTO rollouts (id, state, created_ms, updated_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (id) DO UPDATE SET state = ?2, created_ms = ?3, updated_ms = ?4, body = ?5",
                        )
                        .and_then(|mut st| st.execute(params![r.id, r.state, r.created_ms, r.updated_ms, r.body]))
                        .map_err(e)?;
                    }
                    Op::Audit(a) => {
                        tx.prepare_cached(
                            "INSERT INTO audit_events (at_ms, actor, action, target, host_id, path, before_hash,
                                after_hash, detail, change_id)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                a.at_ms,
                                a.actor,
                                a.action,
                                a.target,
                                a.host_id,
                                a.path,
                                a.before_hash,
                                a.after_hash,
                                a.detail,
                                a.change_id
                            ])
                        })
                        .map_err(e)?;
                    }
                }
            }
        }
        tx.commit().map_err(e)
    }

    /// Every host, ordered by id.
    pub fn load_hosts(&self) -> Result<Vec<HostRecord>> {
        self.load_hosts_where(None)
    }

    fn load_hosts_where(&self, host_id: Option<&str>) -> Result<Vec<HostRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT host_id, labels, agent_version, spool_id, last_seq, first_seen_ms, last_seen_ms, dropped_snapshots
                 FROM hosts WHERE ?1 IS NULL OR host_id = ?1 ORDER BY host_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([host_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    HostRecord {
                        agent_version: r.get(2)?,
                        spool_id: r.get(3)?,
                        last_seq: r.get::<_, i64>(4)? as u64,
                        first_seen_ms: r.get(5)?,
                        last_seen_ms: r.get(6)?,
                        dropped_snapshots: r.get::<_, i64>(7)? as u64,
                        ..Default::default()
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (host_id, labels, mut rec) = row.map_err(|e| self.err(e))?;
            rec.labels = serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                host: host_id.clone(),
                message: e.to_string(),
            })?;
            rec.host_id = host_id;
            out.push(rec);
        }
        Ok(out)
    }

    /// The current version of every watched file of every host.
    pub fn load_files(&self) -> Result<Vec<FileRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT host_id, path, seq, updated_ms, state FROM files ORDER BY host_id, path")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], file_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every stored version of one file, oldest first (at most `limit`, the newest ones).
    pub fn file_history(&self, host_id: &str, path: &str, limit: usize) -> Result<Vec<FileRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT host_id, path, seq, updated_ms, state FROM
                   (SELECT * FROM file_history WHERE host_id = ?1 AND path = ?2 ORDER BY id DESC LIMIT ?3)
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(params![host_id, path, limit as i64], file_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest resource sample of every host.
    pub fn latest_resources(&self) -> Result<Vec<ResourceRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT r.host_id, r.seq, r.sampled_ms, r.sample FROM resources r
                 JOIN (SELECT host_id, MAX(id) AS id FROM resources GROUP BY host_id) m ON r.id = m.id
                 ORDER BY r.host_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], resource_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One host's samples with `from_ms <= sampled_ms < to_ms`, oldest first.
    pub fn resource_history(&self, host_id: &str, from_ms: i64, to_ms: i64) -> Result<Vec<ResourceRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT host_id, seq, sampled_ms, sample FROM resources
                 WHERE host_id = ?1 AND sampled_ms >= ?2 AND sampled_ms < ?3 ORDER BY sampled_ms, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(params![host_id, from_ms, to_ms], resource_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest version of every baseline name (including deletion markers), by name.
    pub fn latest_baselines(&self) -> Result<Vec<BaselineRecord>> {
        self.baselines_where(
            "WHERE version = (SELECT MAX(version) FROM baselines b2 WHERE b2.name = baselines.name) ORDER BY name",
            params![],
        )
    }

    /// Every version of every baseline, by name then version.
    pub fn load_baselines(&self) -> Result<Vec<BaselineRecord>> {
        self.baselines_where("ORDER BY name, version", params![])
    }

    /// Every version of one baseline, oldest first.
    pub fn baseline_versions(&self, name: &str) -> Result<Vec<BaselineRecord>> {
        self.baselines_where("WHERE name = ?1 ORDER BY version", params![name])
    }

    fn baselines_where(&self, clause: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<BaselineRecord>> {
        let sql = format!(
            "SELECT name, version, host_id, selector, content, author, reason, created_ms, deleted FROM baselines {clause}"
        );
        let mut st = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(p, |r| {
                Ok(BaselineRecord {
                    name: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u64,
                    host_id: r.get(2)?,
                    selector: r.get(3)?,
                    content: r.get(4)?,
                    author: r.get(5)?,
                    reason: r.get(6)?,
                    created_ms: r.get(7)?,
                    deleted: r.get(8)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The highest event id ever stored (0 when none), even if retention has
    /// pruned it since: new ids continue above it, so ids never repeat.
    pub fn max_event_id(&self) -> Result<u64> {
        let id: Option<i64> = self
            .conn
            .query_row("SELECT MAX(value) FROM counters WHERE name = 'event_id'", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(id.unwrap_or(0) as u64)
    }

    /// Up to `limit` events with id > `after`, in id order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, kind, at_ms, payload FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![after as i64, limit as i64], |r| {
                Ok(EventRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    at_ms: r.get(2)?,
                    payload: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every stored alert state.
    pub fn load_alerts(&self) -> Result<Vec<AlertRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT fingerprint, updated_ms, payload FROM alerts ORDER BY fingerprint")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok(AlertRecord { fingerprint: r.get(0)?, updated_ms: r.get(1)?, payload: r.get(2)? }))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Retention: delete resource samples older than `resources_before_ms` and
    /// events older than `events_before_ms`. Returns (samples, events) deleted.
    /// Alerts are pruned by the caller (it knows which are resolved and acknowledged).
    pub fn prune(&mut self, resources_before_ms: i64, events_before_ms: i64) -> Result<(usize, usize)> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let samples = tx
            .execute("DELETE FROM resources WHERE sampled_ms < ?1", params![resources_before_ms])
            .map_err(|e| sqlite(&path, e))?;
        let events = tx
            .execute("DELETE FROM events WHERE at_ms < ?1", params![events_before_ms])
            .map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))?;
        Ok((samples, events))
    }

    /// Retention: delete events older than `before_ms`; returns how many. The
    /// event id high-water mark stays, so ids never repeat.
    pub fn prune_events(&mut self, before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms]).map_err(|e| self.err(e))
    }

    /// Every stored silence (ended ones included until pruned), by id.
    pub fn load_silences(&self) -> Result<Vec<SilenceRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, starts_ms, ends_ms, updated_ms, payload FROM silences ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(SilenceRecord {
                    id: r.get(0)?,
                    starts_ms: r.get(1)?,
                    ends_ms: r.get(2)?,
                    updated_ms: r.get(3)?,
                    payload: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Retention: delete silences that ended before `ended_before_ms`; returns how many.
    pub fn prune_silences(&mut self, ended_before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM silences WHERE ends_ms < ?1", params![ended_before_ms]).map_err(|e| self.err(e))
    }

    /// Row counts per table. Each count walks its table's smallest index, so this
    /// is O(rows): fine for tests and an occasional metrics scrape, not per request.
    pub fn stats(&self) -> Result<StoreStats> {
        let tables = [
            "hosts",
            "files",
            "file_history",
            "resources",
            "resource_rollups",
            "baselines",
            "events",
            "alerts",
            "silences",
            "rollouts",
            "audit_events",
        ];
        let sql = tables.map(|t| format!("(SELECT COUNT(*) FROM {t})")).join(", ");
        self.conn
            .query_row(&format!("SELECT {sql}"), [], |r| {
                let n = |i| r.get::<_, i64>(i).map(|v| v as u64);
                Ok(StoreStats {
                    hosts: n(0)?,
                    files: n(1)?,
                    file_history: n(2)?,
                    resources: n(3)?,
                    resource_rollups: n(4)?,
                    baselines: n(5)?,
                    events: n(6)?,
                    alerts: n(7)?,
                    silences: n(8)?,
                    rollouts: n(9)?,
                    audit_events: n(10)?,
                })
            })
            .map_err(|e| self.err(e))
    }

    /// Rollouts in any of `states` (every state when empty), newest first by
    /// creation; at most `limit` (0: all).
    pub fn load_rollouts(&self, states: &[i32], limit: usize) -> Result<Vec<RolloutRecord>> {
        let filter = if states.is_empty() {
            String::new()
        } else {
            format!("WHERE state IN ({})", vec!["?"; states.len()].join(", "))
        };
        // SQLite: a negative LIMIT means none.
        let limit = if limit == 0 { -1 } else { limit.min(i64::MAX as usize) as i64 };
        let sql = format!(
            "SELECT id, state, created_ms, updated_ms, body FROM rollouts {filter}
             ORDER BY created_ms DESC, id DESC LIMIT {limit}"
        );
        let mut st = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = st.query_map(rusqlite::params_from_iter(states), rollout_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One rollout by id.
    pub fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, state, created_ms, updated_ms, body FROM rollouts WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let mut rows = st.query_map(params![id], rollout_row).map_err(|e| self.err(e))?;
        rows.next().transpose().map_err(|e| self.err(e))
    }

    /// Audit events matching `f`, in id order (descending with `newest_first`);
    /// at most [`AUDIT_PAGE_MAX`].
    pub fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut clauses = vec!["id > ?".to_string()];
        let mut values: Vec<rusqlite::types::Value> = vec![(f.after_id.min(i64::MAX as u64) as i64).into()];
        if !f.action_prefix.is_empty() {
            // GLOB is case-sensitive, and a literal prefix lets SQLite range-scan the action index.
            clauses.push("action GLOB ?".into());
            values.push(format!("{}*", glob_escape(&f.action_prefix)).into());
        }
        if !f.host_id.is_empty() {
            clauses.push("host_id = ?".into());
            values.push(f.host_id.clone().into());
        }
        if !f.change_id.is_empty() {
            clauses.push("change_id = ?".into());
            values.push(f.change_id.clone().into());
        }
        let limit = if f.limit == 0 { AUDIT_PAGE_DEFAULT } else { f.limit.min(AUDIT_PAGE_MAX) };
        values.push((limit as i64).into());
        let sql = format!(
            "SELECT id, at_ms, actor, action, target, host_id, path, before_hash, after_hash, detail, change_id
             FROM audit_events WHERE {} ORDER BY id {} LIMIT ?",
            clauses.join(" AND "),
            if f.newest_first { "DESC" } else { "ASC" }
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(values), |r| {
                Ok(AuditRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    host_id: r.get(5)?,
                    path: r.get(6)?,
                    before_hash: r.get(7)?,
                    after_hash: r.get(8)?,
                    detail: r.get(9)?,
                    change_id: r.get(10)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Retention: delete audit events recorded before `before_ms`; returns how many.
    /// Ids are never reused (AUTOINCREMENT keeps the high-water mark).
    pub fn prune_audit(&mut self, before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM audit_events WHERE at_ms < ?1", params![before_ms]).map_err(|e| self.err(e))
    }

    /// The stored host row, if any.
    pub fn host(&self, host_id: &str) -> Result<Option<HostRecord>> {
        Ok(self.load_hosts_where(Some(host_id))?.pop())
    }

    /// The next notification of each alert waiting in `notifier`'s outbox (its oldest
    /// undelivered row: an alert's notifications go out in order), soonest due first.
    pub fn outbox_heads(&self, notifier: &str, limit: usize) -> Result<Vec<OutboxRecord>> {
        self.outbox_where(
            "WHERE o.notifier = ?1 AND o.delivered_ms IS NULL
               AND o.id = (SELECT MIN(p.id) FROM outbox p
                           WHERE p.notifier = ?1 AND p.fingerprint = o.fingerprint AND p.delivered_ms IS NULL)
             ORDER BY o.next_attempt_ms, o.id LIMIT ?2",
            params![notifier, limit as i64],
        )
    }

    /// The newest row (delivered or not) of each alert in `notifier`'s outbox.
    pub fn outbox_latest(&self, notifier: &str) -> Result<Vec<OutboxRecord>> {
        self.outbox_where(
            "WHERE o.id IN (SELECT MAX(id) FROM outbox WHERE notifier = ?1 GROUP BY fingerprint) ORDER BY o.id",
            params![notifier],
        )
    }

    /// Every row of `notifier`'s outbox, in id order (tests, debugging).
    pub fn outbox_rows(&self, notifier: &str) -> Result<Vec<OutboxRecord>> {
        self.outbox_where("WHERE o.notifier = ?1 ORDER BY o.id", params![notifier])
    }

    fn outbox_where(&self, clause: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<OutboxRecord>> {
        let sql = format!(
            "SELECT o.id, o.notifier, o.event_id, o.repeat, o.fingerprint, o.kind, o.payload, o.attempts,
                    o.next_attempt_ms, o.created_ms, o.delivered_ms, o.last_error
             FROM outbox o {clause}"
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(p, |r| {
                Ok(OutboxRecord {
                    id: r.get(0)?,
                    notifier: r.get(1)?,
                    event_id: r.get::<_, i64>(2)? as u64,
                    repeat: r.get(3)?,
                    fingerprint: r.get(4)?,
                    kind: r.get(5)?,
                    payload: r.get(6)?,
                    attempts: r.get(7)?,
                    next_attempt_ms: r.get(8)?,
                    created_ms: r.get(9)?,
                    delivered_ms: r.get(10)?,
                    last_error: r.get(11)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Pending count and highest event id of one notifier's outbox.
    pub fn outbox_summary(&self, notifier: &str) -> Result<OutboxSummary> {
        self.conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM outbox WHERE notifier = ?1 AND delivered_ms IS NULL),
                        (SELECT COALESCE(MAX(event_id), 0) FROM outbox WHERE notifier = ?1)",
                params![notifier],
                |r| Ok(OutboxSummary { pending: r.get::<_, i64>(0)? as u64, max_event_id: r.get::<_, i64>(1)? as u64 }),
            )
            .map_err(|e| self.err(e))
    }

    /// Undelivered rows per notifier (every notifier with at least one).
    pub fn outbox_pending_counts(&self) -> Result<BTreeMap<String, u64>> {
        let mut st = self
            .conn
            .prepare("SELECT notifier, COUNT(*) FROM outbox WHERE delivered_ms IS NULL GROUP BY notifier")
            .map_err(|e| self.err(e))?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Undelivered rows of `notifier` created before `created_before_ms` (what
    /// [`Op::OutboxExpire`] would drop).
    pub fn outbox_count_expired(&self, notifier: &str, created_before_ms: i64) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE notifier = ?1 AND delivered_ms IS NULL AND created_ms < ?2",
                params![notifier, created_before_ms],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        host_id: r.get(0)?,
        path: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        updated_ms: r.get(3)?,
        state: r.get(4)?,
    })
}

fn resource_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceRecord> {
    Ok(ResourceRecord { host_id: r.get(0)?, seq: r.get::<_, i64>(1)? as u64, sampled_ms: r.get(2)?, sample: r.get(3)? })
}

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord { id: r.get(0)?, state: r.get(1)?, created_ms: r.get(2)?, updated_ms: r.get(3)?, body: r.get(4)? })
}

/// `s` as a GLOB pattern matching itself: the metacharacters `*`, `?` and `[` in brackets.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, seq: u64) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            labels: [("env".to_string(), "production".to_string())].into(),
            agent_version: "0.1.0".into(),
            spool_id: "s1".into(),
            last_seq: seq,
            first_seen_ms: 1,
            last_seen_ms: 2 + seq as i64,
            dropped_snapshots: 0,
        }
    }

    fn file(host: &str, path: &str, seq: u64, state: &[u8]) -> Op {
        Op::File(FileRecord {
            host_id: host.into(),
            path: path.into(),
            seq,
            updated_ms: seq as i64,
            state: state.into(),
        })
    }

    #[test]
    fn batch_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/driftwatch.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    Op::Host(host("a", 1)),
                    file("a", "/etc/x", 1, b"v1"),
                    file("a", "/etc/y", 1, b"y1"),
                    Op::Resource(ResourceRecord { host_id: "a".into(), seq: 1, sampled_ms: 100, sample: b"r1".into() }),
                    Op::Host(host("a", 2)),
                    file("a", "/etc/x", 2, b"v2"),
                    Op::Resource(ResourceRecord { host_id: "a".into(), seq: 2, sampled_ms: 200, sample: b"r2".into() }),
                    Op::Host(host("b", 5)),
                ],
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let hosts = s.load_hosts().unwrap();
        assert_eq!(hosts, vec![host("a", 2), host("b", 5)]);
        let files = s.load_files().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].state, b"v2");
        assert_eq!(files[0].seq, 2);
        let hist = s.file_history("a", "/etc/x", 10).unwrap();
        assert_eq!(hist.iter().map(|f| f.state.clone()).collect::<Vec<_>>(), vec![b"v1".to_vec(), b"v2".to_vec()]);
        assert_eq!(s.file_history("a", "/etc/x", 1).unwrap()[0].state, b"v2");
        let latest = s.latest_resources().unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].sample, b"r2");
        assert_eq!(s.resource_history("a", 0, 150).unwrap().len(), 1);
        assert_eq!(s.resource_history("a", 0, 1000).unwrap().len(), 2);
        assert_eq!(s.host("b").unwrap().unwrap().last_seq, 5);
        assert!(s.host("zzz").unwrap().is_none());
    }

    #[test]
    fn operations_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        // Added then removed in the same batch: gone. Removed then added back: present.
        s.write_batch(&Batch {
            ops: vec![
                file("h", "/a", 1, b"a"),
                Op::RemoveFile { host_id: "h".into(), path: "/a".into() },
                Op::RemoveFile { host_id: "h".into(), path: "/b".into() },
                file("h", "/b", 2, b"b"),
            ],
        })
        .unwrap();
        let paths: Vec<String> = s.load_files().unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(paths, vec!["/b".to_string()]);
        // History keeps what was removed.
        assert_eq!(s.file_history("h", "/a", 10).unwrap().len(), 1);
        s.write_batch(&Batch { ops: vec![Op::ResetFileSeqs { host_id: "h".into() }] }).unwrap();
        assert_eq!(s.load_files().unwrap()[0].seq, 0);
    }

    fn baseline(name: &str, version: u64, deleted: bool) -> Op {
        Op::Baseline(BaselineRecord {
            name: name.into(),
            version,
            host_id: "web-1".into(),
            content: format!("v{version}").into_bytes(),
            author: "ops".into(),
            reason: format!("change {version}"),
            created_ms: version as i64,
            deleted,
            ..Default::default()
        })
    }

    #[test]
    fn baselines_are_versioned_and_old_versions_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch { ops: vec![baseline("tuned", 1, false), baseline("other", 1, false)] }).unwrap();
        s.write_batch(&Batch { ops: vec![baseline("tuned", 2, false), baseline("other", 2, true)] }).unwrap();
        let latest = s.latest_baselines().unwrap();
        assert_eq!(
            latest.iter().map(|b| (b.name.as_str(), b.version, b.deleted)).collect::<Vec<_>>(),
            vec![("other", 2, true), ("tuned", 2, false)]
        );
        let versions = s.baseline_versions("tuned").unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].content, b"v1");
        assert_eq!(versions[0].reason, "change 1");
        // A version is written once: a second writer of the same version fails, and
        // the whole batch with it.
        let err = s.write_batch(&Batch { ops: vec![baseline("new", 1, false), baseline("tuned", 2, false)] });
        assert!(err.is_err());
        assert!(s.baseline_versions("new").unwrap().is_empty(), "a failed batch applies nothing");
    }

    #[test]
    fn events_resume_after_an_id_and_alerts_upsert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.max_event_id().unwrap(), 0);
            let ev = |id: u64, at: i64| {
                Op::Event(EventRecord { id, kind: "alert".into(), at_ms: at, payload: id.to_le_bytes().to_vec() })
            };
            s.write_batch(&Batch {
                ops: vec![
                    ev(1, 10),
                    ev(2, 20),
                    ev(3, 30),
                    Op::Alert(AlertRecord { fingerprint: "f1".into(), updated_ms: 1, payload: b"pending".into() }),
                    Op::Alert(AlertRecord { fingerprint: "f1".into(), updated_ms: 2, payload: b"firing".into() }),
                    Op::Alert(AlertRecord { fingerprint: "f2".into(), updated_ms: 2, payload: b"x".into() }),
                    Op::RemoveAlert { fingerprint: "f2".into() },
                ],
            })
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.max_event_id().unwrap(), 3);
        assert_eq!(s.events_after(1, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.events_after(0, 1).unwrap().len(), 1);
        let alerts = s.load_alerts().unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].payload, b"firing");
        // Retention by time.
        s.write_batch(&Batch {
            ops: vec![Op::Resource(ResourceRecord { host_id: "a".into(), seq: 1, sampled_ms: 5, sample: vec![] })],
        })
        .unwrap();
        assert_eq!(s.prune(6, 25).unwrap(), (1, 2));
        assert_eq!(s.events_after(0, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.max_event_id().unwrap(), 3, "ids never go back");
        s.prune(6, 1000).unwrap();
        assert!(s.events_after(0, 10).unwrap().is_empty());
        assert_eq!(s.max_event_id().unwrap(), 3, "ids never go back, even with every event pruned");
    }

    #[test]
    fn uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db")).unwrap();
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("d.db"), "{err}");
        assert!(err.to_lowercase().contains("not a database"), "{err}");
    }

    fn silence(id: &str, ends_ms: i64, payload: &[u8]) -> SilenceRecord {
        SilenceRecord { id: id.into(), starts_ms: 1, ends_ms, updated_ms: 2, payload: payload.into() }
    }

    #[test]
    fn silences_upsert_round_trip_and_prune_by_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    Op::Silence(silence("s2", 100, b"old")),
                    Op::Silence(silence("s1", 50, b"one")),
                    Op::Silence(silence("s2", 300, b"extended")),
                    Op::Silence(silence("s3", 10, b"gone")),
                    Op::RemoveSilence { id: "s3".into() },
                ],
            })
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load_silences().unwrap(), vec![silence("s1", 50, b"one"), silence("s2", 300, b"extended")]);
        assert_eq!(s.prune_silences(50).unwrap(), 0, "ending exactly at the cutoff is kept");
        assert_eq!(s.prune_silences(200).unwrap(), 1);
        assert_eq!(s.load_silences().unwrap(), vec![silence("s2", 300, b"extended")]);
    }

    #[test]
    fn prune_events_keeps_newer_events_and_the_id_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let ops =
            (1..=4).map(|id| Op::Event(EventRecord { id, kind: "k".into(), at_ms: id as i64 * 10, payload: vec![] }));
        s.write_batch(&Batch { ops: ops.collect() }).unwrap();
        assert_eq!(s.prune_events(30).unwrap(), 2);
        assert_eq!(s.events_after(0, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(s.prune_events(1000).unwrap(), 2);
        assert_eq!(s.max_event_id().unwrap(), 4);
        assert_eq!(s.stats().unwrap(), StoreStats::default());
    }

    #[test]
    fn stats_count_rows_per_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch {
            ops: vec![
                Op::Host(host("a", 1)),
                file("a", "/x", 1, b"1"),
                file("a", "/x", 2, b"2"),
                Op::Resource(ResourceRecord { host_id: "a".into(), seq: 1, sampled_ms: 1, sample: vec![] }),
                baseline("b", 1, false),
                Op::Event(EventRecord { id: 1, ..Default::default() }),
                Op::Alert(AlertRecord { fingerprint: "f".into(), ..Default::default() }),
                Op::Silence(silence("s", 1, b"")),
            ],
        })
        .unwrap();
        assert_eq!(
            s.stats().unwrap(),
            StoreStats {
                hosts: 1,
                files: 1,
                file_history: 2,
                resources: 1,
                resource_rollups: 0,
                baselines: 1,
                events: 1,
                alerts: 1,
                silences: 1,
                rollouts: 0,
                audit_events: 0,
            }
        );
    }

    #[test]
    fn a_version_2_database_upgrades_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            // The schema as a build with two migrations left it, with data in it.
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute_batch(
                "INSERT INTO hosts VALUES ('a', '{\"env\":\"production\"}', '0.1.0', 's1', 1, 1, 3, 0);
                 INSERT INTO resources (host_id, seq, sampled_ms, sample) VALUES ('a', 1, 100, x'0102');
                 INSERT INTO events VALUES (7, 'alert', 5, x'');
                 INSERT INTO counters VALUES ('event_id', 7);
                 INSERT INTO alerts VALUES ('f1', 1, x'aa');",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let version: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(s.load_hosts().unwrap(), vec![host("a", 1)]);
        assert_eq!(s.resource_history("a", 0, 1000).unwrap()[0].sample, vec![1, 2]);
        assert_eq!(s.max_event_id().unwrap(), 7);
        assert_eq!(s.load_alerts().unwrap()[0].payload, vec![0xaa]);
        // The new tables work on the upgraded database.
        s.write_batch(&Batch { ops: vec![Op::Silence(silence("s", 9, b"p"))] }).unwrap();
        assert_eq!(s.load_silences().unwrap().len(), 1);
        assert_eq!(s.downsample_resources(1000, 300_000, 10, &|b| vec![("m".into(), b.len() as f64)]).unwrap(), 1);
        assert_eq!(s.resource_rollups("a", 0, 1000).unwrap()[0].sum, 2.0);
    }

    fn outbox(notifier: &str, event_id: u64, repeat: u32, fp: &str, next_ms: i64) -> Op {
        Op::OutboxAdd(OutboxRecord {
            notifier: notifier.into(),
            event_id,
            repeat,
            fingerprint: fp.into(),
            kind: if repeat == 0 { "fired".into() } else { "repeat".into() },
            payload: format!("{event_id}/{repeat}").into_bytes(),
            next_attempt_ms: next_ms,
            created_ms: 100 + event_id as i64,
            ..Default::default()
        })
    }

    fn ids(rows: &[OutboxRecord]) -> Vec<(u64, u32)> {
        rows.iter().map(|r| (r.event_id, r.repeat)).collect()
    }

    #[test]
    fn outbox_adds_once_and_hands_out_each_alerts_oldest_row_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    outbox("hook", 1, 0, "a", 10),
                    outbox("hook", 2, 0, "b", 5),
                    outbox("hook", 3, 0, "a", 0),
                    outbox("am", 1, 0, "a", 0),
                    // The same event again (a replayed write): still one notification.
                    outbox("hook", 1, 0, "a", 0),
                ],
            })
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(ids(&s.outbox_rows("hook").unwrap()), vec![(1, 0), (2, 0), (3, 0)]);
        assert_eq!(s.outbox_rows("hook").unwrap()[0].next_attempt_ms, 10, "the first add wins");
        // Alert a's second event waits behind its first, though it is due sooner.
        assert_eq!(ids(&s.outbox_heads("hook", 10).unwrap()), vec![(2, 0), (1, 0)]);
        assert_eq!(ids(&s.outbox_heads("hook", 1).unwrap()), vec![(2, 0)]);
        assert_eq!(s.outbox_summary("hook").unwrap(), OutboxSummary { pending: 3, max_event_id: 3 });
        assert_eq!(s.outbox_pending_counts().unwrap(), [("am".to_string(), 1), ("hook".to_string(), 3)].into());

        let first = s.outbox_rows("hook").unwrap()[0].id;
        s.write_batch(&Batch {
            ops: vec![Op::OutboxRetry { id: first, attempts: 1, next_attempt_ms: 50, error: "HTTP 503".into() }],
        })
        .unwrap();
        let row = &s.outbox_rows("hook").unwrap()[0];
        assert_eq!((row.attempts, row.next_attempt_ms, row.last_error.as_str()), (1, 50, "HTTP 503"));
        s.write_batch(&Batch { ops: vec![Op::OutboxRetryNow { notifier: "hook".into(), at_ms: 7 }] }).unwrap();
        let next: Vec<i64> = s.outbox_rows("hook").unwrap().iter().map(|r| r.next_attempt_ms).collect();
        assert_eq!(next, vec![7, 5, 0], "only later rows move up");

        s.write_batch(&Batch { ops: vec![Op::OutboxDelivered { id: first, at_ms: 60 }] }).unwrap();
        assert_eq!(ids(&s.outbox_heads("hook", 10).unwrap()), vec![(3, 0), (2, 0)], "a's next row is up");
        assert_eq!(s.outbox_summary("hook").unwrap().pending, 2);
        // A retry of a delivered row changes nothing.
        s.write_batch(&Batch {
            ops: vec![Op::OutboxRetry { id: first, attempts: 9, next_attempt_ms: 0, error: "late".into() }],
        })
        .unwrap();
        assert_eq!(s.outbox_rows("hook").unwrap()[0].attempts, 1);
        assert_eq!(s.outbox_rows("hook").unwrap()[0].delivered_ms, Some(60));
    }

    #[test]
    fn outbox_latest_row_per_alert_expiry_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch {
            ops: vec![
                outbox("hook", 1, 0, "a", 0),
                outbox("hook", 1, 1, "a", 0),
                outbox("hook", 2, 0, "b", 0),
                outbox("other", 9, 0, "a", 0),
            ],
        })
        .unwrap();
        assert_eq!(ids(&s.outbox_latest("hook").unwrap()), vec![(1, 1), (2, 0)]);
        let rows = s.outbox_rows("hook").unwrap();
        s.write_batch(&Batch { ops: vec![Op::OutboxDelivered { id: rows[0].id, at_ms: 500 }] }).unwrap();
        // created_ms is 100 + event id: rows of event 1 are older than 102.
        assert_eq!(s.outbox_count_expired("hook", 102).unwrap(), 1, "delivered rows never expire");
        s.write_batch(&Batch { ops: vec![Op::OutboxExpire { notifier: "hook".into(), created_before_ms: 102 }] })
            .unwrap();
        assert_eq!(ids(&s.outbox_rows("hook").unwrap()), vec![(1, 0), (2, 0)]);
        s.write_batch(&Batch { ops: vec![Op::OutboxPrune { notifier: "hook".into(), delivered_before_ms: 500 }] })
            .unwrap();
        assert_eq!(s.outbox_rows("hook").unwrap().len(), 2, "delivered exactly at the cutoff is kept");
        s.write_batch(&Batch { ops: vec![Op::OutboxPrune { notifier: "hook".into(), delivered_before_ms: 501 }] })
            .unwrap();
        assert_eq!(ids(&s.outbox_rows("hook").unwrap()), vec![(2, 0)], "pending rows are never pruned");
        assert_eq!(s.outbox_rows("other").unwrap().len(), 1, "other notifiers untouched");
    }

    #[test]
    fn a_version_3_database_gets_an_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 3).unwrap();
            c.execute_batch("INSERT INTO silences VALUES ('s', 1, 2, 3, x'00');").unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load_silences().unwrap().len(), 1);
        s.write_batch(&Batch { ops: vec![outbox("hook", 1, 0, "a", 0)] }).unwrap();
        assert_eq!(s.outbox_summary("hook").unwrap(), OutboxSummary { pending: 1, max_event_id: 1 });
    }

    fn rollout(id: &str, state: i32, created_ms: i64, body: &[u8]) -> RolloutRecord {
        RolloutRecord { id: id.into(), state, created_ms, updated_ms: created_ms, body: body.into() }
    }

    #[test]
    fn rollouts_upsert_and_list_newest_first_by_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    Op::PutRollout(rollout("r1", 1, 10, b"pending")),
                    Op::PutRollout(rollout("r2", 2, 20, b"running")),
                    Op::PutRollout(rollout("r3", 4, 30, b"succeeded")),
                    // The same rollout again: replaced, not added.
                    Op::PutRollout(RolloutRecord { updated_ms: 40, ..rollout("r1", 2, 10, b"running now") }),
                ],
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let ids = |v: Vec<RolloutRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(s.load_rollouts(&[], 0).unwrap()), vec!["r3", "r2", "r1"]);
        assert_eq!(ids(s.load_rollouts(&[], 2).unwrap()), vec!["r3", "r2"]);
        assert_eq!(ids(s.load_rollouts(&[2], 0).unwrap()), vec!["r2", "r1"]);
        assert_eq!(ids(s.load_rollouts(&[1, 4], 0).unwrap()), vec!["r3"]);
        assert!(s.load_rollouts(&[7], 0).unwrap().is_empty());
        let r1 = s.get_rollout("r1").unwrap().unwrap();
        assert_eq!(r1, RolloutRecord { updated_ms: 40, ..rollout("r1", 2, 10, b"running now") });
        assert!(s.get_rollout("nope").unwrap().is_none());
        assert_eq!(s.stats().unwrap().rollouts, 3);
    }

    fn audit(at_ms: i64, action: &str, host: &str, change: &str) -> Op {
        Op::Audit(AuditRecord {
            id: 999, // ignored: the store assigns ids
            at_ms,
            actor: "alice".into(),
            action: action.into(),
            target: format!("t-{at_ms}"),
            host_id: host.into(),
            path: "/etc/app.env".into(),
            before_hash: "b".into(),
            after_hash: "a".into(),
            detail: "d".into(),
            change_id: change.into(),
        })
    }

    fn audit_ids(s: &Store, f: AuditFilter) -> Vec<u64> {
        s.list_audit(&f).unwrap().into_iter().map(|a| a.id).collect()
    }

    #[test]
    fn audit_ids_increase_and_filters_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    audit(10, "baseline.pinned", "", ""),
                    audit(20, "rollout.started", "", "ro-1"),
                    audit(30, "rollout.host_applied", "web-1", "ro-1"),
                    audit(40, "rollout.host_applied", "web-2", "ro-1"),
                    audit(50, "correction.applied", "web-1", "c-1"),
                ],
            })
            .unwrap();
            s.write_batch(&Batch { ops: vec![audit(60, "rollouts_x", "", "")] }).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let all = s.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(all[2].action, "rollout.host_applied");
        assert_eq!((all[2].host_id.as_str(), all[2].change_id.as_str(), all[2].at_ms), ("web-1", "ro-1", 30));
        assert_eq!((all[2].actor.as_str(), all[2].target.as_str()), ("alice", "t-30"));
        let f = |prefix: &str| AuditFilter { action_prefix: prefix.into(), ..Default::default() };
        assert_eq!(audit_ids(&s, f("rollout.")), vec![2, 3, 4], "the dot is literal: rollouts_x is not in");
        assert_eq!(audit_ids(&s, f("rollout")), vec![2, 3, 4, 6]);
        assert_eq!(audit_ids(&s, f("Rollout.")), Vec::<u64>::new(), "case-sensitive");
        assert_eq!(audit_ids(&s, f("rollout.*")), Vec::<u64>::new(), "glob characters are literal");
        assert_eq!(audit_ids(&s, f("rollout.host_applied")), vec![3, 4]);
        let host = AuditFilter { host_id: "web-1".into(), ..Default::default() };
        assert_eq!(audit_ids(&s, host.clone()), vec![3, 5]);
        let change = AuditFilter { change_id: "ro-1".into(), ..Default::default() };
        assert_eq!(audit_ids(&s, change.clone()), vec![2, 3, 4]);
        assert_eq!(audit_ids(&s, AuditFilter { action_prefix: "rollout.".into(), ..host.clone() }), vec![3]);
        // Resume after an id, in either order; limits.
        assert_eq!(audit_ids(&s, AuditFilter { after_id: 3, ..Default::default() }), vec![4, 5, 6]);
        assert_eq!(audit_ids(&s, AuditFilter { after_id: 3, limit: 2, ..Default::default() }), vec![4, 5]);
        assert_eq!(audit_ids(&s, AuditFilter { newest_first: true, limit: 2, ..Default::default() }), vec![6, 5]);
        assert_eq!(audit_ids(&s, AuditFilter { newest_first: true, after_id: 4, ..Default::default() }), vec![6, 5]);
        assert_eq!(audit_ids(&s, AuditFilter { newest_first: true, ..change }), vec![4, 3, 2]);
        assert_eq!(audit_ids(&s, AuditFilter { after_id: u64::MAX, ..Default::default() }), Vec::<u64>::new());
    }

    #[test]
    fn audit_pages_default_to_100_and_cap_at_1000() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch { ops: (0..1200).map(|i| audit(i, "rules.reloaded", "", "")).collect() }).unwrap();
        assert_eq!(s.list_audit(&AuditFilter::default()).unwrap().len(), AUDIT_PAGE_DEFAULT);
        assert_eq!(s.list_audit(&AuditFilter { limit: 5000, ..Default::default() }).unwrap().len(), AUDIT_PAGE_MAX);
        assert_eq!(s.list_audit(&AuditFilter { limit: 1000, ..Default::default() }).unwrap().len(), 1000);
        assert_eq!(s.list_audit(&AuditFilter { limit: 7, ..Default::default() }).unwrap().len(), 7);
        let last = s.list_audit(&AuditFilter { after_id: 1000, limit: 5000, ..Default::default() }).unwrap();
        assert_eq!((last.len(), last[0].id, last[199].id), (200, 1001, 1200));
    }

    #[test]
    fn audit_prune_by_age_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: (1..=4).map(|i| audit(i * 10, "a.b", "", "")).collect() }).unwrap();
        assert_eq!(s.prune_audit(30).unwrap(), 2, "recorded exactly at the cutoff is kept");
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![3, 4]);
        assert_eq!(s.prune_audit(1000).unwrap(), 2);
        assert_eq!(s.stats().unwrap().audit_events, 0);
        drop(s);
        // Emptied by retention, then reopened: new ids continue above the old ones.
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: vec![audit(2000, "a.b", "", "")] }).unwrap();
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![5]);
    }

    #[test]
    fn a_version_4_database_gets_rollouts_and_an_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute_batch("INSERT INTO silences VALUES ('s', 1, 2, 3, x'00');").unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load_silences().unwrap().len(), 1);
        s.write_batch(&Batch {
            ops: vec![Op::PutRollout(rollout("r", 2, 5, b"x")), audit(1, "rules.reloaded", "", "")],
        })
        .unwrap();
        assert_eq!(s.load_rollouts(&[2], 10).unwrap().len(), 1);
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![1]);
    }

    #[test]
    fn an_empty_batch_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch::default()).unwrap();
        assert!(s.load_hosts().unwrap().is_empty());
    }
}
