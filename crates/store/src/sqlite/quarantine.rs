//! Writes the store refused ([`Op::Quarantine`](crate::Op::Quarantine) records them):
//! reading them back.

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::records::QuarantineRecord;

impl Store {
    /// The newest `limit` refused writes, oldest first.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<QuarantineRecord>> {
        self.query_rows(
            "SELECT id, at_ms, host_id, seq, error, detail FROM
               (SELECT * FROM quarantine ORDER BY id DESC LIMIT ?1)
             ORDER BY id",
            params![limit as i64],
            |r| {
                Ok(QuarantineRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    host_id: r.get(2)?,
                    seq: r.get::<_, i64>(3)? as u64,
                    error: r.get(4)?,
                    detail: r.get(5)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::{baseline, host};
    use crate::{FailureKind, Op, QUARANTINE_KEEP, QuarantineRecord, Store};

    fn record(seq: u64) -> Op {
        Op::Quarantine(QuarantineRecord {
            host_id: "web-1".into(),
            seq,
            error: "UNIQUE constraint failed".into(),
            detail: "1 file".into(),
            ..Default::default()
        })
    }

    #[test]
    fn refused_writes_are_kept_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let ops: Vec<Op> = (1..=QUARANTINE_KEEP as u64 + 5).map(record).collect();
        s.write_parts(&[&ops]).unwrap();
        let all = s.quarantined(usize::MAX >> 1).unwrap();
        assert_eq!(all.len(), QUARANTINE_KEEP);
        assert_eq!(all.first().map(|r| r.seq), Some(6));
        assert_eq!(all.last().map(|r| r.seq), Some(QUARANTINE_KEEP as u64 + 5));
        let newest = s.quarantined(2).unwrap();
        assert_eq!(
            newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![QUARANTINE_KEEP as u64 + 4, QUARANTINE_KEEP as u64 + 5]
        );
        // A host that expires takes its refused writes with it.
        s.write_parts(&[&[Op::RemoveHost { host_id: "web-1".into() }]]).unwrap();
        assert!(s.quarantined(10).unwrap().is_empty());
    }

    #[test]
    fn ops_that_can_never_be_stored_fail_as_data_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let good = [Op::Host(host("a", 1))];
        let bad = [baseline("b", 1, false), baseline("b", 1, false)];
        let e = s.write_parts(&[&good, &bad]).unwrap_err();
        assert_eq!(e.kind(), FailureKind::Data, "{e}");
        assert!(s.load_hosts().unwrap().is_empty(), "all or nothing");
        s.write_parts(&[&good, &[], &bad[..1]]).unwrap();
        assert_eq!(s.load_hosts().unwrap().len(), 1);
    }

    #[test]
    fn a_database_that_cannot_grow_fails_as_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let pages: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        s.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let big: Vec<Op> =
            (0..64).map(|i| crate::sqlite::fixtures::file("a", &format!("/f{i}"), 1, &[7; 4096])).collect();
        let e = s.write_parts(&[&big]).unwrap_err();
        assert_eq!(e.kind(), FailureKind::DiskFull, "{e}");
        assert!(e.kind().transient());
        assert_eq!(e.reason(), "database or disk is full");
        // Room again: the same write goes through.
        s.conn.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        s.write_parts(&[&big]).unwrap();
        assert_eq!(s.load_files().unwrap().len(), 64);
    }
}
