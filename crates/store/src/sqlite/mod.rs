//! The SQLite backend: [`Store`], one connection to one database file.
//!
//! This module opens the connection (pragmas, then migrations) and holds what
//! spans every table: row counts and the combined retention of samples and
//! events. The rest is split by what it touches: `schema` (DDL and
//! migrations), `write` (the batch transaction), and the reads and retention
//! of each domain in `hosts`, `resources`, `alerts`, `outbox`, `changes`,
//! `audit` (the hash-chained audit log) and `quarantine` (writes refused).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Params, Row, Statement, params};

use crate::error::{Result, StoreError};
use crate::records::StoreStats;

mod alerts;
mod audit;
mod changes;
mod hosts;
mod outbox;
mod quarantine;
mod resources;
mod schema;
mod write;

/// One connection to one database file. Synchronous and not shared between
/// threads: the server opens one for its writer thread and a second for reads,
/// which WAL lets run while the writer commits.
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

    /// Every row `sql` returns, each read by `row`, collected (a `Vec`, a map).
    fn query_rows<T, B: FromIterator<T>>(
        &self,
        sql: &str,
        params: impl Params,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<B> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        self.collect_rows(&mut st, params, row)
    }

    /// [`Store::query_rows`] for a statement the caller prepared (reads that run
    /// often take theirs from the connection's statement cache).
    fn collect_rows<T, B: FromIterator<T>>(
        &self,
        st: &mut Statement<'_>,
        params: impl Params,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<B> {
        let rows = st.query_map(params, row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
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
}

/// Every SQLite error leaves this backend through here, tagged with the database file.
fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::fixtures::{baseline, file, host, silence};
    use crate::{AlertRecord, Batch, EventRecord, Op, ResourceRecord};

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
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("d.db"), "{err}");
        assert!(err.to_lowercase().contains("not a database"), "{err}");
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
}
