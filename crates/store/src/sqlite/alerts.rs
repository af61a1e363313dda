//! Reads and retention of the rule engine's durable state: the event log
//! (and its id high-water mark), alert states and silences.

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::records::{AlertRecord, EventRecord, SilenceRecord};

impl Store {
    /// The highest event id ever stored (0 when none), even if retention has
    /// pruned it since: new ids continue above it, so ids never repeat.
    pub fn max_event_id(&self) -> Result<u64> {
        let id: Option<i64> = self
            .conn
            .query_row("SELECT MAX(value) FROM counters WHERE name = 'event_id'", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(id.unwrap_or(0) as u64)
    }

    /// Up to `limit` events with id > `after`, in id order.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>> {
        self.query_rows(
            "SELECT id, kind, at_ms, payload FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after as i64, limit as i64],
            |r| {
                Ok(EventRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    at_ms: r.get(2)?,
                    payload: r.get(3)?,
                })
            },
        )
    }

    /// Retention: delete events older than `before_ms`; returns how many. The
    /// event id high-water mark stays, so ids never repeat.
    pub fn prune_events(&mut self, before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms]).map_err(|e| self.err(e))
    }

    /// Every stored alert state.
    pub fn load_alerts(&self) -> Result<Vec<AlertRecord>> {
        self.query_rows("SELECT fingerprint, updated_ms, payload FROM alerts ORDER BY fingerprint", [], |r| {
            Ok(AlertRecord { fingerprint: r.get(0)?, updated_ms: r.get(1)?, payload: r.get(2)? })
        })
    }

    /// Every stored silence (ended ones included until pruned), by id.
    pub fn load_silences(&self) -> Result<Vec<SilenceRecord>> {
        self.query_rows("SELECT id, starts_ms, ends_ms, updated_ms, payload FROM silences ORDER BY id", [], |r| {
            Ok(SilenceRecord {
                id: r.get(0)?,
                starts_ms: r.get(1)?,
                ends_ms: r.get(2)?,
                updated_ms: r.get(3)?,
                payload: r.get(4)?,
            })
        })
    }

    /// Retention: delete silences that ended before `ended_before_ms`; returns how many.
    pub fn prune_silences(&mut self, ended_before_ms: i64) -> Result<usize> {
        self.conn.execute("DELETE FROM silences WHERE ends_ms < ?1", params![ended_before_ms]).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::sqlite::fixtures::silence;
    use crate::{AlertRecord, Batch, EventRecord, Op, ResourceRecord, Store, StoreStats};

    #[test]
    fn events_resume_after_an_id_and_alerts_upsert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.max_event_id().unwrap(), 0);
            let ev = |id: u64, at: i64| {
                Op::Event(EventRecord { id, kind: "alert".into(), at_ms: at, payload: id.to_le_bytes().to_vec() })
            };
            s.write_batch(&Batch {
                ops: vec![
                    ev(1, 10),
                    ev(2, 20),
                    ev(3, 30),
                    Op::Alert(AlertRecord { fingerprint: "f1".into(), updated_ms: 1, payload: b"pending".into() }),
                    Op::Alert(AlertRecord { fingerprint: "f1".into(), updated_ms: 2, payload: b"firing".into() }),
                    Op::Alert(AlertRecord { fingerprint: "f2".into(), updated_ms: 2, payload: b"x".into() }),
                    Op::RemoveAlert { fingerprint: "f2".into() },
                ],
            })
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.max_event_id().unwrap(), 3);
        assert_eq!(s.events_after(1, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.events_after(0, 1).unwrap().len(), 1);
        let alerts = s.load_alerts().unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].payload, b"firing");
        // Retention by time.
        s.write_batch(&Batch {
            ops: vec![Op::Resource(ResourceRecord { host_id: "a".into(), seq: 1, sampled_ms: 5, sample: vec![] })],
        })
        .unwrap();
        assert_eq!(s.prune(6, 25).unwrap(), (1, 2));
        assert_eq!(s.events_after(0, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.max_event_id().unwrap(), 3, "ids never go back");
        s.prune(6, 1000).unwrap();
        assert!(s.events_after(0, 10).unwrap().is_empty());
        assert_eq!(s.max_event_id().unwrap(), 3, "ids never go back, even with every event pruned");
    }

    #[test]
    fn silences_upsert_round_trip_and_prune_by_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    Op::Silence(silence("s2", 100, b"old")),
                    Op::Silence(silence("s1", 50, b"one")),
                    Op::Silence(silence("s2", 300, b"extended")),
                    Op::Silence(silence("s3", 10, b"gone")),
                    Op::RemoveSilence { id: "s3".into() },
                ],
            })
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.load_silences().unwrap(), vec![silence("s1", 50, b"one"), silence("s2", 300, b"extended")]);
        assert_eq!(s.prune_silences(50).unwrap(), 0, "ending exactly at the cutoff is kept");
        assert_eq!(s.prune_silences(200).unwrap(), 1);
        assert_eq!(s.load_silences().unwrap(), vec![silence("s2", 300, b"extended")]);
    }

    #[test]
    fn prune_events_keeps_newer_events_and_the_id_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let ops =
            (1..=4).map(|id| Op::Event(EventRecord { id, kind: "k".into(), at_ms: id as i64 * 10, payload: vec![] }));
        s.write_batch(&Batch { ops: ops.collect() }).unwrap();
        assert_eq!(s.prune_events(30).unwrap(), 2);
        assert_eq!(s.events_after(0, 10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(s.prune_events(1000).unwrap(), 2);
        assert_eq!(s.max_event_id().unwrap(), 4);
        assert_eq!(s.stats().unwrap(), StoreStats::default());
    }
}
