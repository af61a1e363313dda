//! The schema: every migration's DDL, in order, and the step that runs the
//! ones a database has not seen yet.
//!
//! `PRAGMA user_version` counts the migrations a database has run. A migration
//! is never edited once released (databases in the field already ran it): a
//! schema change is a new entry at the end, run in its own transaction together
//! with the version bump, so a crash leaves the database at one version or the
//! next, never between.

use super::{Store, sqlite};
use crate::error::{Result, StoreError};

/// Schema migrations, in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 6: fleet identity: enrollment tokens (their hashes, never the secrets) and
    // enrolled hosts (labels, issued certificate serials, revocation), encoded bodies.
    "CREATE TABLE identity_records (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (kind, id)
     ) STRICT;",
    // 7: the audit log's hash chain: each record's predecessor's hash and its own
    // (`driftwatch_proto::audit_chain`), and the head (last id and hash), which outlives
    // retention emptying the table. Existing records are chained by `CHAIN_MIGRATION`'s step.
    "ALTER TABLE audit_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';
     CREATE TABLE audit_chain (
        name TEXT PRIMARY KEY,
        id INTEGER NOT NULL,
        hash TEXT NOT NULL
     ) STRICT, WITHOUT ROWID;",
    // 8: writes refused because they could never be stored (`Op::Quarantine`), newest kept.
    "CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        host_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        error TEXT NOT NULL,
        detail TEXT NOT NULL
     ) STRICT;
     CREATE INDEX quarantine_by_host ON quarantine (host_id);",
];

/// The migration after whose DDL the records already there are chained (in Rust: SQLite
/// has no SHA-256), in the same transaction.
const CHAIN_MIGRATION: usize = 7;

impl Store {
    /// Run every migration above the database's `user_version`; refuse a
    /// database from a newer build rather than guess at its schema.
    pub(super) fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew { path: self.path.clone(), found: version, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(&self.path, e))?;
            if i + 1 == CHAIN_MIGRATION {
                super::audit::chain_existing(&tx).map_err(|e| sqlite(&self.path, e))?;
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(|e| sqlite(&self.path, e))?;
            tx.commit().map_err(|e| sqlite(&self.path, e))?;
            tracing::info!(db = %self.path.display(), version = i + 1, "database schema migrated");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::sqlite::fixtures::{audit, audit_ids, host, outbox, rollout, silence};
    use crate::{AuditFilter, Batch, Op, OutboxSummary};

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
}
