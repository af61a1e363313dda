//! The audit log: appending a record to its hash chain (inside the writer's batch
//! transaction), reading it back, retention, and chaining the records a database held
//! before the chain existed (a migration step).
//!
//! The chain's head (the last record's id and hash) is kept in `audit_chain`, so a
//! record appended after retention emptied the table still links to the one before it,
//! and one appended after the newest records were deleted behind the server's back
//! does not link to what is left.

use driftwatch_proto::audit_chain::{AuditFields, PRUNED_ACTION, record_hash};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, sqlite};
use crate::error::Result;
use crate::records::{AuditFilter, AuditRecord};

fn fields(id: u64, a: &AuditRecord) -> AuditFields<'_> {
    AuditFields {
        id,
        at_ms: a.at_ms,
        actor: &a.actor,
        action: &a.action,
        target: &a.target,
        host_id: &a.host_id,
        path: &a.path,
        before_hash: &a.before_hash,
        after_hash: &a.after_hash,
        detail: &a.detail,
        change_id: &a.change_id,
    }
}

/// The hash of the last record appended ("" before the first).
fn head(conn: &Connection) -> rusqlite::Result<String> {
    let mut st = conn.prepare_cached("SELECT hash FROM audit_chain WHERE name = 'head'")?;
    Ok(st.query_row([], |r| r.get(0)).optional()?.unwrap_or_default())
}

fn set_head(conn: &Connection, id: u64, hash: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_chain (name, id, hash) VALUES ('head', ?1, ?2)
         ON CONFLICT (name) DO UPDATE SET id = ?1, hash = ?2",
    )?
    .execute(params![id as i64, hash])?;
    Ok(())
}

/// Append `a` to the chain: SQLite assigns the id (AUTOINCREMENT: the record's own id
/// is ignored), the hash covers it and the head's hash. Runs inside the caller's
/// transaction, so ids and links follow commit order.
pub(super) fn append(conn: &Connection, a: &AuditRecord) -> rusqlite::Result<()> {
    let prev = head(conn)?;
    conn.prepare_cached(
        "INSERT INTO audit_events (at_ms, actor, action, target, host_id, path, before_hash,
            after_hash, detail, change_id, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, '')",
    )?
    .execute(params![
        a.at_ms,
        a.actor,
        a.action,
        a.target,
        a.host_id,
        a.path,
        a.before_hash,
        a.after_hash,
        a.detail,
        a.change_id,
        prev
    ])?;
    let id = conn.last_insert_rowid() as u64;
    let hash = record_hash(&prev, &fields(id, a));
    conn.prepare_cached("UPDATE audit_events SET hash = ?2 WHERE id = ?1")?.execute(params![id as i64, hash])?;
    set_head(conn, id, &hash)
}

/// Migration step: chain the records written before the chain existed, in id order,
/// from the start ("" before the oldest remaining one).
pub(super) fn chain_existing(conn: &Connection) -> rusqlite::Result<()> {
    let records: Vec<AuditRecord> = {
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY id"))?;
        st.query_map([], row)?.collect::<rusqlite::Result<_>>()?
    };
    let mut prev = String::new();
    let mut last = None;
    for a in &records {
        let hash = record_hash(&prev, &fields(a.id, a));
        conn.prepare_cached("UPDATE audit_events SET prev_hash = ?2, hash = ?3 WHERE id = ?1")?.execute(params![
            a.id as i64,
            prev,
            hash
        ])?;
        last = Some(a.id);
        prev = hash;
    }
    if let Some(id) = last {
        set_head(conn, id, &prev)?;
    }
    Ok(())
}

const COLUMNS: &str =
    "id, at_ms, actor, action, target, host_id, path, before_hash, after_hash, detail, change_id, prev_hash, hash";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
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
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

impl Store {
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
            "SELECT {COLUMNS} FROM audit_events WHERE {} ORDER BY id {} LIMIT ?",
            clauses.join(" AND "),
            if f.newest_first { "DESC" } else { "ASC" }
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        self.collect_rows(&mut st, rusqlite::params_from_iter(values), row)
    }

    /// Retention: delete the oldest audit events, up to (not including) the first one
    /// recorded at or after `before_ms`, and append an [`PRUNED_ACTION`] event by `actor`
    /// at `now_ms` whose `before_hash` is the last removed record's hash (the anchor the
    /// oldest remaining record links to). Only a prefix goes: a chain with a hole in
    /// it would not verify. Returns how many were deleted. Ids are never reused
    /// (AUTOINCREMENT keeps the high-water mark).
    pub fn prune_audit(&mut self, before_ms: i64, actor: &str, now_ms: i64) -> Result<usize> {
        let path = self.path.clone();
        let e = |e| sqlite(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, hash FROM audit_events
                 WHERE id < COALESCE((SELECT MIN(id) FROM audit_events WHERE at_ms >= ?1), 9223372036854775807)
                 ORDER BY id DESC LIMIT 1",
                params![before_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e)?;
        let Some((last_id, anchor)) = last else { return Ok(0) };
        let first_id: i64 = tx.query_row("SELECT MIN(id) FROM audit_events", [], |r| r.get(0)).map_err(e)?;
        let n = tx.execute("DELETE FROM audit_events WHERE id <= ?1", params![last_id]).map_err(e)?;
        let note = AuditRecord {
            at_ms: now_ms,
            actor: actor.to_string(),
            action: PRUNED_ACTION.to_string(),
            target: "audit".into(),
            before_hash: anchor,
            detail: format!(
                "retention removed {n} audit event(s), ids {first_id} to {last_id}, recorded before {before_ms} ms \
                 since the epoch; the chain now starts at record {last_id}'s hash (before_hash)"
            ),
            ..Default::default()
        };
        append(&tx, &note).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(n)
    }
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
    use driftwatch_proto::audit_chain::{ChainBreak, ChainRecord, ChainSummary, ChainVerifier};
    use rusqlite::Connection;

    use super::*;
    use crate::sqlite::fixtures::{audit, audit_ids};
    use crate::sqlite::schema::MIGRATIONS;
    use crate::{AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, Batch};

    /// The whole log through the same verifier `driftwatch audit verify` uses.
    fn verify(s: &Store) -> std::result::Result<ChainSummary, ChainBreak> {
        let all = s.list_audit(&AuditFilter { limit: AUDIT_PAGE_MAX, ..Default::default() }).unwrap();
        let mut v = ChainVerifier::new();
        for a in &all {
            v.push(&ChainRecord { fields: fields(a.id, a), prev_hash: &a.prev_hash, hash: &a.hash })?;
        }
        v.finish()
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
    fn every_insert_extends_the_chain_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: vec![audit(10, "a.b", "", ""), audit(20, "a.c", "h", "c-1")] }).unwrap();
        s.write_batch(&Batch { ops: vec![audit(30, "a.d", "", "")] }).unwrap();
        let all = s.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!(all[0].prev_hash, "", "the first record starts the chain");
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        for a in &all {
            assert_eq!(a.hash, record_hash(&a.prev_hash, &fields(a.id, a)), "record {}", a.id);
        }
        let summary = verify(&s).unwrap();
        assert_eq!((summary.records, summary.head), (3, Some((3, all[2].hash.clone()))));
        // A failed batch leaves neither a record nor a moved head behind.
        drop(s);
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TRIGGER no_d BEFORE INSERT ON audit_events WHEN NEW.action = 'x.fail' BEGIN SELECT RAISE(ABORT, 'no'); END;").unwrap();
        drop(c);
        let mut s = Store::open(&path).unwrap();
        assert!(s.write_batch(&Batch { ops: vec![audit(40, "a.e", "", ""), audit(41, "x.fail", "", "")] }).is_err());
        s.write_batch(&Batch { ops: vec![audit(50, "a.f", "", "")] }).unwrap();
        assert_eq!(verify(&s).unwrap().records, 4);
    }

    #[test]
    fn a_deleted_or_altered_row_breaks_the_chain_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: (1..=5).map(|i| audit(i * 10, "a.b", "", "")).collect() }).unwrap();
        s.conn.execute("UPDATE audit_events SET detail = 'nothing happened' WHERE id = 2", []).unwrap();
        assert_eq!(verify(&s).unwrap_err().id(), 2);
        s.conn.execute("DELETE FROM audit_events WHERE id = 2", []).unwrap();
        assert_eq!(verify(&s).unwrap_err(), ChainBreak::Removed { first: 2, last: 2, next: 3 });
        // The newest row deleted: the next record appended does not link to what is left.
        let mut s = {
            drop(s);
            let d2 = dir.path().join("e.db");
            let mut s = Store::open(&d2).unwrap();
            s.write_batch(&Batch { ops: (1..=3).map(|i| audit(i * 10, "a.b", "", "")).collect() }).unwrap();
            s.conn.execute("DELETE FROM audit_events WHERE id = 3", []).unwrap();
            assert!(verify(&s).is_ok(), "a cut-off end alone does not show");
            s
        };
        s.write_batch(&Batch { ops: vec![audit(40, "a.b", "", "")] }).unwrap();
        assert_eq!(verify(&s).unwrap_err(), ChainBreak::Removed { first: 3, last: 3, next: 4 });
    }

    #[test]
    fn retention_removes_a_prefix_anchors_it_and_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: (1..=4).map(|i| audit(i * 10, "a.b", "", "")).collect() }).unwrap();
        let before = s.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!(s.prune_audit(30, "driftwatch", 1_000).unwrap(), 2, "recorded exactly at the cutoff is kept");
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![3, 4, 5]);
        let pruned = s.list_audit(&AuditFilter { after_id: 4, ..Default::default() }).unwrap().remove(0);
        assert_eq!((pruned.action.as_str(), pruned.actor.as_str(), pruned.at_ms), (PRUNED_ACTION, "driftwatch", 1_000));
        assert_eq!(pruned.before_hash, before[1].hash, "the anchor: the last removed record's hash");
        assert!(pruned.detail.contains("2 audit event(s), ids 1 to 2"), "{}", pruned.detail);
        let summary = verify(&s).unwrap();
        assert!(summary.anchored && summary.first_id == 3 && summary.records == 3, "{summary:?}");
        assert_eq!(s.prune_audit(25, "driftwatch", 1_000).unwrap(), 0, "nothing older: no event either");
        // Everything goes: only the retention record is left, chained to the head.
        assert_eq!(s.prune_audit(10_000, "driftwatch", 2_000).unwrap(), 3);
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![6]);
        assert!(verify(&s).unwrap().anchored);
        drop(s);
        // Reopened: new ids continue above the old ones, and the chain goes on.
        let mut s = Store::open(&path).unwrap();
        s.write_batch(&Batch { ops: vec![audit(3000, "a.b", "", "")] }).unwrap();
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![6, 7]);
        assert_eq!(verify(&s).unwrap().records, 2);
    }

    #[test]
    fn retention_keeps_a_record_older_than_the_cutoff_written_after_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        // Stamped when noted, committed later: times are not quite in id order.
        s.write_batch(&Batch {
            ops: vec![audit(10, "a.b", "", ""), audit(50, "a.b", "", ""), audit(20, "a.b", "", "")],
        })
        .unwrap();
        assert_eq!(s.prune_audit(30, "driftwatch", 100).unwrap(), 1);
        assert_eq!(audit_ids(&s, AuditFilter::default()), vec![2, 3, 4]);
        assert!(verify(&s).is_ok());
    }

    #[test]
    fn a_version_6_database_gets_its_records_chained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 6).unwrap();
            // Two records, and one retention already removed before the chain existed.
            for (id, at) in [(3, 30), (4, 40)] {
                c.execute(
                    "INSERT INTO audit_events (id, at_ms, actor, action, target, host_id, path, before_hash,
                        after_hash, detail, change_id) VALUES (?1, ?2, 'bob', 'a.b', 't', '', '', '', '', 'd', '')",
                    params![id, at],
                )
                .unwrap();
            }
        }
        let mut s = Store::open(&path).unwrap();
        let all = s.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!((all[0].prev_hash.as_str(), all[1].prev_hash.as_str()), ("", all[0].hash.as_str()));
        assert_eq!(verify(&s).unwrap().records, 2);
        s.write_batch(&Batch { ops: vec![audit(50, "a.c", "", "")] }).unwrap();
        let all = s.list_audit(&AuditFilter::default()).unwrap();
        assert_eq!((all[2].id, all[2].prev_hash.as_str()), (5, all[1].hash.as_str()));
        assert_eq!(verify(&s).unwrap().records, 3);
    }
}
