//! The write path: [`Store::write_batch`] commits a [`Batch`] in one
//! transaction, and one function per [`Op`] kind applies that op inside it.
//!
//! Ops run in batch order, so a later op sees what an earlier one did (a file
//! added then removed in one batch is gone). The writer runs the same few
//! statements on every batch, so they stay prepared in the connection's cache,
//! and each is taken from there once per batch (see [`Statements`]).

use std::collections::HashMap;

use rusqlite::{CachedStatement, Connection, Params, params};

use super::{Store, sqlite};
use crate::batch::{Batch, Op};
use crate::error::Result;
use crate::records::{
    AlertRecord, AuditRecord, BaselineRecord, EventRecord, FileRecord, HostRecord, IdentityRecord, OutboxRecord,
    QuarantineRecord, ResourceRecord, RolloutRecord, SilenceRecord,
};

impl Store {
    /// Apply every operation in order, in one transaction. On error nothing is applied.
    pub fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        self.write_parts(&[&batch.ops])
    }

    /// [`Store::write_batch`] of the ops of every part, in order, as one batch: a
    /// caller that commits some of its writes together (leaving out one the store
    /// refused) does not copy them into a new batch first.
    pub fn write_parts(&mut self, parts: &[&[Op]]) -> Result<()> {
        let ops = || parts.iter().flat_map(|p| p.iter());
        if parts.iter().all(|p| p.is_empty()) {
            return Ok(());
        }
        let last_host = last_host_ops(ops());
        let Self { conn, path } = self;
        let e = |e| sqlite(path, e);
        let tx = conn.transaction().map_err(e)?;
        let mut st = Statements::new(&tx);
        for (i, op) in ops().enumerate() {
            if let Op::Host(h) = op
                && last_host.get(h.host_id.as_str()) != Some(&i)
            {
                continue;
            }
            apply(&mut st, op).map_err(e)?;
        }
        drop(st);
        tx.commit().map_err(e)
    }
}

/// The index of each host's last `Op::Host` in the batch: a host row is
/// replaced whole, so only its last version in a batch needs writing.
fn last_host_ops<'a>(ops: impl Iterator<Item = &'a Op>) -> HashMap<&'a str, usize> {
    let mut last_host = HashMap::new();
    for (i, op) in ops.enumerate() {
        if let Op::Host(h) = op {
            last_host.insert(h.host_id.as_str(), i);
        }
    }
    last_host
}

/// The statements one batch has run so far, inside its transaction.
///
/// Taking a statement from the connection's cache copies and hashes its text,
/// which costs as much as a small insert; a batch holds many ops of few kinds,
/// so each statement is taken once per batch and reused for every later op.
struct Statements<'c> {
    conn: &'c Connection,
    prepared: Vec<(&'static str, CachedStatement<'c>)>,
}

impl<'c> Statements<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self { conn, prepared: Vec::new() }
    }

    /// Run `sql` with `params` (the row count is not needed by any op).
    fn execute(&mut self, sql: &'static str, params: impl Params) -> rusqlite::Result<()> {
        let i = match self.prepared.iter().position(|(s, _)| *s == sql) {
            Some(i) => i,
            None => {
                self.prepared.push((sql, self.conn.prepare_cached(sql)?));
                self.prepared.len() - 1
            }
        };
        self.prepared[i].1.execute(params)?;
        Ok(())
    }
}

/// Apply one op inside the batch's transaction.
fn apply(st: &mut Statements<'_>, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Host(h) => put_host(st, h),
        Op::File(f) => put_file(st, f),
        Op::RemoveFile { host_id, path } => remove_file(st, host_id, path),
        Op::RemoveHost { host_id } => remove_host(st, host_id),
        Op::ResetFileSeqs { host_id } => reset_file_seqs(st, host_id),
        Op::Baseline(b) => add_baseline(st, b),
        Op::Event(ev) => add_event(st, ev),
        Op::Alert(a) => put_alert(st, a),
        Op::RemoveAlert { fingerprint } => remove_alert(st, fingerprint),
        Op::Resource(r) => add_resource(st, r),
        Op::Silence(si) => put_silence(st, si),
        Op::RemoveSilence { id } => remove_silence(st, id),
        Op::OutboxAdd(o) => outbox_add(st, o),
        Op::OutboxDelivered { id, at_ms } => outbox_delivered(st, *id, *at_ms),
        Op::OutboxRetry { id, attempts, next_attempt_ms, error } => {
            outbox_retry(st, *id, *attempts, *next_attempt_ms, error)
        }
        Op::OutboxRetryNow { notifier, at_ms } => outbox_retry_now(st, notifier, *at_ms),
        Op::OutboxExpire { notifier, created_before_ms } => outbox_expire(st, notifier, *created_before_ms),
        Op::OutboxPrune { notifier, delivered_before_ms } => outbox_prune(st, notifier, *delivered_before_ms),
        Op::PutRollout(r) => put_rollout(st, r),
        Op::Audit(a) => add_audit(st, a),
        Op::PutIdentity(r) => put_identity(st, r),
        Op::Quarantine(q) => quarantine(st, q),
    }
}

fn quarantine(st: &mut Statements<'_>, q: &QuarantineRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO quarantine (at_ms, host_id, seq, error, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![q.at_ms, q.host_id, q.seq as i64, q.error, q.detail],
    )?;
    st.execute(
        "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?1",
        params![crate::QUARANTINE_KEEP as i64],
    )
}

fn put_identity(st: &mut Statements<'_>, r: &IdentityRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO identity_records (kind, id, updated_ms, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, id) DO UPDATE SET updated_ms = ?3, body = ?4",
        params![r.kind, r.id, r.updated_ms, r.body],
    )
}

fn put_host(st: &mut Statements<'_>, h: &HostRecord) -> rusqlite::Result<()> {
    let labels = serde_json::to_string(&h.labels).expect("string map serializes");
    st.execute(
        "INSERT INTO hosts (host_id, labels, agent_version, spool_id, last_seq, first_seen_ms, last_seen_ms, dropped_snapshots)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (host_id) DO UPDATE SET labels = ?2, agent_version = ?3, spool_id = ?4,
            last_seq = ?5, first_seen_ms = ?6, last_seen_ms = ?7, dropped_snapshots = ?8",
        params![
            h.host_id,
            labels,
            h.agent_version,
            h.spool_id,
            h.last_seq as i64,
            h.first_seen_ms,
            h.last_seen_ms,
            h.dropped_snapshots as i64
        ],
    )
}

/// The current version and a history entry, from the same values.
fn put_file(st: &mut Statements<'_>, f: &FileRecord) -> rusqlite::Result<()> {
    let p = params![f.host_id, f.path, f.seq as i64, f.updated_ms, f.state];
    st.execute(
        "INSERT INTO files (host_id, path, seq, updated_ms, state) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (host_id, path) DO UPDATE SET seq = ?3, updated_ms = ?4, state = ?5",
        p,
    )?;
    st.execute("INSERT INTO file_history (host_id, path, seq, updated_ms, state) VALUES (?1, ?2, ?3, ?4, ?5)", p)
}

fn remove_file(st: &mut Statements<'_>, host_id: &str, path: &str) -> rusqlite::Result<()> {
    st.execute("DELETE FROM files WHERE host_id = ?1 AND path = ?2", params![host_id, path])
}

fn remove_host(st: &mut Statements<'_>, host_id: &str) -> rusqlite::Result<()> {
    st.execute("DELETE FROM hosts WHERE host_id = ?1", params![host_id])?;
    st.execute("DELETE FROM files WHERE host_id = ?1", params![host_id])?;
    st.execute("DELETE FROM file_history WHERE host_id = ?1", params![host_id])?;
    st.execute("DELETE FROM resources WHERE host_id = ?1", params![host_id])?;
    st.execute("DELETE FROM resource_rollups WHERE host_id = ?1", params![host_id])?;
    st.execute("DELETE FROM quarantine WHERE host_id = ?1", params![host_id])
}

fn reset_file_seqs(st: &mut Statements<'_>, host_id: &str) -> rusqlite::Result<()> {
    st.execute("UPDATE files SET seq = 0 WHERE host_id = ?1", params![host_id])
}

fn add_resource(st: &mut Statements<'_>, r: &ResourceRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO resources (host_id, seq, sampled_ms, sample) VALUES (?1, ?2, ?3, ?4)",
        params![r.host_id, r.seq as i64, r.sampled_ms, r.sample],
    )
}

/// A plain insert: a version already taken fails the batch (versions are never rewritten).
fn add_baseline(st: &mut Statements<'_>, b: &BaselineRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO baselines (name, version, host_id, selector, content, author, reason, created_ms, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            b.name,
            b.version as i64,
            b.host_id,
            b.selector,
            b.content,
            b.author,
            b.reason,
            b.created_ms,
            b.deleted
        ],
    )
}

/// The event and the id high-water mark, which outlives the event's pruning.
fn add_event(st: &mut Statements<'_>, ev: &EventRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO events (id, kind, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        params![ev.id as i64, ev.kind, ev.at_ms, ev.payload],
    )?;
    st.execute(
        "INSERT INTO counters (name, value) VALUES ('event_id', ?1)
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, ?1)",
        params![ev.id as i64],
    )
}

fn put_alert(st: &mut Statements<'_>, a: &AlertRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO alerts (fingerprint, updated_ms, payload) VALUES (?1, ?2, ?3)
         ON CONFLICT (fingerprint) DO UPDATE SET updated_ms = ?2, payload = ?3",
        params![a.fingerprint, a.updated_ms, a.payload],
    )
}

fn remove_alert(st: &mut Statements<'_>, fingerprint: &str) -> rusqlite::Result<()> {
    st.execute("DELETE FROM alerts WHERE fingerprint = ?1", params![fingerprint])
}

fn put_silence(st: &mut Statements<'_>, si: &SilenceRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO silences (id, starts_ms, ends_ms, updated_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET starts_ms = ?2, ends_ms = ?3, updated_ms = ?4, payload = ?5",
        params![si.id, si.starts_ms, si.ends_ms, si.updated_ms, si.payload],
    )
}

fn remove_silence(st: &mut Statements<'_>, id: &str) -> rusqlite::Result<()> {
    st.execute("DELETE FROM silences WHERE id = ?1", params![id])
}

/// The first add of a (notifier, event_id, repeat) wins: a replayed write is a no-op.
fn outbox_add(st: &mut Statements<'_>, o: &OutboxRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO outbox (notifier, event_id, repeat, fingerprint, kind, payload, attempts,
            next_attempt_ms, created_ms, delivered_ms, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (notifier, event_id, repeat) DO NOTHING",
        params![
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
        ],
    )
}

fn outbox_delivered(st: &mut Statements<'_>, id: i64, at_ms: i64) -> rusqlite::Result<()> {
    st.execute("UPDATE outbox SET delivered_ms = ?2 WHERE id = ?1", params![id, at_ms])
}

/// Only an undelivered row: a late failure report never undoes a delivery.
fn outbox_retry(
    st: &mut Statements<'_>,
    id: i64,
    attempts: u32,
    next_attempt_ms: i64,
    error: &str,
) -> rusqlite::Result<()> {
    st.execute(
        "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
         WHERE id = ?1 AND delivered_ms IS NULL",
        params![id, attempts, next_attempt_ms, error],
    )
}

fn outbox_retry_now(st: &mut Statements<'_>, notifier: &str, at_ms: i64) -> rusqlite::Result<()> {
    st.execute(
        "UPDATE outbox SET next_attempt_ms = ?2
         WHERE notifier = ?1 AND delivered_ms IS NULL AND next_attempt_ms > ?2",
        params![notifier, at_ms],
    )
}

fn outbox_expire(st: &mut Statements<'_>, notifier: &str, created_before_ms: i64) -> rusqlite::Result<()> {
    st.execute(
        "DELETE FROM outbox WHERE notifier = ?1 AND delivered_ms IS NULL AND created_ms < ?2",
        params![notifier, created_before_ms],
    )
}

fn outbox_prune(st: &mut Statements<'_>, notifier: &str, delivered_before_ms: i64) -> rusqlite::Result<()> {
    st.execute("DELETE FROM outbox WHERE notifier = ?1 AND delivered_ms < ?2", params![notifier, delivered_before_ms])
}

fn put_rollout(st: &mut Statements<'_>, r: &RolloutRecord) -> rusqlite::Result<()> {
    st.execute(
        "INSERT INTO rollouts (id, state, created_ms, updated_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET state = ?2, created_ms = ?3, updated_ms = ?4, body = ?5",
        params![r.id, r.state, r.created_ms, r.updated_ms, r.body],
    )
}

/// Appended to the hash chain: the id is left to SQLite (AUTOINCREMENT), the record's
/// own id and hashes are ignored.
fn add_audit(st: &mut Statements<'_>, a: &AuditRecord) -> rusqlite::Result<()> {
    super::audit::append(st.conn, a)
}

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::{file, host};
    use crate::{Batch, Op, ResourceRecord, Store};

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

    #[test]
    fn a_removed_host_leaves_nothing_behind_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let sample =
            |h: &str| Op::Resource(ResourceRecord { host_id: h.into(), seq: 1, sampled_ms: 1, sample: b"r".into() });
        s.write_batch(&Batch {
            ops: vec![
                Op::Host(host("gone", 1)),
                file("gone", "/a", 1, b"a"),
                sample("gone"),
                Op::Host(host("kept", 1)),
                file("kept", "/a", 1, b"a"),
                sample("kept"),
            ],
        })
        .unwrap();
        s.write_batch(&Batch { ops: vec![Op::RemoveHost { host_id: "gone".into() }] }).unwrap();
        let stats = s.stats().unwrap();
        assert_eq!((stats.hosts, stats.files, stats.file_history, stats.resources), (1, 1, 1, 1));
        assert!(s.host("gone").unwrap().is_none());
        assert!(s.file_history("gone", "/a", 10).unwrap().is_empty());
    }

    #[test]
    fn an_empty_batch_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch::default()).unwrap();
        assert!(s.load_hosts().unwrap().is_empty());
    }
}
