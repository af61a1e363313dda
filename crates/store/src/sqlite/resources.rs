//! Resource samples: reads of raw samples, and their downsampling into
//! per-bucket rollups.
//!
//! Raw samples are opaque to the store, so the caller supplies the decoder
//! (`extract`: blob -> (metric, value) pairs). Each chunk is rolled up and its
//! raw rows deleted in the same transaction: a sample is counted exactly once,
//! however often downsampling runs or wherever it is interrupted.

use std::collections::HashMap;

use rusqlite::{TransactionBehavior, params};

use super::{Store, sqlite};
use crate::error::Result;
use crate::records::{Extract, ResourceRecord, RollupRecord};

impl Store {
    /// The newest resource sample of every host.
    pub fn latest_resources(&self) -> Result<Vec<ResourceRecord>> {
        self.query_rows(
            "SELECT r.host_id, r.seq, r.sampled_ms, r.sample FROM resources r
             JOIN (SELECT host_id, MAX(id) AS id FROM resources GROUP BY host_id) m ON r.id = m.id
             ORDER BY r.host_id",
            [],
            resource_row,
        )
    }

    /// One host's samples with `from_ms <= sampled_ms < to_ms`, oldest first.
    pub fn resource_history(&self, host_id: &str, from_ms: i64, to_ms: i64) -> Result<Vec<ResourceRecord>> {
        self.query_rows(
            "SELECT host_id, seq, sampled_ms, sample FROM resources
             WHERE host_id = ?1 AND sampled_ms >= ?2 AND sampled_ms < ?3 ORDER BY sampled_ms, id",
            params![host_id, from_ms, to_ms],
            resource_row,
        )
    }

    /// Roll up every raw sample with `sampled_ms < before_ms` into buckets of
    /// `bucket_ms`, deleting the raw rows, `chunk` samples per transaction.
    /// Returns how many raw samples were rolled up (and deleted).
    ///
    /// This runs until done; a caller that shares the thread with other writes
    /// can call [`Store::downsample_resources_chunk`] instead and interleave.
    ///
    /// # Panics
    /// If `bucket_ms <= 0`.
    pub fn downsample_resources(
        &mut self,
        before_ms: i64,
        bucket_ms: i64,
        chunk: usize,
        extract: &Extract,
    ) -> Result<usize> {
        let chunk = chunk.max(1);
        let mut total = 0;
        loop {
            let n = self.downsample_resources_chunk(before_ms, bucket_ms, chunk, extract)?;
            total += n;
            if n < chunk {
                return Ok(total);
            }
        }
    }

    /// One transaction of [`Store::downsample_resources`]: rolls up and deletes
    /// the oldest (at most) `chunk` samples older than `before_ms`. Returns how
    /// many; fewer than `chunk` means none are left.
    ///
    /// Samples for which `extract` yields nothing are deleted all the same (they
    /// are past raw retention and would otherwise be re-read on every run), and
    /// non-finite values are skipped (SQLite stores NaN as NULL).
    ///
    /// # Panics
    /// If `bucket_ms <= 0`.
    pub fn downsample_resources_chunk(
        &mut self,
        before_ms: i64,
        bucket_ms: i64,
        chunk: usize,
        extract: &Extract,
    ) -> Result<usize> {
        assert!(bucket_ms > 0, "bucket width must be positive, got {bucket_ms}");
        let path = self.path.clone();
        let e = |e| sqlite(&path, e);
        // IMMEDIATE: take the write lock before reading, so the rows read are the
        // rows deleted even if another connection writes meanwhile.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        let mut ids = Vec::new();
        let mut buckets: HashMap<(String, String, i64), Agg> = HashMap::new();
        {
            let mut st = tx
                .prepare_cached(
                    "SELECT id, host_id, sampled_ms, sample FROM resources WHERE sampled_ms < ?1
                     ORDER BY sampled_ms LIMIT ?2",
                )
                .map_err(e)?;
            let mut rows = st.query(params![before_ms, chunk.min(i64::MAX as usize) as i64]).map_err(e)?;
            while let Some(r) = rows.next().map_err(e)? {
                ids.push(r.get::<_, i64>(0).map_err(e)?);
                let host: String = r.get(1).map_err(e)?;
                let at: i64 = r.get(2).map_err(e)?;
                let bucket = at.div_euclid(bucket_ms) * bucket_ms;
                let sample = r.get_ref(3).map_err(e)?.as_blob().map_err(|x| e(x.into()))?;
                for (metric, v) in extract(sample) {
                    if !v.is_finite() {
                        continue;
                    }
                    buckets
                        .entry((host.clone(), metric, bucket))
                        .and_modify(|a| {
                            a.count += 1;
                            a.sum += v;
                            a.min = a.min.min(v);
                            a.max = a.max.max(v);
                        })
                        .or_insert(Agg { count: 1, sum: v, min: v, max: v });
                }
            }
        }
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO resource_rollups (host_id, metric, bucket_ms, count, sum, min, max)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (host_id, metric, bucket_ms) DO UPDATE SET count = count + excluded.count,
                        sum = sum + excluded.sum, min = MIN(min, excluded.min), max = MAX(max, excluded.max)",
                )
                .map_err(e)?;
            for ((host, metric, bucket), a) in &buckets {
                upsert.execute(params![host, metric, bucket, a.count as i64, a.sum, a.min, a.max]).map_err(e)?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM resources WHERE id = ?1").map_err(e)?;
            for id in &ids {
                delete.execute(params![id]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        Ok(ids.len())
    }

    /// One host's rollups of buckets starting in `from_ms <= bucket_ms < to_ms`,
    /// by bucket then metric.
    pub fn resource_rollups(&self, host_id: &str, from_ms: i64, to_ms: i64) -> Result<Vec<RollupRecord>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT host_id, metric, bucket_ms, count, sum, min, max FROM resource_rollups
                 WHERE host_id = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 ORDER BY bucket_ms, metric",
            )
            .map_err(|e| self.err(e))?;
        self.collect_rows(&mut st, params![host_id, from_ms, to_ms], |r| {
            Ok(RollupRecord {
                host_id: r.get(0)?,
                metric: r.get(1)?,
                bucket_ms: r.get(2)?,
                count: r.get::<_, i64>(3)? as u64,
                sum: r.get(4)?,
                min: r.get(5)?,
                max: r.get(6)?,
            })
        })
    }

    /// Retention: delete rollups of buckets starting before `before_ms`; returns how many.
    pub fn prune_rollups(&mut self, before_ms: i64) -> Result<usize> {
        self.conn
            .execute("DELETE FROM resource_rollups WHERE bucket_ms < ?1", params![before_ms])
            .map_err(|e| self.err(e))
    }
}

/// Running count, sum, min and max of one (host, metric, bucket) within a chunk.
#[derive(Clone, Copy)]
struct Agg {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

fn resource_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceRecord> {
    Ok(ResourceRecord { host_id: r.get(0)?, seq: r.get::<_, i64>(1)? as u64, sampled_ms: r.get(2)?, sample: r.get(3)? })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use crate::{Batch, Op, ResourceRecord, Store};

    use super::*;

    const MIN: i64 = 60_000;

    /// Test encoding of a sample: JSON `[[metric, value], ...]`.
    fn encode(values: &[(&str, f64)]) -> Vec<u8> {
        serde_json::to_vec(values).unwrap()
    }

    fn extract(blob: &[u8]) -> Vec<(String, f64)> {
        serde_json::from_slice(blob).unwrap_or_default()
    }

    fn sample(host: &str, seq: u64, at: i64, values: &[(&str, f64)]) -> Op {
        Op::Resource(ResourceRecord { host_id: host.into(), seq, sampled_ms: at, sample: encode(values) })
    }

    fn rollup(host: &str, metric: &str, bucket_ms: i64, count: u64, sum: f64, min: f64, max: f64) -> RollupRecord {
        RollupRecord { host_id: host.into(), metric: metric.into(), bucket_ms, count, sum, min, max }
    }

    #[test]
    fn merges_into_existing_buckets_across_calls_in_chunks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.write_batch(&Batch {
                ops: vec![
                    sample("a", 1, 0, &[("cpu", 1.0), ("mem", 10.0)]),
                    sample("a", 2, MIN, &[("cpu", 3.0)]),
                    sample("a", 3, 2 * MIN, &[("cpu", -2.0), ("mem", 30.0)]),
                    sample("b", 1, MIN, &[("cpu", 7.0)]),
                    // Past the cutoff: stays raw.
                    sample("a", 4, 10 * MIN, &[("cpu", 100.0)]),
                ],
            })
            .unwrap();
            // Chunk of 2 < 4 eligible samples: several transactions.
            assert_eq!(s.downsample_resources(3 * MIN, 5 * MIN, 2, &extract).unwrap(), 4);
            assert_eq!(
                s.resource_rollups("a", 0, i64::MAX).unwrap(),
                vec![rollup("a", "cpu", 0, 3, 2.0, -2.0, 3.0), rollup("a", "mem", 0, 2, 40.0, 10.0, 30.0)]
            );
            assert_eq!(s.resource_rollups("b", 0, i64::MAX).unwrap(), vec![rollup("b", "cpu", 0, 1, 7.0, 7.0, 7.0)]);
            let raw = s.resource_history("a", 0, i64::MAX).unwrap();
            assert_eq!(raw.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4], "rolled rows deleted, newer kept");
            assert!(s.resource_history("b", 0, i64::MAX).unwrap().is_empty());
            // Nothing left to roll: a no-op.
            assert_eq!(s.downsample_resources(3 * MIN, 5 * MIN, 2, &extract).unwrap(), 0);
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.resource_rollups("a", 0, i64::MAX).unwrap().len(), 2, "rollups survive reopen");
        // Later samples into the same bucket merge with what is stored.
        s.write_batch(&Batch {
            ops: vec![
                sample("a", 5, 4 * MIN, &[("cpu", 10.0), ("mem", 5.0)]),
                sample("a", 6, 5 * MIN, &[("cpu", 1.0)]),
            ],
        })
        .unwrap();
        assert_eq!(s.downsample_resources(20 * MIN, 5 * MIN, 10_000, &extract).unwrap(), 3);
        assert_eq!(
            s.resource_rollups("a", 0, i64::MAX).unwrap(),
            vec![
                rollup("a", "cpu", 0, 4, 12.0, -2.0, 10.0),
                rollup("a", "mem", 0, 3, 45.0, 5.0, 30.0),
                rollup("a", "cpu", 5 * MIN, 1, 1.0, 1.0, 1.0),
                rollup("a", "cpu", 10 * MIN, 1, 100.0, 100.0, 100.0),
            ]
        );
        assert_eq!(s.resource_rollups("a", 0, 5 * MIN).unwrap().len(), 2, "window by bucket start");
        assert!(s.resource_history("a", 0, i64::MAX).unwrap().is_empty());
        assert_eq!(s.prune_rollups(5 * MIN).unwrap(), 3);
        assert_eq!(s.resource_rollups("a", 0, i64::MAX).unwrap().len(), 2);
        assert_eq!(s.resource_rollups("b", 0, i64::MAX).unwrap(), vec![]);
    }

    #[test]
    fn undecodable_and_non_finite_samples_are_dropped_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.write_batch(&Batch {
            ops: vec![
                Op::Resource(ResourceRecord { host_id: "a".into(), seq: 1, sampled_ms: 0, sample: b"junk".to_vec() }),
                sample("a", 2, 1, &[("mem", 2.0)]),
                // Negative times land in the bucket below, not in bucket 0.
                sample("a", 3, -1, &[("cpu", 4.0)]),
            ],
        })
        .unwrap();
        // JSON cannot carry NaN or infinities, so the extractor adds them.
        let nan_cpu = |b: &[u8]| {
            let mut v = extract(b);
            if v.iter().any(|(m, _)| m == "mem") {
                v.extend([("cpu".into(), f64::NAN), ("cpu".into(), f64::INFINITY)]);
            }
            v
        };
        assert_eq!(s.downsample_resources(10, 5 * MIN, 100, &nan_cpu).unwrap(), 3);
        assert_eq!(
            s.resource_rollups("a", i64::MIN, i64::MAX).unwrap(),
            vec![rollup("a", "cpu", -5 * MIN, 1, 4.0, 4.0, 4.0), rollup("a", "mem", 0, 1, 2.0, 2.0, 2.0)]
        );
        assert_eq!(s.stats().unwrap().resources, 0);
    }

    #[test]
    fn window_queries_use_the_host_time_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut st = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let raw = plan(
            "SELECT host_id, seq, sampled_ms, sample FROM resources
             WHERE host_id = 'a' AND sampled_ms >= 0 AND sampled_ms < 10 ORDER BY sampled_ms, id",
        );
        assert!(raw.contains("resources_by_host_time") && !raw.contains("TEMP B-TREE"), "{raw}");
        let rolled = plan(
            "SELECT host_id, metric, bucket_ms, count, sum, min, max FROM resource_rollups
             WHERE host_id = 'a' AND bucket_ms >= 0 AND bucket_ms < 10 ORDER BY bucket_ms, metric",
        );
        assert!(rolled.contains("resource_rollups_by_host_time") && !rolled.contains("TEMP B-TREE"), "{rolled}");
        let old = plan("SELECT id FROM resources WHERE sampled_ms < 10 ORDER BY sampled_ms LIMIT 5");
        assert!(old.contains("resources_by_time") && !old.contains("TEMP B-TREE"), "{old}");
    }

    /// Values in quarter steps, so sums are exact in f64 whatever the order of addition.
    /// (host index, sampled_ms, [(metric index, value)]).
    type Sample = (usize, i64, Vec<(usize, f64)>);
    /// (count, sum, min, max) by (host, bucket, metric).
    type Aggregates<'a> = BTreeMap<(&'a str, i64, &'a str), (u64, f64, f64, f64)>;

    fn samples() -> impl Strategy<Value = Vec<Sample>> {
        let value = (-4000i32..4000).prop_map(|q| f64::from(q) / 4.0);
        let metrics = prop::collection::vec((0usize..3, value), 0..4);
        prop::collection::vec((0usize..2, -20 * MIN..20 * MIN, metrics), 0..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn rollups_equal_a_direct_computation(
            samples in samples(),
            first_cut in -20 * MIN..20 * MIN,
            extra in 0..20 * MIN,
            bucket_ms in prop::sample::select(vec![1, 1000, MIN, 5 * MIN]),
            chunk in 1usize..20,
        ) {
            const HOSTS: [&str; 2] = ["a", "b"];
            const METRICS: [&str; 3] = ["cpu", "mem", "disk"];
            let dir = tempfile::tempdir().unwrap();
            let mut s = Store::open(&dir.path().join("d.db")).unwrap();
            let ops = samples
                .iter()
                .enumerate()
                .map(|(i, (h, at, vs))| {
                    let vs: Vec<_> = vs.iter().map(|&(m, v)| (METRICS[m], v)).collect();
                    sample(HOSTS[*h], i as u64, *at, &vs)
                })
                .collect();
            s.write_batch(&Batch { ops }).unwrap();
            // Two calls with a rising cutoff: the second merges into buckets of the first.
            let cut = first_cut + extra;
            let n1 = s.downsample_resources(first_cut, bucket_ms, chunk, &extract).unwrap();
            let n2 = s.downsample_resources(cut, bucket_ms, chunk, &extract).unwrap();
            let rolled = samples.iter().filter(|(_, at, _)| *at < cut).count();
            prop_assert_eq!(n1 + n2, rolled);
            prop_assert_eq!(s.stats().unwrap().resources as usize, samples.len() - rolled);

            let mut want = Aggregates::new();
            for (h, at, vs) in samples.iter().filter(|(_, at, _)| *at < cut) {
                for &(m, v) in vs {
                    let key = (HOSTS[*h], at.div_euclid(bucket_ms) * bucket_ms, METRICS[m]);
                    let e = want.entry(key).or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
                    *e = (e.0 + 1, e.1 + v, e.2.min(v), e.3.max(v));
                }
            }
            let mut got = BTreeMap::new();
            for h in HOSTS {
                for r in s.resource_rollups(h, i64::MIN, i64::MAX).unwrap() {
                    got.insert((h, r.bucket_ms, METRICS.iter().find(|m| **m == r.metric).copied().unwrap()),
                        (r.count, r.sum, r.min, r.max));
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
