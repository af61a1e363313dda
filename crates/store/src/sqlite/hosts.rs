//! Reads of hosts, their current files and every file's history, and the
//! history's retention.

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

    /// Retention: drop the versions of each file beyond its newest `keep` (at least
    /// one is kept), at most `chunk` rows per call; returns how many went (fewer
    /// than `chunk`: none are left).
    pub fn prune_file_history_versions(&mut self, keep: usize, chunk: usize) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM file_history WHERE id IN (
                   SELECT id FROM (
                     SELECT id, ROW_NUMBER() OVER (PARTITION BY host_id, path ORDER BY id DESC) AS newer
                     FROM file_history)
                   WHERE newer > ?1 LIMIT ?2)",
                params![keep.max(1) as i64, chunk.max(1) as i64],
            )
            .map_err(|e| self.err(e))
    }

    /// Retention: drop versions stored before `before_ms`, except each file's newest
    /// (a file unchanged for long keeps the version it has), at most `chunk` rows
    /// per call; returns how many went.
    pub fn prune_file_history_before(&mut self, before_ms: i64, chunk: usize) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM file_history WHERE id IN (
                   SELECT id FROM file_history AS h WHERE updated_ms < ?1
                     AND id < (SELECT MAX(id) FROM file_history WHERE host_id = h.host_id AND path = h.path)
                   LIMIT ?2)",
                params![before_ms, chunk.max(1) as i64],
            )
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

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::file;
    use crate::{Batch, Store};

    fn history(s: &Store, host: &str, path: &str) -> Vec<Vec<u8>> {
        s.file_history(host, path, 100).unwrap().into_iter().map(|f| f.state).collect()
    }

    #[test]
    fn history_keeps_the_newest_versions_of_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let mut ops = Vec::new();
        for seq in 1..=5u64 {
            ops.push(file("h", "/a", seq, format!("a{seq}").as_bytes()));
        }
        ops.push(file("h", "/b", 6, b"b6"));
        s.write_batch(&Batch { ops }).unwrap();
        // In chunks: the first call takes at most two rows, the next the rest.
        assert_eq!(s.prune_file_history_versions(2, 2).unwrap(), 2);
        assert_eq!(s.prune_file_history_versions(2, 2).unwrap(), 1);
        assert_eq!(s.prune_file_history_versions(2, 2).unwrap(), 0);
        assert_eq!(history(&s, "h", "/a"), vec![b"a4".to_vec(), b"a5".to_vec()]);
        assert_eq!(history(&s, "h", "/b"), vec![b"b6".to_vec()]);
        // Zero would keep nothing: the newest version always stays.
        assert_eq!(s.prune_file_history_versions(0, 100).unwrap(), 1);
        assert_eq!(history(&s, "h", "/a"), vec![b"a5".to_vec()]);
    }

    #[test]
    fn history_by_age_keeps_each_files_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        // The fixture stores a version's seq as its time.
        let ops = vec![file("h", "/a", 1, b"a1"), file("h", "/a", 2, b"a2"), file("h", "/b", 3, b"b3")];
        s.write_batch(&Batch { ops }).unwrap();
        s.write_batch(&Batch { ops: vec![file("h", "/a", 10, b"a10")] }).unwrap();
        assert_eq!(s.prune_file_history_before(5, 100).unwrap(), 2, "a1 and a2 are old and not the newest");
        assert_eq!(history(&s, "h", "/a"), vec![b"a10".to_vec()]);
        assert_eq!(history(&s, "h", "/b"), vec![b"b3".to_vec()], "old, but /b's only version");
    }
}
