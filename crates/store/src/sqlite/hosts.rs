//! Reads of hosts, their current files and every file's history.

use rusqlite::params;

use super::Store;
use crate::error::{Result, StoreError};
use crate::records::{FileRecord, HostRecord};

impl Store {
    /// Every host, ordered by id.
    pub fn load_hosts(&self) -> Result<Vec<HostRecord>> {
        self.load_hosts_where(None)
    }

    /// The stored host row, if any.
    pub fn host(&self, host_id: &str) -> Result<Option<HostRecord>> {
        Ok(self.load_hosts_where(Some(host_id))?.pop())
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
        self.query_rows("SELECT host_id, path, seq, updated_ms, state FROM files ORDER BY host_id, path", [], file_row)
    }

    /// Every stored version of one file, oldest first (at most `limit`, the newest ones).
    pub fn file_history(&self, host_id: &str, path: &str, limit: usize) -> Result<Vec<FileRecord>> {
        self.query_rows(
            "SELECT host_id, path, seq, updated_ms, state FROM
               (SELECT * FROM file_history WHERE host_id = ?1 AND path = ?2 ORDER BY id DESC LIMIT ?3)
             ORDER BY id",
            params![host_id, path, limit as i64],
            file_row,
        )
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
