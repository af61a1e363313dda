//! Reads of the notifiers' outbox: the delivery queue per notifier, the
//! newest row per alert (repeat bookkeeping after a restart), and counts.
//! Rows are added and updated only through [`Op`](crate::Op)s in a batch.

use std::collections::BTreeMap;

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::records::{OutboxRecord, OutboxSummary};

impl Store {
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
        self.collect_rows(&mut st, p, |r| {
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
        self.query_rows("SELECT notifier, COUNT(*) FROM outbox WHERE delivered_ms IS NULL GROUP BY notifier", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
    }

    /// Undelivered rows of `notifier` created before `created_before_ms` (what
    /// [`Op::OutboxExpire`](crate::Op::OutboxExpire) would drop).
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

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::outbox;
    use crate::{Batch, Op, OutboxRecord, OutboxSummary, Store};

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
}
