//! Reads and retention of what operators change: versioned baselines,
//! rollouts and the audit log.

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::records::{AuditFilter, AuditRecord, BaselineRecord, IdentityRecord, RolloutRecord};

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

    /// Audit events matching `f`, in id order (descending with `newest_first`);
    /// at most [`AUDIT_PAGE_MAX`](crate::AUDIT_PAGE_MAX).
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
        let limit = f.page_size();
        values.push((limit as i64).into());
        let sql = format!(
            "SELECT id, at_ms, actor, action, target, host_id, path, before_hash, after_hash, detail, change_id
             FROM audit_events WHERE {} ORDER BY id {} LIMIT ?",
            clauses.join(" AND "),
            if f.newest_first { "DESC" } else { "ASC" }
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        self.collect_rows(&mut st, rusqlite::params_from_iter(values), |r| {
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
    }

    /// Retention: delete audit events recorded before `before_ms`; returns how many.
    /// Ids are never reused (AUTOINCREMENT keeps the high-water mark).
    pub fn prune_audit(&mut self, before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM audit_events WHERE at_ms < ?1", params![before_ms]).map_err(|e| self.err(e))
    }
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

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::{audit, audit_ids, baseline, rollout};
    use crate::{AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, AuditFilter, Batch, Op, RolloutRecord, Store};

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
