//! The rule engine: one thread that evaluates rules on every change and owns the
//! alert lifecycle.
//!
//! Ingest never waits on it. Changed and removed files go into a map keyed by
//! (host, path) that the engine drains: a file changing faster than the engine
//! evaluates is evaluated once per drain with its newest version (and the version
//! before the burst as `previous`), so the work is bounded by the fleet's size, not
//! its change rate. Resource samples (every one counts for history) and commands
//! go through a bounded queue; when it is full the engine is told to re-evaluate
//! the whole fleet from the in-memory state once it catches up, so a burst costs
//! latency, not correctness. Commands (acknowledge, silence) come through the same queue, so
//! every event gets its id from one sequencer, in the order the writer commits
//! them: a reader of the event log never sees id N+1 before N.
//!
//! Clocks: file and agent rules run on the server's clock; resource rules run on
//! the host's sample clock (history windows, `for`), so a burst of delayed samples
//! is judged by when they were taken.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, FileState, ResourceSample};
use driftwatch_rules::{
    AgentInput, AlertState, AlertStatus, FileInput, FileMeta, HostInfo, Observation, Outcome, ResourceInput, Rule,
    RuleSet, Severity, Target, Timing, step,
};
use driftwatch_store::{AlertRecord, EventRecord, Op, SilenceRecord, Store};
use prost::Message;
use tokio::sync::oneshot;

use crate::baselines::BaselineSet;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::silences::ActiveSilence;
use crate::state::FleetState;
use crate::writer::{WriteItem, WriteSender};

/// Queue between ingest and the engine.
pub const QUEUE: usize = 65_536;
/// Pending/keep-firing timers, agent-offline rules and silence boundaries are checked this often.
const TICK: Duration = Duration::from_millis(500);
/// Evaluation errors are logged at most once per rule per this interval (always counted).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Resource history kept in memory when no rule asks for a longer window.
const MIN_HISTORY_MS: i64 = 60 * 60 * 1000;
/// Most samples kept per series and window (see `eval_resource`).
const MAX_SERIES: usize = 2048;
/// Upper bound of the in-memory history (raw samples are kept this long in the store).
const MAX_HISTORY_MS: i64 = 24 * 60 * 60 * 1000;

/// Retention settings (from the server config).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Resolved alerts and events older than this are pruned.
    pub alerts: Duration,
    /// Raw resource samples older than this are rolled up into 5-minute buckets.
    pub raw_resources: Duration,
    /// Rollups older than this are deleted.
    pub rollups: Duration,
    /// How often retention runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            alerts: Duration::from_secs(72 * 3600),
            raw_resources: Duration::from_secs(24 * 3600),
            rollups: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
        }
    }
}

/// Width of a resource rollup bucket.
pub const ROLLUP_BUCKET_MS: i64 = 5 * 60 * 1000;

/// Work for the engine.
pub enum EvalMsg {
    /// Changed files are waiting in the dirty map.
    Wake,
    Resource {
        host: String,
        sample: Box<ResourceSample>,
    },
    /// Baselines or host labels changed: evaluate again (one host, or all).
    Reevaluate {
        host: Option<String>,
    },
    /// New rules (reload); `None` runs without rules.
    Rules(Option<Arc<RuleSet>>),
    Command(Command),
}

/// A write the caller waits for: resolves once durable.
pub type Durable = oneshot::Receiver<()>;

pub enum Command {
    Acknowledge {
        fingerprint: String,
        by: String,
        comment: String,
        reply: oneshot::Sender<Result<(v1::Alert, Durable), ServerError>>,
    },
    CreateSilence {
        silence: v1::Silence,
        reply: oneshot::Sender<Result<(v1::Silence, Durable), ServerError>>,
    },
    ExpireSilence {
        id: String,
        reply: oneshot::Sender<Result<(v1::Silence, Durable), ServerError>>,
    },
    /// An alert the server raises itself (group [`SYSTEM_GROUP`]), e.g. "remediation
    /// gave up" on a host's file: fires with `firing`, resolves without.
    SystemAlert(SystemAlert),
    /// Answered once everything queued before it is processed and durable (tests, shutdown).
    Flush {
        reply: oneshot::Sender<Durable>,
    },
}

/// Group of the alerts the server raises itself; rule evaluation never touches them.
pub const SYSTEM_GROUP: &str = "driftwatch";

pub struct SystemAlert {
    pub name: String,
    pub host: String,
    pub path: String,
    pub key: String,
    pub severity: Severity,
    pub summary: String,
    pub firing: bool,
}

/// One tracked alert.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub alert: v1::Alert,
    /// The last observation, replayed on ticks so `for`/`keep_firing_for` elapse
    /// without a new snapshot.
    last_obs: Observation,
}

/// What the API reads: every alert not yet pruned, and every silence.
#[derive(Debug, Default)]
pub struct AlertBook {
    pub alerts: HashMap<String, Tracked>,
    pub silences: BTreeMap<String, ActiveSilence>,
}

/// The ingest and API side of the engine.
/// A file's pending evaluation: the version before the first unevaluated change,
/// and the newest one (None: no longer watched, its alerts resolve).
struct Dirty {
    previous: Option<Arc<[u8]>>,
    current: Option<Arc<[u8]>>,
}

type DirtyMap = Arc<Mutex<HashMap<(String, String), Dirty>>>;

#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<EvalMsg>,
    dirty: DirtyMap,
    pub book: Arc<RwLock<AlertBook>>,
    overflow: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Hand work to the engine without waiting. A full queue marks the fleet for
    /// re-evaluation instead of blocking ingest.
    pub fn send(&self, m: EvalMsg) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.rule_queue_overflows.inc();
                self.overflow.store(true, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A file's new version (and the one it replaced), or its removal (`current` None).
    pub fn file_changed(&self, host: &str, path: &str, previous: Option<Arc<[u8]>>, current: Option<Arc<[u8]>>) {
        let was_empty = {
            let mut d = self.dirty.lock().expect("dirty map lock");
            let was_empty = d.is_empty();
            d.entry((host.to_string(), path.to_string()))
                .and_modify(|e| e.current = current.clone())
                .or_insert(Dirty { previous, current });
            was_empty
        };
        if was_empty {
            // A full queue is fine: the engine drains the map on every turn anyway.
            let _ = self.tx.try_send(EvalMsg::Wake);
        }
    }

    /// Run a command and wait for its answer (not for durability).
    pub async fn command<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command + Send + 'static,
    ) -> Result<T, ServerError> {
        let (tx, rx) = oneshot::channel();
        let sender = self.tx.clone();
        let cmd = make(tx);
        // A full queue must not fail an operator's call: wait for room off the async workers.
        tokio::task::spawn_blocking(move || sender.send(EvalMsg::Command(cmd)).map_err(|_| ()))
            .await
            .map_err(|e| ServerError::Unavailable(format!("rule engine: {e}")))?
            .map_err(|_| ServerError::Unavailable("rule engine stopped".into()))?;
        rx.await.map_err(|_| ServerError::Unavailable("rule engine stopped".into()))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Wait until everything sent before this call is evaluated and durable.
    pub async fn flush(&self) -> Result<(), ServerError> {
        let durable = self.command(|reply| Command::Flush { reply }).await?;
        durable.await.map_err(|_| ServerError::Unavailable("store writer stopped".into()))
    }
}

/// Turns a (durable-to-be) event into the outbox rows of the notifiers that route
/// it: written in the same transaction as the event, so a delivery is never lost
/// and never invented.
pub type Router = Arc<dyn Fn(&v1::AlertEvent) -> Vec<Op> + Send + Sync>;

/// What the engine starts from.
pub struct EngineInit {
    pub rules: Option<Arc<RuleSet>>,
    pub state: Arc<FleetState>,
    pub baselines: Arc<tokio::sync::Mutex<BaselineSet>>,
    pub writer: WriteSender,
    pub metrics: Arc<Metrics>,
    /// A read connection (resource history after a restart).
    pub reader: Option<Arc<Mutex<Store>>>,
    pub alerts: Vec<AlertRecord>,
    pub silences: Vec<SilenceRecord>,
    pub max_event_id: u64,
    pub retention: Retention,
    /// Live subscribers get events from here once they are durable.
    pub hub: Arc<crate::hub::EventHub>,
    /// Notifier routing (outbox rows per event), if notifiers are configured.
    pub router: Option<Router>,
}

/// Start the engine thread. It stops when every handle is dropped.
pub fn spawn(init: EngineInit) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let mut book = AlertBook::default();
    for r in &init.alerts {
        match v1::Alert::decode(r.payload.as_slice()) {
            Ok(alert) => {
                let last_obs = last_observation(&alert);
                book.alerts.insert(r.fingerprint.clone(), Tracked { alert, last_obs });
            }
            Err(e) => tracing::warn!(fingerprint = %r.fingerprint, error = %e, "stored alert does not decode; skipped"),
        }
    }
    for s in &init.silences {
        match v1::Silence::decode(s.payload.as_slice()).map_err(|e| e.to_string()).and_then(ActiveSilence::new) {
            Ok(a) => {
                book.silences.insert(s.id.clone(), a);
            }
            Err(e) => tracing::warn!(silence = %s.id, error = %e, "stored silence does not load; skipped"),
        }
    }
    let book = Arc::new(RwLock::new(book));
    let dirty = DirtyMap::default();
    let handle = EngineHandle {
        tx,
        dirty: dirty.clone(),
        book: book.clone(),
        overflow: overflow.clone(),
        metrics: init.metrics.clone(),
    };
    let mut engine = Engine::new(init, book, overflow, dirty);
    let thread = std::thread::Builder::new()
        .name("rule-engine".into())
        .spawn(move || engine.run(rx))
        .expect("spawn rule engine thread");
    (handle, thread)
}

/// What an alert is about, for finding the alerts of one subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    File(String),
    Metric(String),
    Agent,
    /// Raised by the server itself: rule evaluation never resolves these.
    System,
}

impl Subject {
    fn of(alert: &v1::Alert) -> Self {
        if alert.group == SYSTEM_GROUP {
            Subject::System
        } else if !alert.path.is_empty() {
            Subject::File(alert.path.clone())
        } else if !alert.metric.is_empty() {
            Subject::Metric(alert.metric.clone())
        } else {
            Subject::Agent
        }
    }
}

/// The state-machine view of a stored alert.
fn status_of(a: &v1::Alert) -> AlertStatus {
    let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(driftwatch_proto::timestamp_millis);
    AlertStatus {
        state: match v1::AlertState::try_from(a.state) {
            Ok(v1::AlertState::Pending) => AlertState::Pending,
            Ok(v1::AlertState::Firing) => AlertState::Firing,
            Ok(v1::AlertState::Resolved) => AlertState::Resolved,
            _ => AlertState::Inactive,
        },
        active_since_ms: ms(&a.active_since),
        fired_at_ms: ms(&a.fired_at),
        last_matched_ms: ms(&a.last_matched),
        keep_since_ms: ms(&a.keep_since),
        resolved_at_ms: ms(&a.resolved_at),
    }
}

fn set_status(a: &mut v1::Alert, s: &AlertStatus) {
    let ts = |v: Option<i64>| v.map(driftwatch_proto::timestamp_from_millis);
    a.state = match s.state {
        AlertState::Pending => v1::AlertState::Pending,
        AlertState::Firing => v1::AlertState::Firing,
        AlertState::Resolved => v1::AlertState::Resolved,
        AlertState::Inactive => v1::AlertState::Unspecified,
    } as i32;
    a.active_since = ts(s.active_since_ms);
    a.fired_at = ts(s.fired_at_ms);
    a.last_matched = ts(s.last_matched_ms);
    a.keep_since = ts(s.keep_since_ms);
    a.resolved_at = ts(s.resolved_at_ms);
}

/// After a restart: a pending alert was matching, a firing one in keep_firing_for was not.
fn last_observation(a: &v1::Alert) -> Observation {
    match v1::AlertState::try_from(a.state) {
        Ok(v1::AlertState::Firing) if a.keep_since.is_some() => Observation::NotMatched,
        Ok(v1::AlertState::Pending | v1::AlertState::Firing) => Observation::Matched,
        _ => Observation::NotMatched,
    }
}

pub fn severity_to_proto(s: Severity) -> v1::Severity {
    match s {
        Severity::Info => v1::Severity::Info,
        Severity::Low => v1::Severity::Low,
        Severity::Medium => v1::Severity::Medium,
        Severity::High => v1::Severity::High,
        Severity::Critical => v1::Severity::Critical,
    }
}

/// Per host: resource history of the metrics rules look at.
#[derive(Default)]
struct HostHistory {
    /// History was read back from the store (after a restart) once.
    warmed: bool,
    series: HashMap<String, VecDeque<(i64, f64)>>,
}

struct Engine {
    rules: Option<Arc<RuleSet>>,
    /// (group, name) → index in `rules`.
    rule_index: HashMap<(String, String), usize>,
    /// Metrics resource rules look at, and the longest window they need.
    history_metrics: HashSet<String>,
    history_ms: i64,
    has_agent_rules: bool,
    state: Arc<FleetState>,
    baselines: Arc<tokio::sync::Mutex<BaselineSet>>,
    writer: WriteSender,
    metrics: Arc<Metrics>,
    reader: Option<Arc<Mutex<Store>>>,
    book: Arc<RwLock<AlertBook>>,
    overflow: Arc<AtomicBool>,
    /// host → subject → fingerprints.
    subjects: HashMap<String, HashMap<Subject, HashSet<String>>>,
    history: HashMap<String, HostHistory>,
    next_event_id: u64,
    ops: Vec<Op>,
    error_logged: HashMap<(String, String), Instant>,
    retention: Retention,
    next_retention: Instant,
    dirty: DirtyMap,
    hub: Arc<crate::hub::EventHub>,
    router: Option<Router>,
    /// Events in `ops`, published to the hub once their write is durable.
    unpublished: Vec<Arc<v1::AlertEvent>>,
}

impl Engine {
    fn new(init: EngineInit, book: Arc<RwLock<AlertBook>>, overflow: Arc<AtomicBool>, dirty: DirtyMap) -> Self {
        let mut e = Self {
            rules: None,
            rule_index: HashMap::new(),
            history_metrics: HashSet::new(),
            history_ms: MIN_HISTORY_MS,
            has_agent_rules: false,
            state: init.state,
            baselines: init.baselines,
            writer: init.writer,
            metrics: init.metrics,
            reader: init.reader,
            book,
            overflow,
            subjects: HashMap::new(),
            history: HashMap::new(),
            next_event_id: init.max_event_id + 1,
            ops: Vec::new(),
            error_logged: HashMap::new(),
            retention: init.retention,
            // First retention pass a minute after start: not in the start-up rush.
            next_retention: Instant::now() + Duration::from_secs(60).min(init.retention.interval),
            dirty,
            hub: init.hub,
            router: init.router,
            unpublished: Vec::new(),
        };
        let fps: Vec<(String, v1::Alert)> = {
            let book = e.book.read().expect("alert book lock");
            book.alerts.iter().map(|(fp, t)| (fp.clone(), t.alert.clone())).collect()
        };
        for (fp, a) in fps {
            e.index(&a.host_id, Subject::of(&a), &fp);
        }
        e.set_rules(init.rules);
        e
    }

    fn run(&mut self, rx: Receiver<EvalMsg>) {
        // Rules loaded at start see the state loaded from the store.
        if self.rules.is_some() {
            self.reevaluate(None);
            self.flush(None);
        }
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    // Files changed before this message are evaluated before it (a Flush
                    // answers only after them).
                    self.drain_dirty();
                    self.handle(m);
                    // Drain what queued up meanwhile into one write.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(m) => {
                                self.drain_dirty();
                                self.handle(m)
                            }
                            Err(_) => break,
                        }
                    }
                    self.drain_dirty();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.overflow.swap(false, Ordering::Relaxed) {
                tracing::warn!("rule queue overflowed; re-evaluating the fleet from current state");
                self.reevaluate(None);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(driftwatch_proto::now_millis());
                next_tick = now + TICK;
            }
            if now >= self.next_retention {
                self.retention(driftwatch_proto::now_millis());
                self.next_retention = now + self.retention.interval;
            }
            self.flush(None);
        }
        self.flush(None);
        tracing::debug!("rule engine stopped");
    }

    /// Evaluate every file changed since the last drain, each once, newest version.
    fn drain_dirty(&mut self) {
        let batch = std::mem::take(&mut *self.dirty.lock().expect("dirty map lock"));
        for ((host, path), d) in batch {
            let started = Instant::now();
            let now = driftwatch_proto::now_millis();
            match d.current {
                Some(current) => self.eval_file(&host, &path, d.previous.as_deref(), &current, now),
                None => self.apply(&host, &Subject::File(path), Vec::new(), now),
            }
            self.metrics.rule_eval_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    fn handle(&mut self, m: EvalMsg) {
        let started = Instant::now();
        match m {
            EvalMsg::Wake => return,
            EvalMsg::Resource { host, sample } => self.eval_resource(&host, &sample),
            EvalMsg::Reevaluate { host } => self.reevaluate(host.as_deref()),
            EvalMsg::Rules(rules) => {
                self.set_rules(rules);
                self.reevaluate(None);
            }
            EvalMsg::Command(c) => self.command(c),
        }
        self.metrics.rule_eval_seconds.observe(started.elapsed().as_secs_f64());
    }

    fn set_rules(&mut self, rules: Option<Arc<RuleSet>>) {
        self.rule_index.clear();
        self.history_metrics.clear();
        self.history_ms = MIN_HISTORY_MS;
        self.has_agent_rules = false;
        if let Some(set) = &rules {
            for (i, r) in set.rules().iter().enumerate() {
                self.rule_index.insert((r.group.clone(), r.name.clone()), i);
                match &r.target {
                    Target::Resource { metric } => {
                        self.history_metrics.insert(metric.clone());
                        self.history_ms = self.history_ms.max(window_of(r));
                    }
                    Target::AgentOffline => self.has_agent_rules = true,
                    Target::File { .. } => {}
                }
            }
        }
        self.history_ms = self.history_ms.min(MAX_HISTORY_MS);
        self.rules = rules;
        // Metrics no rule looks at any more need no history.
        for h in self.history.values_mut() {
            h.series.retain(|m, _| self.history_metrics.contains(m));
        }
    }

    /// The effective baseline's resource expectations for a host.
    fn expected_resources(&self, info: &HostInfo) -> HashMap<String, f64> {
        let set = self.baselines.blocking_lock();
        set.effective(&info.id, &info.labels)
            .map(|b| b.resources.iter().map(|r| (r.metric.clone(), r.value)).collect())
            .unwrap_or_default()
    }

    fn host_info(&self, host: &str) -> Option<HostInfo> {
        self.state.hosts.get(host).map(|h| HostInfo { id: host.to_string(), labels: h.labels.clone() })
    }

    fn eval_file(&mut self, host: &str, path: &str, previous: Option<&[u8]>, current: &[u8], now: i64) {
        let Some(rules) = self.rules.clone() else { return };
        let Some(info) = self.host_info(host) else { return };
        let subject = Subject::File(path.to_string());
        let relevant = rules.rules().iter().any(|r| match &r.target {
            Target::File { file, .. } => r.selects(&info.labels) && file.is_match(path),
            _ => false,
        });
        if !relevant && !self.has_alerts(host, &subject) {
            return;
        }
        let outcomes = if relevant {
            let Ok(state) = FileState::decode(current) else { return };
            let keys = key_map(&state.keys);
            let prev_keys = previous.and_then(|p| FileState::decode(p).ok()).map(|p| key_map(&p.keys));
            let baseline = {
                let set = self.baselines.blocking_lock();
                set.effective(host, &info.labels)
                    .and_then(|b| b.files.iter().find(|f| f.path == path))
                    .map(|f| key_map(&f.keys))
            };
            let meta = file_meta(&state);
            let input =
                FileInput { path, keys: &keys, meta: &meta, baseline: baseline.as_ref(), previous: prev_keys.as_ref() };
            let tracked = self.has_alerts(host, &subject);
            let (mut out, mut n) = (Vec::new(), 0u64);
            rules.evaluate_file_with(&info, &input, |o| keep(&mut out, &mut n, o, tracked));
            self.metrics.rule_evaluations.inc_by(n);
            out
        } else {
            Vec::new()
        };
        self.apply_outcomes(&rules, &info, &subject, outcomes, now);
    }

    fn eval_resource(&mut self, host: &str, sample: &ResourceSample) {
        let Some(rules) = self.rules.clone() else { return };
        if self.history_metrics.is_empty() {
            return;
        }
        let Some(info) = self.host_info(host) else { return };
        if !rules.rules().iter().any(|r| matches!(r.target, Target::Resource { .. }) && r.selects(&info.labels)) {
            return;
        }
        let t = sample
            .sampled_at
            .as_ref()
            .map(driftwatch_proto::timestamp_millis)
            .unwrap_or_else(driftwatch_proto::now_millis);
        self.warm_history(host, t);
        let window = self.history_ms;
        let expected = self.expected_resources(&info);
        let values: Vec<(String, f64)> = driftwatch_rules::resource_metrics(sample)
            .into_iter()
            .filter(|(m, v)| self.history_metrics.contains(m) && v.is_finite())
            .collect();
        for (metric, value) in values {
            let tracked = self.has_alerts(host, &Subject::Metric(metric.clone()));
            let outcomes = {
                let h = self.history.entry(host.to_string()).or_default();
                let series = h.series.entry(metric.clone()).or_default();
                // Samples arrive in time order; an older one (clock step back) restarts the series.
                if series.back().is_some_and(|&(last, _)| t < last) {
                    series.clear();
                }
                // At most MAX_SERIES samples per window: a sample closer than window /
                // MAX_SERIES to the one before the newest replaces the newest, so an agent
                // sampling fast costs bounded memory and evaluation time, and the newest
                // value is always current.
                let spacing = window / MAX_SERIES as i64;
                let len = series.len();
                if series.back().is_some_and(|&(last, _)| t == last) || (len >= 2 && t - series[len - 2].0 < spacing) {
                    series.pop_back();
                }
                series.push_back((t, value));
                while series.front().is_some_and(|&(ts, _)| ts <= t - window) {
                    series.pop_front();
                }
                let samples = series.make_contiguous();
                let baseline = expected.get(&metric).copied();
                let (mut out, mut n) = (Vec::new(), 0u64);
                let input = ResourceInput { metric: &metric, samples, baseline, now_ms: t };
                rules.evaluate_resource_with(&info, &input, |o| keep(&mut out, &mut n, o, tracked));
                self.metrics.rule_evaluations.inc_by(n);
                out
            };
            self.apply_outcomes(&rules, &info, &Subject::Metric(metric), outcomes, t);
        }
    }

    /// After a restart, read the host's recent samples back so windows are full at once.
    fn warm_history(&mut self, host: &str, now: i64) {
        let h = self.history.entry(host.to_string()).or_default();
        if h.warmed {
            return;
        }
        h.warmed = true;
        let Some(reader) = &self.reader else { return };
        let records = match reader.lock().expect("reader lock").resource_history(host, now - self.history_ms, now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot read resource history; windows start empty");
                return;
            }
        };
        for r in records {
            let Ok(s) = ResourceSample::decode(r.sample.as_slice()) else { continue };
            for (m, v) in driftwatch_rules::resource_metrics(&s) {
                if self.history_metrics.contains(&m) && v.is_finite() {
                    let series = h.series.entry(m).or_default();
                    if series.back().is_none_or(|&(last, _)| r.sampled_ms > last) {
                        series.push_back((r.sampled_ms, v));
                    }
                }
            }
        }
    }

    fn has_alerts(&self, host: &str, subject: &Subject) -> bool {
        self.subjects.get(host).and_then(|s| s.get(subject)).is_some_and(|f| !f.is_empty())
    }

    fn apply_outcomes(
        &mut self,
        rules: &RuleSet,
        info: &HostInfo,
        subject: &Subject,
        outcomes: Vec<Outcome>,
        now: i64,
    ) {
        // The common case, a clean subject: nothing matched and nothing is tracked for
        // it, so there is no alert to create or update (and no fingerprint to hash).
        let tracked = self.has_alerts(&info.id, subject);
        let mut seen = Vec::new();
        for o in outcomes {
            let rule = &rules.rules()[o.rule];
            if let Some(err) = &o.error {
                self.evaluation_error(rule, info, &o, err);
            }
            let obs = o.observation();
            if obs != Observation::Matched && !tracked {
                continue;
            }
            let fp = o.fingerprint(rules);
            self.observe(&fp, Some((rule, &o, info)), obs, now);
            seen.push(fp);
        }
        if tracked {
            self.apply(&info.id, subject, seen, now);
        }
    }

    /// Alerts of `subject` that the last evaluation did not produce (key gone, rule
    /// gone or no longer selecting the host, file unwatched) see a non-match.
    fn apply(&mut self, host: &str, subject: &Subject, seen: Vec<String>, now: i64) {
        let Some(existing) = self.subjects.get(host).and_then(|s| s.get(subject)) else { return };
        let seen: HashSet<&String> = seen.iter().collect();
        let absent: Vec<String> = existing.iter().filter(|fp| !seen.contains(fp)).cloned().collect();
        for fp in absent {
            self.observe(&fp, None, Observation::NotMatched, now);
        }
    }

    fn evaluation_error(&mut self, rule: &Rule, info: &HostInfo, o: &Outcome, err: &str) {
        self.metrics.rule_evaluation_errors.inc();
        let key = (rule.group.clone(), rule.name.clone());
        let now = Instant::now();
        if self.error_logged.get(&key).is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL) {
            self.error_logged.insert(key, now);
            tracing::warn!(group = %rule.group, rule = %rule.name, host = %info.id, file = o.file.as_deref().unwrap_or(""), key = o.key.as_deref().unwrap_or(""), error = %err, "rule evaluation error (state held; logged once a minute per rule)");
        }
    }

    fn timing_of(&self, a: &v1::Alert) -> Timing {
        self.rules
            .as_ref()
            .and_then(|set| self.rule_index.get(&(a.group.clone(), a.rule.clone())).map(|&i| set.rules()[i].timing))
            .unwrap_or_default()
    }

    /// Advance one alert with an observation; `outcome` carries the evaluation that
    /// produced it (None: the subject was not evaluated by that rule this time).
    fn observe(&mut self, fp: &str, outcome: Option<(&Rule, &Outcome, &HostInfo)>, obs: Observation, now: i64) {
        let prev = self.book.read().expect("alert book lock").alerts.get(fp).cloned();
        let timing = match outcome {
            Some((rule, _, _)) => rule.timing,
            None => prev.as_ref().map(|p| self.timing_of(&p.alert)).unwrap_or_default(),
        };
        let prev_status = prev.as_ref().map(|p| status_of(&p.alert));
        let (status, transitions) = step(prev_status.as_ref(), timing, obs, now);
        if prev.is_none() && status.state == AlertState::Inactive {
            return;
        }
        let mut alert = match (&prev, outcome) {
            (Some(p), _) => p.alert.clone(),
            (None, Some((rule, o, info))) => new_alert(fp, rule, o, info),
            (None, None) => return,
        };
        let before = alert.clone();
        if let Some((rule, o, info)) = outcome {
            alert.severity = severity_to_proto(rule.severity) as i32;
            alert.labels = alert_labels(rule, o, info);
            alert.annotations = rule.render_annotations(o, info);
            alert.value = Some(o.value.clone());
            alert.baseline = Some(o.baseline.clone());
            alert.previous = Some(o.previous.clone());
            alert.evaluation_error = o.error.clone().unwrap_or_default();
        }
        set_status(&mut alert, &status);
        for t in &transitions {
            if matches!(t.from, AlertState::Inactive | AlertState::Resolved) {
                // A new episode needs a new acknowledgement.
                alert.acknowledged = None;
            }
        }
        let silenced_before = !alert.silenced_by.is_empty();
        alert.silenced_by = self.silenced_by(&alert.labels, now);
        let silenced_after = !alert.silenced_by.is_empty();
        let changed = alert != before;
        alert.evaluated_at = Some(driftwatch_proto::timestamp_from_millis(now));

        if status.state == AlertState::Inactive {
            // A pending episode ended before `for` elapsed: nothing to keep.
            self.book.write().expect("alert book lock").alerts.remove(fp);
            self.unindex(&alert.host_id, &Subject::of(&alert), fp);
            self.ops.push(Op::RemoveAlert { fingerprint: fp.to_string() });
            self.event(v1::AlertEventKind::Cleared, &alert, now);
            return;
        }
        if prev.is_none() {
            self.index(&alert.host_id, Subject::of(&alert), fp);
        }
        if changed {
            self.persist(fp, &alert, now);
        }
        for t in &transitions {
            let kind = match t.to {
                AlertState::Pending => v1::AlertEventKind::Pending,
                AlertState::Firing => v1::AlertEventKind::Fired,
                AlertState::Resolved => v1::AlertEventKind::Resolved,
                AlertState::Inactive => v1::AlertEventKind::Cleared,
            };
            self.event(kind, &alert, t.at_ms);
        }
        if silenced_before != silenced_after {
            let kind = if silenced_after { v1::AlertEventKind::Silenced } else { v1::AlertEventKind::Unsilenced };
            self.event(kind, &alert, now);
        }
        self.book.write().expect("alert book lock").alerts.insert(fp.to_string(), Tracked { alert, last_obs: obs });
    }

    fn system_alert(&mut self, a: SystemAlert, now: i64) {
        let labels = self.state.hosts.get(&a.host).map(|h| h.labels.clone()).unwrap_or_default();
        let info = HostInfo { id: a.host.clone(), labels };
        let rule = Rule::builtin(SYSTEM_GROUP, &a.name, a.severity, [("summary".to_string(), a.summary)].into());
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let o = Outcome {
            rule: 0,
            host: a.host.clone(),
            file: opt(&a.path),
            key: opt(&a.key),
            matched: a.firing,
            value: v1::Value::null(),
            baseline: v1::Value::null(),
            previous: v1::Value::null(),
            error: None,
        };
        let fp = driftwatch_rules::fingerprint(SYSTEM_GROUP, &a.name, &a.host, o.file.as_deref(), o.key.as_deref());
        let obs = if a.firing { Observation::Matched } else { Observation::NotMatched };
        self.observe(&fp, Some((&rule, &o, &info)), obs, now);
    }

    fn silenced_by(&self, labels: &BTreeMap<String, String>, now: i64) -> Vec<String> {
        let book = self.book.read().expect("alert book lock");
        book.silences.values().filter(|s| s.silences(labels, now)).map(|s| s.silence.id.clone()).collect()
    }

    fn persist(&mut self, fp: &str, alert: &v1::Alert, now: i64) {
        self.ops.push(Op::Alert(AlertRecord {
            fingerprint: fp.to_string(),
            updated_ms: now,
            payload: alert.encode_to_vec(),
        }));
    }

    fn event(&mut self, kind: v1::AlertEventKind, alert: &v1::Alert, at_ms: i64) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        let ev = v1::AlertEvent {
            id,
            at: Some(driftwatch_proto::timestamp_from_millis(at_ms)),
            kind: kind as i32,
            alert: Some(alert.clone()),
        };
        self.metrics.alert_events.inc();
        tracing::info!(event = id, kind = driftwatch_proto::alert_event_kind_name(kind), rule = %alert.rule, host = %alert.host_id, path = %alert.path, key = %alert.key, metric = %alert.metric, "alert event");
        self.ops.push(Op::Event(EventRecord {
            id,
            kind: format!("alert.{}", driftwatch_proto::alert_event_kind_name(kind)),
            at_ms,
            payload: ev.encode_to_vec(),
        }));
        if let Some(route) = &self.router {
            self.ops.extend(route(&ev));
        }
        self.unpublished.push(Arc::new(ev));
    }

    fn index(&mut self, host: &str, subject: Subject, fp: &str) {
        self.subjects.entry(host.to_string()).or_default().entry(subject).or_default().insert(fp.to_string());
    }

    fn unindex(&mut self, host: &str, subject: &Subject, fp: &str) {
        if let Some(s) = self.subjects.get_mut(host) {
            if let Some(set) = s.get_mut(subject) {
                set.remove(fp);
                if set.is_empty() {
                    s.remove(subject);
                }
            }
            if s.is_empty() {
                self.subjects.remove(host);
            }
        }
    }

    /// Evaluate again from the in-memory state: every file (the current version
    /// counts as its own previous: nothing changed) and the latest resource sample.
    fn reevaluate(&mut self, host: Option<&str>) {
        let now = driftwatch_proto::now_millis();
        let hosts: Vec<String> = match host {
            Some(h) => vec![h.to_string()],
            None => {
                let mut all: HashSet<String> = self.state.hosts.iter().map(|h| h.key().clone()).collect();
                all.extend(self.subjects.keys().cloned());
                all.into_iter().collect()
            }
        };
        for h in hosts {
            let files: Vec<(String, Arc<[u8]>)> = self
                .state
                .hosts
                .get(&h)
                .map(|e| e.files.iter().map(|(p, f)| (p.clone(), f.shared())).collect())
                .unwrap_or_default();
            let watched: HashSet<&String> = files.iter().map(|(p, _)| p).collect();
            // Alerts of files the host no longer watches (or of a host gone) resolve.
            let stale: Vec<Subject> = self
                .subjects
                .get(&h)
                .map(|s| {
                    s.keys()
                        .filter(|sub| match sub {
                            Subject::File(p) => !watched.contains(p),
                            Subject::Metric(_) => self.rules.is_none(),
                            Subject::Agent => self.rules.is_none(),
                            Subject::System => false,
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for sub in stale {
                self.apply(&h, &sub, Vec::new(), now);
            }
            for (path, bytes) in &files {
                self.eval_file(&h, path, Some(bytes), bytes, now);
            }
            self.reevaluate_resources(&h);
        }
        if host.is_none() {
            self.tick(now);
        }
    }

    /// Resource rules again on the newest sample of each metric (after a rule change).
    fn reevaluate_resources(&mut self, host: &str) {
        let Some(rules) = self.rules.clone() else { return };
        let Some(info) = self.host_info(host) else { return };
        let metrics: Vec<String> =
            self.history.get(host).map(|h| h.series.keys().cloned().collect()).unwrap_or_default();
        let expected = self.expected_resources(&info);
        let mut evaluated = HashSet::new();
        for metric in metrics {
            let outcomes = {
                let Some(series) = self.history.get_mut(host).and_then(|h| h.series.get_mut(&metric)) else { continue };
                let Some(&(t, _)) = series.back() else { continue };
                let samples = series.make_contiguous();
                let baseline = expected.get(&metric).copied();
                let o =
                    rules.evaluate_resource(&info, &ResourceInput { metric: &metric, samples, baseline, now_ms: t });
                (o, t)
            };
            evaluated.insert(Subject::Metric(metric.clone()));
            self.apply_outcomes(&rules, &info, &Subject::Metric(metric), outcomes.0, outcomes.1);
        }
        // Resource alerts not evaluated just now whose rule is gone resolve; those whose
        // rule still runs wait for the next sample (after a restart, history is empty).
        let now = driftwatch_proto::now_millis();
        let gone: Vec<String> = {
            let book = self.book.read().expect("alert book lock");
            self.subjects
                .get(host)
                .into_iter()
                .flat_map(|s| s.iter())
                .filter(|(sub, _)| matches!(sub, Subject::Metric(_)) && !evaluated.contains(*sub))
                .flat_map(|(_, fps)| fps.iter())
                .filter(|fp| {
                    book.alerts
                        .get(*fp)
                        .is_some_and(|t| !self.rule_index.contains_key(&(t.alert.group.clone(), t.alert.rule.clone())))
                })
                .cloned()
                .collect()
        };
        for fp in gone {
            self.observe(&fp, None, Observation::NotMatched, now);
        }
    }

    /// Timers: pending alerts whose `for` elapsed, firing ones whose
    /// `keep_firing_for` ran out (file and agent rules; resource rules move on the
    /// sample clock), agent-offline rules, and silences starting or ending.
    fn tick(&mut self, now: i64) {
        let due: Vec<(String, Observation)> = {
            let book = self.book.read().expect("alert book lock");
            book.alerts
                .iter()
                .filter(|(_, t)| t.alert.metric.is_empty())
                .filter(|(_, t)| match v1::AlertState::try_from(t.alert.state) {
                    Ok(v1::AlertState::Pending) => t.last_obs == Observation::Matched,
                    Ok(v1::AlertState::Firing) => t.alert.keep_since.is_some(),
                    _ => false,
                })
                .map(|(fp, t)| (fp.clone(), t.last_obs))
                .collect()
        };
        for (fp, obs) in due {
            self.observe(&fp, None, obs, now);
        }
        if self.has_agent_rules
            && let Some(rules) = self.rules.clone()
        {
            let hosts: Vec<(HostInfo, AgentInput)> = self
                .state
                .hosts
                .iter()
                .map(|h| {
                    (
                        HostInfo { id: h.key().clone(), labels: h.labels.clone() },
                        AgentInput { connected: h.connection.is_some(), last_seen_ms: h.last_seen_ms, now_ms: now },
                    )
                })
                .collect();
            for (info, input) in hosts {
                let outcomes = rules.evaluate_agent(&info, &input);
                self.apply_outcomes(&rules, &info, &Subject::Agent, outcomes, now);
            }
        }
        self.silence_boundaries(now);
    }

    /// Re-check alerts whose silenced state changed because a silence started or ended.
    fn silence_boundaries(&mut self, now: i64) {
        let changed: Vec<(String, Vec<String>)> = {
            let book = self.book.read().expect("alert book lock");
            if book.silences.is_empty() && book.alerts.values().all(|t| t.alert.silenced_by.is_empty()) {
                return;
            }
            book.alerts
                .iter()
                .filter_map(|(fp, t)| {
                    let by: Vec<String> = book
                        .silences
                        .values()
                        .filter(|s| s.silences(&t.alert.labels, now))
                        .map(|s| s.silence.id.clone())
                        .collect();
                    (by != t.alert.silenced_by).then(|| (fp.clone(), by))
                })
                .collect()
        };
        for (fp, by) in changed {
            self.set_silenced(&fp, by, now);
        }
    }

    fn set_silenced(&mut self, fp: &str, by: Vec<String>, now: i64) {
        let Some(mut t) = self.book.read().expect("alert book lock").alerts.get(fp).cloned() else { return };
        let was = !t.alert.silenced_by.is_empty();
        t.alert.silenced_by = by;
        let is = !t.alert.silenced_by.is_empty();
        self.persist(fp, &t.alert, now);
        if was != is {
            let kind = if is { v1::AlertEventKind::Silenced } else { v1::AlertEventKind::Unsilenced };
            self.event(kind, &t.alert, now);
        }
        self.book.write().expect("alert book lock").alerts.insert(fp.to_string(), t);
    }

    fn command(&mut self, c: Command) {
        let now = driftwatch_proto::now_millis();
        match c {
            Command::Acknowledge { fingerprint, by, comment, reply } => {
                let result = self.acknowledge(&fingerprint, by, comment, now);
                let result = result.map(|a| (a, self.flush_durable()));
                let _ = reply.send(result);
            }
            Command::CreateSilence { mut silence, reply } => {
                silence.id = new_id();
                let result = match ActiveSilence::new(silence) {
                    Ok(a) => {
                        let view = a.view(now);
                        self.store_silence(&a, now);
                        self.book.write().expect("alert book lock").silences.insert(view.id.clone(), a);
                        self.silence_boundaries(now);
                        Ok((view, self.flush_durable()))
                    }
                    Err(e) => Err(ServerError::InvalidArgument(e)),
                };
                let _ = reply.send(result);
            }
            Command::ExpireSilence { id, reply } => {
                let existing = self.book.read().expect("alert book lock").silences.get(&id).cloned();
                let result = match existing {
                    None => Err(ServerError::NotFound(format!("no silence {id:?}"))),
                    Some(s) if s.state_at(now) == v1::SilenceState::Expired => {
                        Err(ServerError::FailedPrecondition(format!("silence {id:?} has already expired")))
                    }
                    Some(s) => {
                        let mut silence = s.silence.clone();
                        silence.ends_at = Some(driftwatch_proto::timestamp_from_millis(now));
                        // A pending silence ends before it starts: it never silenced anything.
                        if s.starts_ms > now {
                            silence.starts_at = silence.ends_at;
                        }
                        silence.updated_at = Some(driftwatch_proto::timestamp_from_millis(now));
                        match ActiveSilence::new(silence) {
                            Ok(a) => {
                                let view = a.view(now);
                                self.store_silence(&a, now);
                                self.book.write().expect("alert book lock").silences.insert(id, a);
                                self.silence_boundaries(now);
                                Ok((view, self.flush_durable()))
                            }
                            Err(e) => Err(ServerError::InvalidArgument(e)),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::SystemAlert(a) => self.system_alert(a, now),
            Command::Flush { reply } => {
                let _ = reply.send(self.flush_durable());
            }
        }
    }

    fn acknowledge(&mut self, fp: &str, by: String, comment: String, now: i64) -> Result<v1::Alert, ServerError> {
        let Some(mut t) = self.book.read().expect("alert book lock").alerts.get(fp).cloned() else {
            return Err(ServerError::NotFound(format!("no alert with fingerprint {fp:?}")));
        };
        if !matches!(v1::AlertState::try_from(t.alert.state), Ok(v1::AlertState::Pending | v1::AlertState::Firing)) {
            return Err(ServerError::FailedPrecondition(format!(
                "alert {fp} is resolved; only pending or firing alerts can be acknowledged"
            )));
        }
        t.alert.acknowledged =
            Some(v1::Acknowledgement { actor: by, comment, at: Some(driftwatch_proto::timestamp_from_millis(now)) });
        self.persist(fp, &t.alert, now);
        self.event(v1::AlertEventKind::Acknowledged, &t.alert, now);
        let alert = t.alert.clone();
        self.book.write().expect("alert book lock").alerts.insert(fp.to_string(), t);
        Ok(alert)
    }

    fn store_silence(&mut self, s: &ActiveSilence, now: i64) {
        self.ops.push(Op::Silence(SilenceRecord {
            id: s.silence.id.clone(),
            starts_ms: s.starts_ms,
            ends_ms: s.ends_ms,
            updated_ms: now,
            payload: s.silence.encode_to_vec(),
        }));
    }

    /// Retention: resolved alerts (and events) past the retention, expired
    /// silences, raw resource samples rolled up. Firing and pending alerts are never
    /// pruned, acknowledged or not.
    fn retention(&mut self, now: i64) {
        let cutoff = now - self.retention.alerts.as_millis() as i64;
        let old: Vec<v1::Alert> = {
            let book = self.book.read().expect("alert book lock");
            book.alerts
                .values()
                .filter(|t| t.alert.state == v1::AlertState::Resolved as i32)
                .filter(|t| {
                    t.alert.resolved_at.as_ref().is_some_and(|r| driftwatch_proto::timestamp_millis(r) < cutoff)
                })
                .map(|t| t.alert.clone())
                .collect()
        };
        for a in &old {
            self.book.write().expect("alert book lock").alerts.remove(&a.fingerprint);
            self.unindex(&a.host_id, &Subject::of(a), &a.fingerprint);
            self.ops.push(Op::RemoveAlert { fingerprint: a.fingerprint.clone() });
        }
        let expired: Vec<String> = {
            let book = self.book.read().expect("alert book lock");
            book.silences.values().filter(|s| s.ends_ms < cutoff).map(|s| s.silence.id.clone()).collect()
        };
        for id in &expired {
            self.book.write().expect("alert book lock").silences.remove(id);
            self.ops.push(Op::RemoveSilence { id: id.clone() });
        }
        if !old.is_empty() || !expired.is_empty() {
            tracing::info!(
                alerts = old.len(),
                silences = expired.len(),
                "retention: pruned resolved alerts and expired silences"
            );
        }
        let raw_before = now - self.retention.raw_resources.as_millis() as i64;
        let rollups_before = now - self.retention.rollups.as_millis() as i64;
        let metrics = self.metrics.clone();
        self.flush(Some(crate::writer::Maintenance::new(move |store: &mut Store| {
            maintain_store(store, cutoff, raw_before, rollups_before);
            metrics.retention_passes.inc();
        })));
    }

    /// Hand the collected writes to the writer; returns when it has them queued.
    fn flush(&mut self, maintenance: Option<crate::writer::Maintenance>) {
        if self.ops.is_empty() && maintenance.is_none() {
            return;
        }
        let item = WriteItem {
            ops: std::mem::take(&mut self.ops),
            maintenance,
            on_durable: self.publish_when_durable(),
            ..Default::default()
        };
        if self.writer.blocking_send(item).is_err() {
            tracing::error!("store writer stopped; alert writes lost");
        }
    }

    /// The hub publication of the events about to be written.
    fn publish_when_durable(&mut self) -> Option<crate::writer::Maintenance> {
        if self.unpublished.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.unpublished);
        let hub = self.hub.clone();
        Some(crate::writer::Maintenance::new(move |_| hub.publish(events)))
    }

    /// Flush and get told when it is durable.
    fn flush_durable(&mut self) -> Durable {
        let (tx, rx) = oneshot::channel();
        let item = WriteItem {
            ops: std::mem::take(&mut self.ops),
            done: Some(tx),
            on_durable: self.publish_when_durable(),
            ..Default::default()
        };
        if self.writer.blocking_send(item).is_err() {
            tracing::error!("store writer stopped; alert writes lost");
        }
        rx
    }
}

/// Keep an outcome that can change an alert (matched, failed, or about a subject with
/// alerts); the rest, the clean common case, is never copied out of the evaluation.
fn keep(out: &mut Vec<Outcome>, count: &mut u64, o: driftwatch_rules::OutcomeRef<'_>, tracked: bool) {
    *count += 1;
    if tracked || o.matched || o.error.is_some() {
        out.push(o.to_outcome());
    }
}

/// Store-side retention, run on the writer thread between batches.
fn maintain_store(store: &mut Store, events_before: i64, raw_before: i64, rollups_before: i64) {
    let extract =
        |blob: &[u8]| ResourceSample::decode(blob).map(|s| driftwatch_rules::resource_metrics(&s)).unwrap_or_default();
    let started = Instant::now();
    // One chunk per call keeps the writer's other work flowing; the next pass continues.
    let rolled = store.downsample_resources_chunk(raw_before, ROLLUP_BUCKET_MS, 20_000, &extract);
    let events = store.prune_events(events_before);
    let rollups = store.prune_rollups(rollups_before);
    match (rolled, events, rollups) {
        (Ok(r), Ok(e), Ok(p)) => {
            if r + e + p > 0 {
                tracing::info!(
                    samples_rolled_up = r,
                    events_pruned = e,
                    rollups_pruned = p,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention"
                );
            }
        }
        (r, e, p) => {
            tracing::error!(rollup = ?r.err(), events = ?e.err(), rollups = ?p.err(), "retention failed; retried next pass")
        }
    }
}

fn new_alert(fp: &str, rule: &Rule, o: &Outcome, info: &HostInfo) -> v1::Alert {
    let metric = match &rule.target {
        Target::Resource { metric } => metric.clone(),
        _ => String::new(),
    };
    v1::Alert {
        fingerprint: fp.to_string(),
        group: rule.group.clone(),
        rule: rule.name.clone(),
        host_id: info.id.clone(),
        path: o.file.clone().unwrap_or_default(),
        key: o.key.clone().unwrap_or_default(),
        metric,
        ..Default::default()
    }
}

/// The labels silences and notifiers match on: the host's labels, then the rule's,
/// then the reserved identity labels (which win).
fn alert_labels(rule: &Rule, o: &Outcome, info: &HostInfo) -> BTreeMap<String, String> {
    let mut l = info.labels.clone();
    l.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l.insert("alertname".into(), rule.name.clone());
    l.insert("group".into(), rule.group.clone());
    l.insert("severity".into(), rule.severity.to_string());
    l.insert("host".into(), info.id.clone());
    if let Some(f) = &o.file {
        l.insert("path".into(), f.clone());
    }
    if let Some(k) = &o.key {
        l.insert("key".into(), k.clone());
    }
    if let Target::Resource { metric } = &rule.target {
        l.insert("metric".into(), metric.clone());
    }
    l
}

/// A file's metadata as rules see it.
pub(crate) fn file_meta(state: &v1::FileState) -> FileMeta {
    FileMeta {
        mode: state.mode,
        dir_mode: state.dir_mode,
        uid: state.uid,
        gid: state.gid,
        size: state.size,
        format: driftwatch_proto::format_name(state.format).to_string(),
        exists: state.exists,
        parse_error: state
            .error
            .as_ref()
            .filter(|_| state.status == v1::FileStatus::ParseError as i32)
            .map(|e| if e.line > 0 { format!("{}:{}: {}", e.line, e.column, e.message) } else { e.message.clone() }),
    }
}

pub(crate) fn key_map(keys: &[v1::KeyValue]) -> BTreeMap<String, v1::Value> {
    keys.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_else(v1::Value::null))).collect()
}

/// The longest history a resource rule needs: its `for` and every duration literal
/// in its expression (`avg('1h')`), plus a margin for sample jitter.
fn window_of(rule: &Rule) -> i64 {
    let mut longest = rule.timing.for_ms;
    for quote in ['\'', '"'] {
        for (i, part) in rule.expr.split(quote).enumerate() {
            if i % 2 == 1
                && let Ok(ms) = driftwatch_rules::parse_duration_ms(part)
            {
                longest = longest.max(ms);
            }
        }
    }
    longest + 60_000
}

/// 16 random bytes, hex: silence ids.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_the_stored_alert() {
        for state in [AlertState::Pending, AlertState::Firing, AlertState::Resolved] {
            let s = AlertStatus {
                state,
                active_since_ms: Some(1_000),
                fired_at_ms: Some(2_000),
                last_matched_ms: Some(3_000),
                keep_since_ms: Some(4_000),
                resolved_at_ms: Some(5_000),
            };
            let mut a = v1::Alert::default();
            set_status(&mut a, &s);
            assert_eq!(status_of(&a), s);
        }
    }

    #[test]
    fn restart_replays_the_right_observation() {
        let mut a = v1::Alert { state: v1::AlertState::Pending as i32, ..Default::default() };
        assert_eq!(last_observation(&a), Observation::Matched);
        a.state = v1::AlertState::Firing as i32;
        assert_eq!(last_observation(&a), Observation::Matched);
        a.keep_since = Some(driftwatch_proto::timestamp_from_millis(1));
        assert_eq!(last_observation(&a), Observation::NotMatched);
        a.state = v1::AlertState::Resolved as i32;
        assert_eq!(last_observation(&a), Observation::NotMatched);
    }

    #[test]
    fn history_window_covers_for_and_every_duration_in_the_expression() {
        let rules = RuleSet::from_text(
            std::path::Path::new("r.yaml"),
            "groups:\n  - name: g\n    rules:\n      - name: trend\n        target: {resource: memory_used_bytes}\n        expr: \"samples('1h') >= 30 && min_over(\\\"10m\\\") > avg('2h')\"\n      - name: for\n        target: {resource: cpu_cores_used}\n        expr: \"value > 12.0\"\n        for: 5m\n",
        )
        .unwrap();
        assert_eq!(window_of(&rules.rules()[0]), 2 * 3_600_000 + 60_000);
        assert_eq!(window_of(&rules.rules()[1]), 5 * 60_000 + 60_000);
    }

    #[test]
    fn subject_of_an_alert() {
        let file = v1::Alert { path: "/etc/a.env".into(), key: "K".into(), ..Default::default() };
        assert_eq!(Subject::of(&file), Subject::File("/etc/a.env".into()));
        let metric = v1::Alert { metric: "memory_used_bytes".into(), ..Default::default() };
        assert_eq!(Subject::of(&metric), Subject::Metric("memory_used_bytes".into()));
        assert_eq!(Subject::of(&v1::Alert::default()), Subject::Agent);
    }
}
