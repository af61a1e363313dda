//! The alert book: every alert not yet pruned and every silence, as the rule
//! engine last left them. A read model: the Alerts API, notifiers, rollout gates
//! and remediation read it; only the rule engine thread writes it (through the
//! `pub(crate)` writers below), so a reader never needs the engine itself.
//!
//! Reads take a short read lock and copy out what they need; nobody holds the
//! lock across I/O or an `.await`.

use std::collections::{BTreeMap, HashMap};

use driftwatch_proto::v1;
use driftwatch_rules::Observation;
use parking_lot::RwLock;

use crate::silences::ActiveSilence;

/// One tracked alert and the state-machine bookkeeping the engine keeps with it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub alert: v1::Alert,
    /// The last observation, replayed on ticks so `for`/`keep_firing_for` elapse
    /// without a new snapshot.
    pub(crate) last_obs: Observation,
}

impl Tracked {
    /// An alert loaded from the store: a pending alert was matching, a firing one
    /// in `keep_firing_for` was not.
    pub fn restored(alert: v1::Alert) -> Self {
        let last_obs = match v1::AlertState::try_from(alert.state) {
            Ok(v1::AlertState::Firing) if alert.keep_since.is_some() => Observation::NotMatched,
            Ok(v1::AlertState::Pending | v1::AlertState::Firing) => Observation::Matched,
            _ => Observation::NotMatched,
        };
        Self { alert, last_obs }
    }
}

#[derive(Debug, Default)]
struct Book {
    alerts: HashMap<String, Tracked>,
    silences: BTreeMap<String, ActiveSilence>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AlertBook {
    inner: RwLock<Book>,
}

impl AlertBook {
    /// A book holding what the store had at start.
    pub fn new(alerts: impl IntoIterator<Item = Tracked>, silences: impl IntoIterator<Item = ActiveSilence>) -> Self {
        let book = Book {
            alerts: alerts.into_iter().map(|t| (t.alert.fingerprint.clone(), t)).collect(),
            silences: silences.into_iter().map(|s| (s.silence.id.clone(), s)).collect(),
        };
        Self { inner: RwLock::new(book) }
    }

    /// One alert by fingerprint.
    pub fn get(&self, fingerprint: &str) -> Option<v1::Alert> {
        self.inner.read().alerts.get(fingerprint).map(|t| t.alert.clone())
    }

    /// Copies of the alerts `keep` takes.
    pub fn alerts_where(&self, mut keep: impl FnMut(&v1::Alert) -> bool) -> Vec<v1::Alert> {
        self.inner.read().alerts.values().map(|t| &t.alert).filter(|a| keep(a)).cloned().collect()
    }

    /// Every firing alert.
    pub fn firing(&self) -> Vec<v1::Alert> {
        self.alerts_where(|a| a.state == v1::AlertState::Firing as i32)
    }

    /// Run `f` over every alert without copying them (the lock is held meanwhile:
    /// keep `f` short and free of I/O).
    pub fn scan<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &v1::Alert>) -> R) -> R {
        let book = self.inner.read();
        let mut it = book.alerts.values().map(|t| &t.alert);
        f(&mut it)
    }

    pub fn len(&self) -> usize {
        self.inner.read().alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One silence.
    pub fn silence(&self, id: &str) -> Option<ActiveSilence> {
        self.inner.read().silences.get(id).cloned()
    }

    /// Silences as the API shows them at `now_ms`, optionally without expired ones.
    pub fn silence_views(&self, now_ms: i64, include_expired: bool) -> Vec<v1::Silence> {
        self.inner
            .read()
            .silences
            .values()
            .map(|s| s.view(now_ms))
            .filter(|s| include_expired || s.state != v1::SilenceState::Expired as i32)
            .collect()
    }

    /// Silences not expired at `now_ms` (active or pending).
    pub fn live_silences(&self, now_ms: i64) -> usize {
        self.inner.read().silences.values().filter(|s| s.state_at(now_ms) != v1::SilenceState::Expired).count()
    }

    /// Ids of the silences that silence these labels at `now_ms`.
    pub fn silenced_by(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> Vec<String> {
        let book = self.inner.read();
        book.silences.values().filter(|s| s.silences(labels, now_ms)).map(|s| s.silence.id.clone()).collect()
    }

    // --- Writers: the rule engine thread only. ---

    pub(crate) fn tracked(&self, fingerprint: &str) -> Option<Tracked> {
        self.inner.read().alerts.get(fingerprint).cloned()
    }

    /// Fingerprints and bookkeeping of the alerts `keep` takes (engine timers).
    pub(crate) fn tracked_where(&self, mut keep: impl FnMut(&Tracked) -> bool) -> Vec<(String, Observation)> {
        let book = self.inner.read();
        book.alerts.iter().filter(|(_, t)| keep(t)).map(|(fp, t)| (fp.clone(), t.last_obs)).collect()
    }

    pub(crate) fn put(&self, tracked: Tracked) {
        self.inner.write().alerts.insert(tracked.alert.fingerprint.clone(), tracked);
    }

    pub(crate) fn remove(&self, fingerprint: &str) {
        self.inner.write().alerts.remove(fingerprint);
    }

    pub(crate) fn put_silence(&self, silence: ActiveSilence) {
        self.inner.write().silences.insert(silence.silence.id.clone(), silence);
    }

    pub(crate) fn remove_silence(&self, id: &str) {
        self.inner.write().silences.remove(id);
    }

    /// Ids of silences that ended before `cutoff_ms` (retention).
    pub(crate) fn silences_ended_before(&self, cutoff_ms: i64) -> Vec<String> {
        self.inner.read().silences.values().filter(|s| s.ends_ms < cutoff_ms).map(|s| s.silence.id.clone()).collect()
    }

    /// Alerts whose silenced-by list differs from what the silences say at `now_ms`,
    /// with the new list (a silence started or ended).
    pub(crate) fn silence_changes(&self, now_ms: i64) -> Vec<(String, Vec<String>)> {
        let book = self.inner.read();
        if book.silences.is_empty() && book.alerts.values().all(|t| t.alert.silenced_by.is_empty()) {
            return Vec::new();
        }
        book.alerts
            .iter()
            .filter_map(|(fp, t)| {
                let by: Vec<String> = book
                    .silences
                    .values()
                    .filter(|s| s.silences(&t.alert.labels, now_ms))
                    .map(|s| s.silence.id.clone())
                    .collect();
                (by != t.alert.silenced_by).then(|| (fp.clone(), by))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(fp: &str, state: v1::AlertState) -> v1::Alert {
        v1::Alert { fingerprint: fp.into(), state: state as i32, ..Default::default() }
    }

    #[test]
    fn restart_replays_the_right_observation() {
        let mut a = alert("a", v1::AlertState::Pending);
        assert_eq!(Tracked::restored(a.clone()).last_obs, Observation::Matched);
        a.state = v1::AlertState::Firing as i32;
        assert_eq!(Tracked::restored(a.clone()).last_obs, Observation::Matched);
        a.keep_since = Some(driftwatch_proto::timestamp_from_millis(1));
        assert_eq!(Tracked::restored(a.clone()).last_obs, Observation::NotMatched);
        a.state = v1::AlertState::Resolved as i32;
        assert_eq!(Tracked::restored(a).last_obs, Observation::NotMatched);
    }

    #[test]
    fn reads_see_what_the_engine_wrote() {
        let book = AlertBook::new([Tracked::restored(alert("a", v1::AlertState::Firing))], []);
        book.put(Tracked::restored(alert("b", v1::AlertState::Resolved)));
        assert_eq!(book.len(), 2);
        assert_eq!(book.firing().len(), 1);
        assert_eq!(book.get("b").unwrap().state, v1::AlertState::Resolved as i32);
        assert_eq!(book.scan(|it| it.count()), 2);
        book.remove("a");
        assert!(book.get("a").is_none() && book.firing().is_empty());
    }

    #[test]
    fn silences_mark_and_unmark_alerts() {
        let mut a = alert("a", v1::AlertState::Firing);
        a.labels.insert("host".into(), "web-1".into());
        let book = AlertBook::new([Tracked::restored(a)], []);
        assert!(book.silence_changes(0).is_empty(), "nothing silenced, nothing to change");
        let silence = v1::Silence {
            id: "s1".into(),
            matchers: vec![crate::silences::parse_matcher("host=web-1").unwrap()],
            starts_at: Some(driftwatch_proto::timestamp_from_millis(0)),
            ends_at: Some(driftwatch_proto::timestamp_from_millis(1_000)),
            ..Default::default()
        };
        book.put_silence(ActiveSilence::new(silence).unwrap());
        assert_eq!(book.silence_changes(500), vec![("a".to_string(), vec!["s1".to_string()])]);
        assert_eq!(book.silenced_by(&book.get("a").unwrap().labels, 500), ["s1"]);
        assert_eq!(book.silence_views(2_000, false).len(), 0);
        assert_eq!(book.silence_views(2_000, true).len(), 1);
        assert_eq!(book.silences_ended_before(2_000), ["s1"]);
    }
}
