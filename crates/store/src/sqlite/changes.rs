//! Reads of what operators change: versioned baselines, rollouts and fleet
//! identity records (the audit log is in `audit`).

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::records::{BaselineRecord, IdentityRecord, RolloutRecord};

impl Store {
    /// Every identity record of one kind, by id.
    pub fn load_identities(&self, kind: &str) -> Result<Vec<IdentityRecord>> {
        self.query_rows(
            "SELECT kind, id, updated_ms, body FROM identity_records WHERE kind = ?1 ORDER BY id",
            params![kind],
            |r| Ok(IdentityRecord { kind: r.get(0)?, id: r.get(1)?, updated_ms: r.get(2)?, body: r.get(3)? }),
        )
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
        self.query_rows(&sql, p, |r| {
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
        self.query_rows(&sql, rusqlite::params_from_iter(states), rollout_row)
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
}

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord { id: r.get(0)?, state: r.get(1)?, created_ms: r.get(2)?, updated_ms: r.get(3)?, body: r.get(4)? })
}

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::{baseline, rollout};
    use crate::{Batch, Op, RolloutRecord, Store};

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

    #[test]
    fn identity_records_replace_by_kind_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let rec = |kind: &str, id: &str, ms: i64, body: &[u8]| {
            Op::PutIdentity(crate::IdentityRecord {
                kind: kind.into(),
                id: id.into(),
                updated_ms: ms,
                body: body.to_vec(),
            })
        };
        s.write_batch(&Batch {
            ops: vec![
                rec("token", "t1", 1, b"a"),
                rec("host", "t1", 2, b"h"),
                rec("token", "t1", 3, b"b"),
                rec("token", "t0", 4, b"c"),
            ],
        })
        .unwrap();
        let tokens = s.load_identities("token").unwrap();
        assert_eq!(
            tokens.iter().map(|r| (r.id.as_str(), r.body.as_slice())).collect::<Vec<_>>(),
            vec![("t0", &b"c"[..]), ("t1", &b"b"[..])]
        );
        assert_eq!(s.load_identities("host").unwrap().len(), 1);
        assert!(s.load_identities("other").unwrap().is_empty());
    }
}
