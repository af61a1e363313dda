//! Baselines as data: every version of every baseline, the effective baseline of a
//! host, and the pure edits a new version is made of. No I/O, no gRPC.
//!
//! Readers (the rule engine, Fleet diffs, Changes) hold an immutable snapshot
//! (`Arc<BaselineSet>`); a new durable version replaces the snapshot whole, so a
//! baseline edit never blocks evaluation or a query.

use std::collections::BTreeMap;
use std::sync::Arc;

use driftwatch_proto::v1;
use driftwatch_store::BaselineRecord;
use prost::Message;

use crate::error::ServerError;
use crate::selector::Selector;

/// Every version of every baseline, by name, oldest first. Versions are shared
/// between snapshots, so a new snapshot costs a pointer per version, not a copy.
#[derive(Debug, Default, Clone)]
pub struct BaselineSet {
    versions: BTreeMap<String, Vec<Arc<v1::Baseline>>>,
}

impl BaselineSet {
    /// Rebuild from the store; a version that does not decode is skipped (and counted).
    pub fn load(records: Vec<BaselineRecord>) -> (Self, usize) {
        let mut set = Self::default();
        let mut skipped = 0;
        for r in records {
            match v1::Baseline::decode(r.content.as_slice()) {
                Ok(b) => set.versions.entry(r.name).or_default().push(Arc::new(b)),
                Err(e) => {
                    tracing::warn!(baseline = %r.name, version = r.version, error = %e, "stored baseline does not decode; skipped");
                    skipped += 1;
                }
            }
        }
        (set, skipped)
    }

    /// This set with `b` appended as the newest version of its name.
    pub fn with_version(&self, b: v1::Baseline) -> Self {
        let mut next = self.clone();
        next.versions.entry(b.name.clone()).or_default().push(Arc::new(b));
        next
    }

    pub fn latest(&self, name: &str) -> Option<&v1::Baseline> {
        self.versions.get(name).and_then(|v| v.last()).map(|b| &**b)
    }

    pub fn version(&self, name: &str, version: u64) -> Option<&v1::Baseline> {
        self.versions.get(name).and_then(|v| v.iter().find(|b| b.version == version)).map(|b| &**b)
    }

    /// The newest version of every baseline, deleted ones only when asked.
    pub fn newest(&self, include_deleted: bool) -> impl Iterator<Item = &v1::Baseline> {
        self.versions.values().filter_map(|v| v.last()).map(|b| &**b).filter(move |b| include_deleted || !b.deleted)
    }

    /// The baseline that applies to a host: the newest pinned for the host itself,
    /// else the newest whose selector matches its labels.
    pub fn effective(&self, host_id: &str, labels: &BTreeMap<String, String>) -> Option<&v1::Baseline> {
        let newest = |a: &&v1::Baseline, b: &&v1::Baseline| {
            let t = |x: &v1::Baseline| x.created_at.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            t(a).cmp(&t(b)).then_with(|| a.name.cmp(&b.name))
        };
        self.newest(false).filter(|b| b.host_id == host_id).max_by(newest).or_else(|| {
            self.newest(false)
                .filter(|b| b.host_id.is_empty() && Selector::parse(&b.selector).is_ok_and(|s| s.matches(labels)))
                .max_by(newest)
        })
    }
}

/// The snapshot every reader sees, and the one edit at a time that replaces it.
#[derive(Debug)]
pub struct SharedBaselines {
    current: parking_lot::RwLock<Arc<BaselineSet>>,
    edits: tokio::sync::Mutex<()>,
}

impl SharedBaselines {
    pub fn new(set: BaselineSet) -> Arc<Self> {
        Arc::new(Self { current: parking_lot::RwLock::new(Arc::new(set)), edits: tokio::sync::Mutex::new(()) })
    }

    /// The newest durable snapshot (cheap: an `Arc`).
    pub fn current(&self) -> Arc<BaselineSet> {
        self.current.read().clone()
    }

    /// Held by the one edit in progress, across its durable write: two edits can
    /// never claim the same version. Readers never wait for it.
    pub async fn edit(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.edits.lock().await
    }

    /// Make a durable snapshot the current one.
    pub(crate) fn publish(&self, set: Arc<BaselineSet>) {
        *self.current.write() = set;
    }
}

/// Apply an edit to one file of a baseline's files: set (in place, or appended),
/// then remove. Fails when the edit changes nothing or removes a key that is not there.
pub fn edit_file(
    files: &mut Vec<v1::BaselineFile>,
    path: &str,
    set: Vec<v1::KeyValue>,
    remove: &[String],
) -> Result<(), ServerError> {
    if set.is_empty() && remove.is_empty() {
        return Err(ServerError::InvalidArgument("nothing to change: give set, remove or promote_keys".into()));
    }
    let idx = match files.iter().position(|f| f.path == path) {
        Some(i) => i,
        None => {
            files.push(v1::BaselineFile { path: path.to_string(), keys: Vec::new() });
            files.len() - 1
        }
    };
    let file = &mut files[idx];
    for kv in set {
        if kv.key.is_empty() || kv.value.is_none() {
            return Err(ServerError::InvalidArgument("every key to set needs a key and a value".into()));
        }
        match file.keys.iter_mut().find(|k| k.key == kv.key) {
            Some(existing) => existing.value = kv.value,
            None => file.keys.push(kv),
        }
    }
    for key in remove {
        let before = file.keys.len();
        file.keys.retain(|k| &k.key != key);
        if file.keys.len() == before {
            return Err(ServerError::NotFound(format!("baseline has no key '{key}' in {path}")));
        }
    }
    if file.keys.is_empty() {
        files.remove(idx);
    }
    Ok(())
}

/// Set (in place, or appended) then remove resource expectations.
pub fn edit_resources(
    resources: &mut Vec<v1::ResourceExpectation>,
    set: Vec<v1::ResourceExpectation>,
    remove: &[String],
) -> Result<(), ServerError> {
    for e in set {
        if e.metric.trim().is_empty() || !e.value.is_finite() {
            return Err(ServerError::InvalidArgument(format!(
                "resource expectation needs a metric name and a finite value (got {:?} = {})",
                e.metric, e.value
            )));
        }
        match resources.iter_mut().find(|r| r.metric == e.metric) {
            Some(r) => r.value = e.value,
            None => resources.push(e),
        }
    }
    for m in remove {
        let idx = resources
            .iter()
            .position(|r| &r.metric == m)
            .ok_or_else(|| ServerError::NotFound(format!("the baseline has no resource expectation '{m}'")))?;
        resources.remove(idx);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::Value;
    use std::collections::BTreeMap;

    fn kv(k: &str, v: i64) -> v1::KeyValue {
        v1::KeyValue { key: k.into(), value: Some(Value::int(v)) }
    }

    fn baseline(name: &str, version: u64, host: &str, selector: &str, at: i64, deleted: bool) -> v1::Baseline {
        v1::Baseline {
            name: name.into(),
            version,
            host_id: host.into(),
            selector: selector.into(),
            created_at: Some(driftwatch_proto::timestamp_from_millis(at)),
            deleted,
            ..Default::default()
        }
    }

    fn set_of(bs: Vec<v1::Baseline>) -> BaselineSet {
        let mut s = BaselineSet::default();
        for b in bs {
            s = s.with_version(b);
        }
        s
    }

    #[test]
    fn host_baseline_wins_over_selector_and_newest_wins_among_equals() {
        let labels: BTreeMap<String, String> = [("env".into(), "production".into())].into();
        let s = set_of(vec![
            baseline("fleet", 1, "", "env=production", 10, false),
            baseline("fleet-new", 1, "", "env=production", 20, false),
            baseline("other-env", 1, "", "env=staging", 30, false),
        ]);
        assert_eq!(s.effective("web-1", &labels).unwrap().name, "fleet-new");
        let s = set_of(vec![
            baseline("fleet", 1, "", "env=production", 50, false),
            baseline("web-1-tuned", 1, "web-1", "", 10, false),
        ]);
        assert_eq!(s.effective("web-1", &labels).unwrap().name, "web-1-tuned");
        assert_eq!(s.effective("web-2", &labels).unwrap().name, "fleet");
        assert!(s.effective("web-2", &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_deleted_baseline_applies_to_nobody() {
        let s = set_of(vec![baseline("t", 1, "web-1", "", 10, false), baseline("t", 2, "web-1", "", 20, true)]);
        assert!(s.effective("web-1", &BTreeMap::new()).is_none());
        assert_eq!(s.version("t", 1).unwrap().version, 1);
        assert!(s.latest("t").unwrap().deleted);
    }

    #[test]
    fn edit_sets_in_place_appends_and_removes() {
        let mut files = vec![v1::BaselineFile { path: "/a".into(), keys: vec![kv("A", 1), kv("B", 2)] }];
        edit_file(&mut files, "/a", vec![kv("B", 3), kv("C", 4)], &["A".into()]).unwrap();
        assert_eq!(files[0].keys, vec![kv("B", 3), kv("C", 4)]);
        edit_file(&mut files, "/new", vec![kv("X", 1)], &[]).unwrap();
        assert_eq!(files.len(), 2);
        // Removing the last key drops the file from the baseline.
        edit_file(&mut files, "/new", vec![], &["X".into()]).unwrap();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn edit_errors_are_clear() {
        let mut files = vec![v1::BaselineFile { path: "/a".into(), keys: vec![kv("A", 1)] }];
        assert!(matches!(edit_file(&mut files, "/a", vec![], &[]), Err(ServerError::InvalidArgument(_))));
        assert!(matches!(edit_file(&mut files, "/a", vec![], &["Z".into()]), Err(ServerError::NotFound(_))));
        let no_value = v1::KeyValue { key: "A".into(), value: None };
        assert!(matches!(edit_file(&mut files, "/a", vec![no_value], &[]), Err(ServerError::InvalidArgument(_))));
    }

    #[test]
    fn resource_expectations_edit() {
        let e = |m: &str, v: f64| v1::ResourceExpectation { metric: m.into(), value: v };
        let mut r = vec![e("memory_used_bytes", 1.0)];
        edit_resources(&mut r, vec![e("memory_used_bytes", 2.0), e("cpu_cores_used", 10.4)], &[]).unwrap();
        assert_eq!(r, vec![e("memory_used_bytes", 2.0), e("cpu_cores_used", 10.4)]);
        edit_resources(&mut r, vec![], &["memory_used_bytes".into()]).unwrap();
        assert_eq!(r, vec![e("cpu_cores_used", 10.4)]);
        assert!(matches!(edit_resources(&mut r, vec![], &["nope".into()]), Err(ServerError::NotFound(_))));
        assert!(matches!(edit_resources(&mut r, vec![e("x", f64::NAN)], &[]), Err(ServerError::InvalidArgument(_))));
    }
}
